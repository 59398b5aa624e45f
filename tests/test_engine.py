"""The engine thread: every backend call on one long-lived thread, results as Qt signals, prompt cancel.

Most tests use the scripted FakeBackend; two run our real MLX model (tiny, random) through the
lead's streaming generation on the engine thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gemma4_mac.engine import EngineError, GenerationRequest, MlxBackend
from gemma4_mac.fake_backend import FakeBackend
from gemma4_mac.worker import ModelSlot, ModelWorker
from mlx_model.processor import Processor
from ui.engine import Engine

TIMEOUT = 10_000


class Recorder:
    """Collects every signal of an engine in order."""

    NAMES = ("modelLoading", "modelLoaded", "modelLoadFailed", "generationStarted", "answerDelta", "thoughtDelta",
             "toolCallReceived", "generationFinished", "generationFailed", "conversionProgress",
             "conversionFinished", "conversionFailed", "busyChanged")

    def __init__(self, engine: Engine):
        self.events: list[tuple[str, object]] = []
        self.threads: set[str] = set()
        for name in self.NAMES:
            getattr(engine, name).connect(lambda *args, n=name: self._add(n, args))

    def _add(self, name, args):
        self.threads.add(threading.current_thread().name)
        self.events.append((name, args[0] if args else None))

    def of(self, name):
        return [payload for event, payload in self.events if event == name]


@pytest.fixture
def make_engine(qtbot):
    engines = []

    def make(backend):
        engine = Engine(backend)
        engines.append(engine)
        return engine, Recorder(engine)

    yield make
    for engine in engines:
        assert engine.shutdown(timeout=5)


def request(text="hi", **kwargs):
    return GenerationRequest(conversation_id=1, messages=[{"role": "user", "content": text}], **kwargs)


def test_load_and_stream_on_the_engine_thread(make_engine, qtbot):
    backend = FakeBackend(lambda r: [("thought", "hmm "), ("answer", "Hel"), ("answer", "lo"),
                                     ("tool_call", {"name": "clock", "arguments": {}})])
    engine, seen = make_engine(backend)
    with qtbot.waitSignal(engine.modelLoaded, timeout=TIMEOUT) as loaded:
        engine.load_model("/models/fake")
    assert loaded.args[0]["name"] == "Fake Gemma" and engine.model_info["chat"] is True
    with qtbot.waitSignal(engine.generationFinished, timeout=TIMEOUT) as finished:
        engine.generate(request(enable_thinking=True))
    assert seen.of("thoughtDelta") == ["hmm "] and "".join(seen.of("answerDelta")) == "Hello"
    assert seen.of("toolCallReceived") == [{"name": "clock", "arguments": {}}]
    assert finished.args[0]["finish_reason"] == "tool_calls" and finished.args[0]["generation_tokens"] == 4
    assert backend.threads == {Engine.THREAD_NAME}  # the backend only ever ran on the engine thread
    assert seen.threads == {threading.main_thread().name}  # and the window heard it on its own thread
    assert backend.requests[0].enable_thinking is True
    qtbot.waitUntil(lambda: not engine.busy, timeout=TIMEOUT)
    assert seen.of("busyChanged")[-1] is False


def test_cancel_stops_at_the_next_token(make_engine, qtbot):
    backend = FakeBackend(lambda r: [("answer", f"{i} ") for i in range(1000)], token_delay=0.005)
    engine, seen = make_engine(backend)
    engine.load_model(None)
    with qtbot.waitSignal(engine.answerDelta, timeout=TIMEOUT):
        engine.generate(request())
    with qtbot.waitSignal(engine.generationFinished, timeout=TIMEOUT) as finished:
        engine.cancel()
    assert finished.args[0]["finish_reason"] == "cancelled"
    assert len(seen.of("answerDelta")) < 200


def test_starter_model_when_no_path(make_engine, qtbot):
    engine, _ = make_engine(FakeBackend())
    with qtbot.waitSignal(engine.modelLoaded, timeout=TIMEOUT) as loaded:
        engine.load_model(None)
    assert loaded.args[0]["is_starter"] is True and loaded.args[0]["chat"] is False
    assert "not a chat model" in loaded.args[0]["name"]


def test_failures_become_signals(make_engine, qtbot):
    engine, _ = make_engine(FakeBackend(load_error="config.json is missing"))
    with qtbot.waitSignal(engine.modelLoadFailed, timeout=TIMEOUT) as failed:
        engine.load_model("/nowhere")
    assert failed.args[0] == "config.json is missing" and engine.model_info is None
    with qtbot.waitSignal(engine.generationFailed, timeout=TIMEOUT) as no_model:
        engine.generate(request())
    assert "No model is loaded" in no_model.args[0]

    engine2, _ = make_engine(FakeBackend(generate_error="Out of memory"))
    engine2.load_model(None)
    with qtbot.waitSignal(engine2.generationFailed, timeout=TIMEOUT) as failed:
        engine2.generate(request())
    assert failed.args[0] == "Out of memory"


def test_conversion_reports_progress_and_can_be_cancelled(make_engine, qtbot, tmp_path):
    backend = FakeBackend(token_delay=0.002)
    engine, seen = make_engine(backend)
    with qtbot.waitSignal(engine.conversionFinished, timeout=TIMEOUT) as done:
        engine.convert_model("google/gemma-4-E2B-it", tmp_path / "e2b", "Gemma 4 E2B")
    assert Path(done.args[0]) == tmp_path / "e2b" and (tmp_path / "e2b" / "config.json").is_file()
    fractions = [p["fraction"] for p in seen.of("conversionProgress")]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    backend.token_delay = 0.05
    with qtbot.waitSignal(engine.conversionFailed, timeout=TIMEOUT) as failed:
        engine.convert_model("google/gemma-4-E4B-it", tmp_path / "e4b")
        engine.cancel_conversion()
    assert "cancelled" in failed.args[0] and not (tmp_path / "e4b").exists()
    assert backend.threads == {Engine.THREAD_NAME, Engine.CONVERT_THREAD_NAME}  # download off the model thread


def test_generation_runs_between_conversion_steps(make_engine, qtbot, tmp_path):
    """A conversion holds the model thread for minutes: waiting generations run between its steps."""
    backend = FakeBackend(lambda r: [("answer", "quick")], token_delay=0.05)
    engine, seen = make_engine(backend)
    engine.load_model(None)
    with qtbot.waitSignal(engine.conversionProgress, timeout=TIMEOUT,
                          check_params_cb=lambda p: p["stage"] == "convert"):
        engine.convert_model("google/gemma-4-E2B-it", tmp_path / "e2b")
    with qtbot.waitSignal(engine.conversionFinished, timeout=TIMEOUT):
        engine.generate(request())
    order = [name for name, _ in seen.events if name in ("generationFinished", "conversionFinished")]
    assert order == ["generationFinished", "conversionFinished"]
    assert "".join(seen.of("answerDelta")) == "quick"
    convert_steps = [p["fraction"] for p in seen.of("conversionProgress") if p["stage"] == "convert"]
    assert convert_steps == [0.6, 0.7, 0.8, 0.9, 1.0]  # the conversion went on where it stopped


def test_a_generation_cancelled_while_queued_still_starts_and_finishes(make_engine, qtbot):
    backend = FakeBackend(lambda r: [("answer", "x")] * 200, token_delay=0.005)
    engine, seen = make_engine(backend)
    engine.load_model(None)
    first = engine.generate(request())
    second = engine.generate(request())
    engine.cancel()  # the latest turn, still waiting behind the first
    qtbot.waitUntil(lambda: len(seen.of("generationFinished")) == 2, timeout=TIMEOUT)
    assert seen.of("generationStarted") == [first, second]
    finished = seen.of("generationFinished")
    assert finished[0]["finish_reason"] == "stop" and finished[1]["finish_reason"] == "cancelled"
    assert len(backend.requests) == 1  # the cancelled turn never reached the model
    qtbot.waitUntil(lambda: not engine.busy, timeout=TIMEOUT)


def test_window_and_server_take_turns_on_a_shared_worker(qtbot):
    """The server's jobs go to the same model thread; a busy server never starves the window."""
    worker = ModelWorker(name="shared-model")
    order = []
    backend = FakeBackend(lambda r: order.append(r.messages[-1]["content"]) or [("answer", r.messages[-1]["content"])])
    engine = Engine(backend, worker=worker)
    seen = Recorder(engine)
    try:
        with qtbot.waitSignal(engine.modelLoaded, timeout=TIMEOUT):
            engine.load_model("/models/fake")
        gate = threading.Event()
        blocker = worker.submit("server", lambda slot: gate.wait(10), label="server 0")
        server_jobs = [worker.submit("server", lambda slot, n=n: order.append(f"server {n}")) for n in (1, 2)]
        engine.generate(request("window 1"))
        engine.generate(request("window 2"))
        gate.set()
        qtbot.waitUntil(lambda: len(seen.of("generationFinished")) == 2, timeout=TIMEOUT)
        for job in [blocker, *server_jobs]:
            job.wait(10)
        assert [r.messages[-1]["content"] for r in backend.requests] == ["window 1", "window 2"]
        assert seen.of("answerDelta") == ["window 1", "window 2"]
        assert backend.threads == {"shared-model"} and worker.slot.info["name"] == "Fake Gemma"
        assert engine.shutdown(timeout=5) and worker.running  # the engine leaves a borrowed worker running
        assert order == ["window 1", "server 1", "window 2", "server 2"]  # turns alternate
    finally:
        assert worker.stop()


