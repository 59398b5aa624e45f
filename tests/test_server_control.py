"""The app's server switch: the window's engine and the in-process server share one model and one worker.

The tiny random Gemma 4 with the real tokenizer is loaded through the window's engine (the real
MlxBackend); a wrapper forces each reply from the source of the worker job running it ("window" or
"server"), so streams from the window and from an `openai` client can be told apart token by token.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import openai
import pytest

from gemma4_mac import __main__ as entry
from gemma4_mac.engine import GenerationRequest, MlxBackend
from gemma4_mac.settings import AppSettings
from gemma4_mac.server.control import LocalServer, ServerConfig, ServerControlError
from ui.engine import Engine
from tests.server_support import serve_process

pytestmark = pytest.mark.slow  # loads a model with the real 262K-token vocabulary

END_OF_TURN = 106
TIMEOUT = 60_000
REPLIES = {"window": "Apples and pears for the person at the keyboard.",
           "server": "Plums and figs for the program on the port."}


class SourceReplies:
    """The real model (real caches and shapes), but each reply is forced from the source of the worker
    job that runs it. `order` lists the source of each reply as it started; the first window reply
    waits at its third token until `hold` is set."""

    def __init__(self, model, tokenizer, worker):
        self.model, self.worker = model, worker
        self.language_model, self.config = model.language_model, model.config
        self.scripts = {k: tokenizer.encode(v, add_special_tokens=False) + [END_OF_TURN] for k, v in REPLIES.items()}
        self.replies: dict[str, list] = {}  # source -> [its script, tokens forced so far]
        self.order: list[str] = []
        self.hold = threading.Event()

    def make_cache(self, *args, **kwargs):
        return self.model.make_cache(*args, **kwargs)

    def __call__(self, inputs, cache=None, logits_to_keep=0, **kwargs):
        import mlx.core as mx

        logits = self.model(inputs, cache=cache, logits_to_keep=logits_to_keep, **kwargs)
        source = self.worker.current.source
        if logits_to_keep:  # the prompt's last prefill chunk: a reply starts
            self.order.append(source)
            self.replies[source] = [self.scripts[source], 0]
        if source not in self.replies:
            return logits
        # each source's reply goes on where it stopped: a window turn may come between two API steps
        script, step = self.replies[source]
        token = script[min(step, len(script) - 1)]
        self.replies[source][1] = step = step + 1
        if step == 3 and self.order == ["window"]:
            assert self.hold.wait(30), "the test never released the first window reply"
        return logits * 0 + mx.zeros(logits.shape[-1]).at[token].add(100.0)


class ScriptedBackend(MlxBackend):
    """The window's real backend, with the model wrapped in SourceReplies."""

    worker = None

    def load(self, path):
        loaded = super().load(path)
        tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
        loaded.model = SourceReplies(loaded.model, tokenizer, self.worker)
        return loaded


@pytest.fixture(scope="module")
def tiny_model(tiny_chat_model_dir) -> Path:
    return tiny_chat_model_dir


@pytest.fixture(scope="module")
def engine(qapp, tiny_model, tmp_path_factory):
    """One engine for the module (loading the real tokenizer takes seconds on two cores)."""
    home = tmp_path_factory.mktemp("home")
    saved = os.environ.get("GEMMA4_MAC_HOME")
    os.environ["GEMMA4_MAC_HOME"] = str(home)
    backend = ScriptedBackend()
    engine = Engine(backend)
    backend.worker = engine.worker
    engine.load_model(tiny_model)
    deadline = time.monotonic() + 120
    while engine.model_info is None and time.monotonic() < deadline:
        qapp.processEvents()
        time.sleep(0.05)
    assert engine.model_info is not None, "the tiny model did not load"
    yield engine
    assert engine.shutdown(timeout=10)
    if saved is None:
        os.environ.pop("GEMMA4_MAC_HOME", None)
    else:
        os.environ["GEMMA4_MAC_HOME"] = saved


def window_turn(text: str) -> GenerationRequest:
    return GenerationRequest(conversation_id=1, messages=[{"role": "user", "content": text}],
                             sampling={"temperature": 0.0, "max_tokens": 60})


def test_window_and_api_share_the_model_and_take_turns(engine, qtbot, tiny_model):
    control = LocalServer(engine)
    url = control.apply(AppSettings(server_enabled=True, server_port=0))
    try:
        assert url == control.base_url and url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == [tiny_model.name]  # the window's model

        answers: list[str] = []
        finished: list[dict] = []
        engine.answerDelta.connect(answers.append)
        engine.generationFinished.connect(finished.append)
        engine.generate(window_turn("Hello from the window"))  # held at its third token until the API request waits
        engine.generate(window_turn("And again"))
        result: dict = {}

        def call_api() -> None:
            chunks = client.chat.completions.create(
                model=tiny_model.name, messages=[{"role": "user", "content": "Hello from a script"}],
                temperature=0, max_tokens=60, stream=True)
            result["text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        api = threading.Thread(target=call_api)
        api.start()
        worker = engine.worker
        qtbot.waitUntil(lambda: worker.queued("server") == 1 and worker.queued("window") == 1, timeout=TIMEOUT)
        worker.slot.model.hold.set()
        api.join(60)
        qtbot.waitUntil(lambda: len(finished) == 2, timeout=TIMEOUT)

        # one model, one thread: the API's turn came between the window's two turns, and no stream mixed
        assert worker.slot.model.order == ["window", "server", "window"]
        assert result["text"] == REPLIES["server"]
        assert "".join(answers) == REPLIES["window"] * 2
        assert [f["finish_reason"] for f in finished] == ["stop", "stop"]
    finally:
        control.stop()
    assert not control.running and control.apply(AppSettings(server_enabled=False)) is None
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=5).models.list()


def test_settings_switch_restarts_refuses_and_stops(engine):
    control = LocalServer(engine.worker)
    try:
        first = control.apply(AppSettings(server_enabled=True, server_port=0, server_api_key="sesame"))
        assert control.apply(AppSettings(server_enabled=True, server_port=0, server_api_key="sesame")) == first
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=first, api_key="wrong", max_retries=0, timeout=10).models.list()
        assert openai.OpenAI(base_url=first, api_key="sesame", max_retries=0, timeout=10).models.list().data

        with pytest.raises(ServerControlError, match="API key"):
            control.apply(AppSettings(server_enabled=True, server_host="0.0.0.0", server_port=0))
        assert not control.running

        port = int(first.rsplit(":", 1)[1].split("/")[0])
        other = LocalServer(engine)
        other.start(ServerConfig(port=0))
        taken = int(other.base_url.rsplit(":", 1)[1].split("/")[0])
        try:
            with pytest.raises(ServerControlError, match="cannot listen"):
                control.start(ServerConfig(port=taken))
        finally:
            other.stop()
        assert port > 0
    finally:
        control.stop()


def test_serve_command_refuses_an_open_address_without_a_key(capfd):
    assert entry.main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "without an API key" in capfd.readouterr().err


def test_serve_command_serves_a_model_folder(tiny_model, tmp_path):
    with serve_process(tiny_model, tmp_path / "home") as (_, url):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == [tiny_model.name]
