"""Faults a laptop meets: the process killed mid-write, a full disk, model files vanishing, a damaged cache.

Kills are real SIGKILLs of a child process; a full disk is an injected ENOSPC write failure.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import mlx.core as mx

from gemma4_mac.document_cache import DocumentCacheStore, model_fingerprint
from gemma4_mac.history import HistoryStore
from mlx_model.loader import ModelLoadError, load_model

REPO = Path(__file__).resolve().parent.parent

_HISTORY_WRITER = textwrap.dedent("""
    import sys
    from gemma4_mac.history import HistoryStore

    store = HistoryStore(sys.argv[1])
    conversation = store.create_conversation()
    for turn in range(int(sys.argv[2])):
        store.add_message(conversation.id, "user", f"question {turn}")
        store.add_message(conversation.id, "assistant", f"answer {turn} " * 50)
    store.add_message(conversation.id, "user", "the last question")
    # as the window streams an answer: a partial row first, then its text rewritten as tokens arrive
    answer = store.add_message(conversation.id, "assistant", "", partial=True)
    text = ""
    for token in range(10 ** 9):
        text += f"tok{token} "
        store.update_message(answer.id, content=text, partial=True)
        if token == 20:
            print("streaming", flush=True)
""")


def _run_until(script: str, args: list[str], marker: str, timeout: float = 60.0) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, stdout=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if marker in line:
            return process
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError(f"the child never printed {marker!r}")


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3])
def test_kill_during_a_history_write_keeps_every_message(tmp_path, delay):
    database = tmp_path / "history.sqlite3"
    turns = 5
    process = _run_until(_HISTORY_WRITER, [str(database), str(turns)], "streaming")
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    store = HistoryStore(database)  # runs SQLite's integrity check: raises if the file were damaged
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    messages = store.messages(store.conversations()[0].id)
    assert len(messages) == 2 * turns + 2
    for turn in range(turns):
        assert messages[2 * turn].content == f"question {turn}" and not messages[2 * turn].partial
        assert messages[2 * turn + 1].content == f"answer {turn} " * 50 and not messages[2 * turn + 1].partial
    last = messages[-1]
    assert last.role == "assistant" and last.partial
    assert last.content.startswith("tok0 tok1 ") and last.content.endswith(" ")  # a whole committed write
    assert store.search("tok1")  # the full-text index followed the committed rows


def test_kill_during_many_inserts_leaves_whole_rows(tmp_path):
    database = tmp_path / "history.sqlite3"
    script = textwrap.dedent("""
        import sys
        from gemma4_mac.history import HistoryStore

        store = HistoryStore(sys.argv[1])
        conversation = store.create_conversation()
        for i in range(10 ** 9):
            store.add_message(conversation.id, "user", f"message {i} " + "x" * 2000)
            if i == 50:
                print("writing", flush=True)
    """)
    process = _run_until(script, [str(database)], "writing")
    time.sleep(0.2)
    process.kill()
    process.wait(timeout=10)
    store = HistoryStore(database)
    messages = store.messages(store.conversations()[0].id)
    assert len(messages) > 50
    for i, message in enumerate(messages):
        assert message.position == i and message.content == f"message {i} " + "x" * 2000


# ------------------------------------------------------------------------------------- conversion


@pytest.fixture(scope="module")
def hf_checkpoint(e4b_checkpoint_dir):
    return e4b_checkpoint_dir


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}"))


@pytest.mark.slow  # builds a tiny checkpoint with transformers once per module
def test_full_disk_while_writing_config_leaves_no_model(hf_checkpoint, tmp_path, monkeypatch):
    """ENOSPC on the very last write (config.json): nothing that looks like a model may remain."""
    from convert import WriteError, convert_checkpoint
    from gemma4_mac.model_manager import list_models

    real_write_text = Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name == "config.json" and ".partial-" in self.parent.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(WriteError, match="config.json failed: the disk is full .* Free some disk space"):
        convert_checkpoint(hf_checkpoint, tmp_path / "models" / "tiny-4bit")
    assert _leftovers(tmp_path / "models", "tiny-4bit") == []
    assert list_models(root=tmp_path / "models") == []


@pytest.mark.slow  # builds a tiny checkpoint with transformers once per module
def test_full_disk_while_writing_shards_leaves_no_model(hf_checkpoint, tmp_path, monkeypatch):
    import convert.writer
    from convert import WriteError

    calls = []

    class FullDisk:
        def __getattr__(self, name):
            return getattr(mx, name)

        @staticmethod
        def save_safetensors(path, arrays, metadata=None):
            calls.append(path)
            Path(path).write_bytes(b"\0" * 100)  # a half-written shard on disk, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(convert.writer, "mx", FullDisk())
    with pytest.raises(WriteError, match="No space left on device.*Free some disk space"):
        convert_checkpoint_quiet(hf_checkpoint, tmp_path / "out")
    assert calls and _leftovers(tmp_path, "out") == []


def convert_checkpoint_quiet(src, dst, **kwargs):
    from convert import convert_checkpoint

    return convert_checkpoint(src, dst, quantize=False, dtype="float32", **kwargs)


# A child that converts SRC to DST and stops (printing "converting") at the first weight, until it is killed.
CONVERT_UNTIL_KILLED = textwrap.dedent("""
    import sys, time
    from convert import convert_checkpoint

    def progress(report):
        if report.stage == "convert" and report.item and report.item.endswith("weight"):
            print("converting", flush=True)
            time.sleep(3600)

    convert_checkpoint(sys.argv[1], sys.argv[2], quantize=False, dtype="float32", progress=progress)