def test_jobs_run_in_order_on_one_thread(make_engine, qtbot):
    backend = FakeBackend(load_delay=0.05)
    engine, seen = make_engine(backend)
    engine.load_model("/a")  # the generation queued behind the load waits for it
    with qtbot.waitSignal(engine.generationFinished, timeout=TIMEOUT):
        engine.generate(request())
    order = [name for name, _ in seen.events if name in ("modelLoaded", "generationStarted", "generationFinished")]
    assert order == ["modelLoaded", "generationStarted", "generationFinished"]


def test_shutdown_ends_the_thread_during_generation(qtbot):
    engine = Engine(FakeBackend(lambda r: [("answer", "x")] * 10_000, token_delay=0.001))
    engine.load_model(None)
    engine.generate(request())
    with qtbot.waitSignal(engine.answerDelta, timeout=TIMEOUT):
        pass
    assert engine.shutdown(timeout=5)


# the real engine: our MLX model and the lead's stream_generate, on the engine thread


class CharTokenizer:
    """A character tokenizer over a 512-id vocabulary, with the parts stream_generate uses."""

    eos_token_ids = (1,)

    def encode(self, text, add_special_tokens=True):
        return ([2] if add_special_tokens else []) + [10 + ord(ch) % 400 for ch in text]

    def apply_chat_template(self, messages, tools=None, enable_thinking=False, add_generation_prompt=True):
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + ("model: " if add_generation_prompt else "")

    @property
    def detokenizer(self):
        return CharDetokenizer()


