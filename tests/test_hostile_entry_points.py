"""Property tests per entry point (issue 14.6): mutated inputs through the CLI, attaching, the HTTP server,
the converter and the loader end in that entry point's own error with a message (or in a result), never in
another exception or a traceback. The readers underneath are fuzzed one by one in test_hostile_properties.py.
"""

from __future__ import annotations

import io
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import seeds
from tests.fuzz.run import _mutate
from tests.hostile_support import TINY_CONFIG, complete_model, mutated_json

SLOWEST_INPUT_S = 20.0
QUICK = dict(deadline=None, database=None, derandomize=True,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                    HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    # a short context keeps any generation the server is asked for bounded
    return complete_model(tmp_path_factory.mktemp("entry") / "model",
                          config={**TINY_CONFIG, "max_position_embeddings": 256})


def _damaged_copy(source: Path, target: Path, config: dict | None, weights_edit) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    if config is not None:
        (target / "config.json").write_text(json.dumps(config, allow_nan=True))
    if weights_edit is not None:
        weights = target / "model.safetensors"
        weights.write_bytes(_mutate(bytearray(weights.read_bytes()), weights_edit))
    return target


def _folder_damage(base: dict):
    """A mutated config.json (JSON-aware), mutated weights (byte edits), or both; sometimes neither."""
    return st.one_of(
        st.tuples(mutated_json(base), st.none()),
        st.tuples(st.none(), st.randoms(use_true_random=False)),
        st.tuples(mutated_json(base), st.randoms(use_true_random=False)),
        st.just((None, None)),
    )


def _names_the_problem(message: str) -> None:
    assert message.strip() and "Traceback" not in message and "[Errno" not in message


def test_loader_refuses_damaged_folders_with_its_own_error(tiny_model, tmp_path):
    from mlx_model.loader import ModelLoadError, load

    base = json.loads((tiny_model / "config.json").read_text())

    @settings(max_examples=40, **QUICK)
    @given(damage=_folder_damage(base))
    def check(damage):
        config, weights_edit = damage
        folder = _damaged_copy(tiny_model, tmp_path / "model", config, weights_edit)
        started = time.monotonic()
        try:
            load(folder, lazy=False)
        except ModelLoadError as error:
            _names_the_problem(str(error))
            if config is not None and weights_edit is None:
                assert str(folder) in str(error)
        assert time.monotonic() - started < SLOWEST_INPUT_S

    check()


def test_cli_answers_or_prints_one_error_line(tiny_model, tmp_path):
    from gemma4_mac.cli import main as cli_main

    base = json.loads((tiny_model / "config.json").read_text())

    @settings(max_examples=25, **QUICK)
    @given(damage=_folder_damage(base), raw=st.booleans())
    def check(damage, raw):
        config, weights_edit = damage
        folder = _damaged_copy(tiny_model, tmp_path / "model", config, weights_edit)
        out, err = io.StringIO(), io.StringIO()
        args = ["ask", "--model", str(folder), "--max-tokens", "2"]
        args += ["--raw", "w5 w6"] if raw else ["hello"]
        code = cli_main(args, out=out, err=err)  # raises only on a crash
        if code != 0:
            assert code == 2 and err.getvalue().startswith("error: ")
            _names_the_problem(err.getvalue())

    check()


KINDS = {"photo.png": seeds.png(), "memo.wav": seeds.wav(), "clip.mp4": seeds.mp4(frames=4),
         "report.pdf": seeds.pdf(), "notes.txt": "Grüße aus Köln\n".encode("cp1252") * 4}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_attach_keeps_a_good_file_or_refuses_with_its_own_error(tmp_path, name):
    from gemma4_mac.attachments import AttachmentError, AttachmentStore

    store = AttachmentStore(tmp_path / "attachments")

    @settings(max_examples=15, **QUICK)
    @given(edit=st.randoms(use_true_random=False), cut=st.booleans())
    def check(edit, cut):
        original = KINDS[name]
        data = original[: edit.randrange(len(original))] if cut else _mutate(bytearray(original), edit)
        started = time.monotonic()
        try:
            attachment = store.import_bytes(1, data, name)
        except AttachmentError as error:
            _names_the_problem(str(error))
            assert name in str(error) or "Pasted" in str(error)
        else:
            assert attachment.path.is_file() and attachment.size == len(data)
        assert time.monotonic() - started < SLOWEST_INPUT_S

    check()
    kept = [p.name for p in (tmp_path / "attachments" / "1").iterdir() if p.is_file()]
    assert all(n.startswith(Path(name).stem) for n in kept)  # only accepted files, under their names


def test_converter_refuses_damaged_checkpoints_with_its_own_error(tmp_path):
    from convert import ConversionError, convert_checkpoint

    source = complete_model(tmp_path / "source", quantized=False)
    base = json.loads((source / "config.json").read_text())

    @settings(max_examples=30, **QUICK)
    @given(damage=_folder_damage(base))
    def check(damage):
        config, weights_edit = damage
        folder = _damaged_copy(source, tmp_path / "damaged", config, weights_edit)
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        started = time.monotonic()
        try:
            convert_checkpoint(folder, out, quantize=False, dtype="float32")
        except ConversionError as error:
            _names_the_problem(str(error))
            assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]  # nothing left behind
        assert time.monotonic() - started < SLOWEST_INPUT_S

    check()


GOOD_CHAT = {"model": "model", "messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "w5 w6"}],
             "max_tokens": 3, "temperature": 0.5, "top_p": 0.9, "stop": ["w7"], "stream": False}
GOOD_COMPLETION = {"model": "model", "prompt": "w5 w6", "max_tokens": 3, "temperature": 0.0}


@pytest.fixture(scope="module")
def served(tiny_model):
    from gemma4_mac.server.app import ServerHandle, create_app, load_slot
    from gemma4_mac.server.routes import ServerOptions
    from gemma4_mac.server.service import GenerationService
    from gemma4_mac.worker import ModelWorker

    worker = ModelWorker()
    worker.load(lambda: load_slot(tiny_model)).wait()
    service = GenerationService(worker)
    app = create_app(service, ServerOptions(max_body_bytes=256 * 1024))
    handle = ServerHandle(app, "127.0.0.1", 0).start()
    yield handle.base_url
    handle.stop()
    worker.stop()


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"},
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=SLOWEST_INPUT_S) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    text = raw.decode("utf-8", errors="replace")
    if text.startswith(("data:", ":")):  # a stream (a keep-alive comment may come first): events are JSON too
        return status, {"stream": text}
    return status, json.loads(text)


def test_server_answers_or_returns_its_own_json_error(served):
    @settings(max_examples=40, **QUICK)
    @given(route=st.sampled_from(["chat/completions", "completions"]), data=st.data())
    def check(route, data):
        good = GOOD_CHAT if route == "chat/completions" else GOOD_COMPLETION
        body = data.draw(st.one_of(
            mutated_json(good).map(lambda d: json.dumps(d, allow_nan=True).encode()),
            st.randoms(use_true_random=False).map(lambda r: _mutate(bytearray(json.dumps(good).encode()), r)),
            st.binary(max_size=64)))
        status, payload = _post(f"{served}/{route}", body)
        assert status < 500, (status, payload)  # 4xx with the server's own error, never a 500
        if status >= 400:
            message = payload["error"]["message"]
            _names_the_problem(message)

    check()
    status, payload = _post(f"{served}/chat/completions", json.dumps(GOOD_CHAT).encode())
    assert status == 200 and payload["choices"][0]["message"]["role"] == "assistant"  # still serving