""")


@pytest.mark.slow  # builds a tiny checkpoint with transformers once per module
def test_kill_during_conversion_leaves_no_model_and_the_next_run_cleans_up(hf_checkpoint, tmp_path):
    from gemma4_mac.model_manager import list_models

    models = tmp_path / "models"
    process = _run_until(CONVERT_UNTIL_KILLED, [str(hf_checkpoint), str(models / "tiny")], "converting",
                         timeout=120)
    process.kill()
    process.wait(timeout=10)
    left = _leftovers(models, "tiny")
    assert left and all(".partial-" in name for name in left)  # hidden work folder only, no "tiny"
    assert list_models(root=models) == []
    converted = convert_checkpoint_quiet(hf_checkpoint, models / "tiny")
    assert _leftovers(models, "tiny") == ["tiny"] and load_model(converted) is not None


# ------------------------------------------------------------------- a real, small, full filesystem

_ON_SMALL_FILESYSTEM = textwrap.dedent("""
    import json, shutil, sys
    from pathlib import Path
    from convert import ConversionError, convert_checkpoint

    mount, source = Path(sys.argv[1]), sys.argv[2]
    if sys.argv[3] == "download":
        import convert.hub_download as hub_download
        from huggingface_hub import constants
        constants.DOWNLOAD_CHUNK_SIZE = 64 * 1024
        hub_download._SPACE_MARGIN = -(1 << 40)  # as if another app filled the disk after the check
    error = None
    try:
        convert_checkpoint(source, mount / "models" / "tiny", quantize=False, dtype="float32")
    except ConversionError as caught:
        error = f"{type(caught).__name__}: {caught}"
    usage = shutil.disk_usage(mount)
    print(json.dumps({"error": error, "left": sorted(str(p.relative_to(mount)) for p in mount.rglob("*")),
                      "free": usage.free, "total": usage.total}))