class CharDetokenizer:
    def __init__(self):
        self.reset()

    def reset(self):
        self.text, self.offset = "", 0

    def add_token(self, token):
        self.text += chr(97 + token % 26)

    def finalize(self):
        pass

    @property
    def last_segment(self):
        segment, self.offset = self.text[self.offset:], len(self.text)
        return segment


class TinyMlxBackend(MlxBackend):
    """The real MLX backend with a tiny random model and a character tokenizer instead of files on disk."""

    def __init__(self):
        super().__init__()
        self.load_threads = set()

    def load(self, path):
        import mlx.core as mx

        from mlx_model.model import Model, ModelConfig

        self.load_threads.add(threading.current_thread().name)
        mx.random.seed(0)
        config = ModelConfig.from_dict(dict(
            model_type="gemma4_text", vocab_size=512, vocab_size_per_layer_input=512, hidden_size=32,
            intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
            global_head_dim=32, sliding_window=8, layer_types=["sliding_attention"] * 3 + ["full_attention"],
            hidden_size_per_layer_input=8, final_logit_softcapping=30.0, eos_token_id=1))
        model = Model(config)
        mx.eval(model.parameters())
        if path is not None and "broken" in str(path):
            raise EngineError("broken model")
        return ModelSlot(model, Processor(CharTokenizer()), {"path": str(path), "name": "tiny", "chat": True,
                                                     "is_starter": False, "context_limit": 512})


@pytest.mark.slow
def test_real_generation_streams_from_the_engine_thread(make_engine, qtbot):
    backend = TinyMlxBackend()
    engine, seen = make_engine(backend)
    engine.load_model("/tiny")
    with qtbot.waitSignal(engine.generationFinished, timeout=60_000) as finished:
        engine.generate(request("hello there", sampling={"temperature": 0.0, "max_tokens": 12}))
    stats = finished.args[0]
    prompt = CharTokenizer().apply_chat_template([{"role": "user", "content": "hello there"}])
    assert stats["prompt_tokens"] == len(CharTokenizer().encode(prompt, add_special_tokens=False))
    answer = "".join(seen.of("answerDelta"))
    assert stats["generation_tokens"] == len(answer) and 0 < len(answer) <= 12
    assert stats["finish_reason"] in ("stop", "length") and stats["peak_memory_bytes"] > 0
    assert backend.load_threads == {Engine.THREAD_NAME}
    # a second turn of the same conversation reuses the cached prefix
    with qtbot.waitSignal(engine.generationFinished, timeout=60_000) as second:
        engine.generate(GenerationRequest(1, [{"role": "user", "content": "hello there"},
                                              {"role": "assistant", "content": answer},
                                              {"role": "user", "content": "more"}],
                                          sampling={"temperature": 0.0, "max_tokens": 4}))
    assert second.args[0]["cached_tokens"] > 0


@pytest.mark.slow
def test_real_generation_cancels_promptly(make_engine, qtbot):
    engine, seen = make_engine(TinyMlxBackend())
    engine.load_model("/tiny")
    with qtbot.waitSignal(engine.answerDelta, timeout=60_000):
        engine.generate(request("go", sampling={"temperature": 1.0, "seed": 3, "max_tokens": 100_000}))
    with qtbot.waitSignal(engine.generationFinished, timeout=10_000) as finished:
        engine.cancel()
    assert finished.args[0]["finish_reason"] == "cancelled"
    assert finished.args[0]["generation_tokens"] < 100_000


def test_streaming_signals_do_not_drain_the_true_singleton(make_engine, qtbot):
    """PySide 6.12's emit drops a reference to True per call; thousands of deltas must not abort the app."""
    import sys

    engine, seen = make_engine(FakeBackend(lambda r: [("answer", "x")] * 3000))
    engine.load_model(None)
    before = sys.getrefcount(True)
    with qtbot.waitSignal(engine.generationFinished, timeout=TIMEOUT):
        engine.generate(request())
    assert len(seen.of("answerDelta")) == 3000
    assert sys.getrefcount(True) > before - 100


def test_a_model_too_large_for_this_machine_is_refused_with_the_numbers(tmp_path, monkeypatch):
    from gemma4_mac import model_manager

    folder = tmp_path / "gemma-4-31b-it-4bit"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with open(folder / "model.safetensors", "wb") as handle:
        handle.truncate(18 * model_manager.GIB)  # sparse: 18 GB of weights on paper, nothing on disk
    monkeypatch.setattr(model_manager, "total_memory", lambda: 16 * model_manager.GIB)
    with pytest.raises(EngineError) as refused:
        MlxBackend().load(folder)
    message = str(refused.value)
    assert "19.0 GB" in message and "18.0 GB of weights" in message and "16 GB of memory" in message
    assert "12.0 GB can hold a model" in message and "smaller model" in message