""")


def _run_on_small_filesystem(tmp_path: Path, size_bytes: int, args: list[str], env: dict | None = None) -> dict:
    """Run _ON_SMALL_FILESYSTEM in its own mount namespace with a tmpfs of `size_bytes` (Linux only)."""
    import shutil as shell_tools

    if sys.platform != "linux" or shell_tools.which("unshare") is None:
        pytest.skip("needs Linux's unshare to mount a small private filesystem")
    mount = tmp_path / "small"
    mount.mkdir()
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    # a user namespace needs a single-threaded caller: a preloaded library that starts threads (run_tests.sh
    # preloads OpenBLAS) is handed to the Python inside only, not to unshare
    preload = environment.pop("LD_PRELOAD", None)
    python = ["env", f"LD_PRELOAD={preload}", sys.executable] if preload else [sys.executable]
    command = ["unshare", "--mount", "--map-root-user", "sh", "-c",
               'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"', "sh", str(size_bytes), str(mount),
               *python, "-c", _ON_SMALL_FILESYSTEM, str(mount), *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=environment)
    if done.returncode and "mount" in done.stderr and not done.stdout:
        pytest.skip(f"this machine does not allow a private mount: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # builds a tiny checkpoint with transformers once per module
def test_conversion_onto_a_real_full_filesystem_leaves_no_model(hf_checkpoint, tmp_path):
    weights = sum(p.stat().st_size for p in hf_checkpoint.glob("*.safetensors"))
    result = _run_on_small_filesystem(tmp_path, weights // 2, [str(hf_checkpoint), "convert"])
    assert result["error"] is not None and result["error"].startswith("WriteError")
    assert "No space left on device" in result["error"] and "Free some disk space" in result["error"]
    assert result["left"] == ["models"]  # the half-written work folder is gone, and with it its bytes
    assert result["free"] == result["total"]


@pytest.mark.slow  # builds a tiny checkpoint with transformers once per module
def test_download_onto_a_real_full_filesystem_keeps_what_arrived(hf_checkpoint, tmp_path):
    from tests.fake_hub import FakeHub

    weights = sum(p.stat().st_size for p in hf_checkpoint.glob("*.safetensors"))
    with FakeHub("google/tiny-gemma-4", hf_checkpoint) as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0",
               "GEMMA4_MAC_DOWNLOADS": str(tmp_path / "small" / "downloads")}
        result = _run_on_small_filesystem(tmp_path, weights // 2, ["google/tiny-gemma-4", "download"], env)
    assert result["error"] is not None and result["error"].startswith("DownloadError")
    assert "disk filled up while downloading" in result["error"] and "continues where it stopped" in result["error"]
    parts = [name for name in result["left"] if name.endswith(".part")]
    assert parts and not any(name.startswith("models/") for name in result["left"])


# ------------------------------------------------------------------------------ model files removed


@pytest.mark.slow  # builds a tiny checkpoint with transformers once per module
def test_model_files_removed_while_loaded(hf_checkpoint, tmp_path):
    import shutil

    from gemma4_mac.engine import EngineError, MlxBackend

    folder = tmp_path / "model"
    shutil.copytree(hf_checkpoint, folder)
    model = load_model(folder)
    shutil.rmtree(folder)
    logits = model(mx.array([[1, 2, 3]]))  # weights were read into memory: the loaded model keeps working
    assert np.isfinite(np.array(logits)).all()
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(folder)
    with pytest.raises(EngineError, match="does not exist"):
        MlxBackend().load(folder)
    shutil.copytree(hf_checkpoint, folder)
    for shard in folder.glob("*.safetensors"):
        shard.unlink()
    with pytest.raises(ModelLoadError, match="holds no .safetensors weights|incomplete"):
        load_model(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(folder)


# ------------------------------------------------------------------------------- document cache


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "missing"])
def test_damaged_document_cache_is_rejected_and_recomputed(hf_checkpoint, tmp_path, monkeypatch, damage):
    from gemma4_mac import document_cache
    from gemma4_mac.prefill import prefill
    from gemma4_mac.session import ChatSession

    monkeypatch.setattr(document_cache, "MIN_TOKENS_TO_SAVE", 16)
    model, model_id = load_model(hf_checkpoint), model_fingerprint(hf_checkpoint)
    store = DocumentCacheStore(tmp_path / "cache")
    tokens = list(range(3, 67))

    def save():
        session = ChatSession(model)
        prefill(model, tokens, session.cache, want_logits=False, on_chunk=session.append)
        return store.save(model_id, session.tokens, session.cache)

    entry = save()
    data = entry.data_path.read_bytes()
    if damage == "flip":
        entry.data_path.write_bytes(data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:])
    elif damage == "truncate":
        entry.data_path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        entry.data_path.write_bytes(b"")
    else:
        entry.data_path.unlink()
    session = ChatSession(model)
    assert session.load_saved_prefix(store, model_id, tokens + [9]) == 0  # rejected: recompute from scratch
    assert list((tmp_path / "cache").iterdir()) == []
    again = save()  # recomputed and saved afresh
    assert ChatSession(model).load_saved_prefix(store, model_id, tokens + [9]) == len(tokens)
    assert json.loads(again.meta_path.read_text())["n_tokens"] == len(tokens)
