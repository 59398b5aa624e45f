"""Hub downloads through the real huggingface_hub client against a hub on 127.0.0.1 (tests/fake_hub.py):
a killed or cancelled download continues with a Range request, a damaged transfer is caught by its
checksum, gated repos, a full disk and being offline each say what to do, and nothing that looks like a
model appears until the conversion is complete."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import mlx.core as mx

from convert import ConversionCancelled, DownloadError, convert_checkpoint
from convert.hf_source import download
from convert.hub_download import COMPLETE_MARKER, DOWNLOADS_ENV, PART_SUFFIX, discard_download
from convert.progress import Reporter
from mlx_model import load_model
from tests.fake_hub import COMMIT, FakeHub, Stall

REPO = Path(__file__).resolve().parent.parent
REPO_ID = "google/tiny-gemma-4"
SMALL_CHUNK = 64 * 1024  # huggingface_hub writes 10 MB chunks; tiny test files need smaller ones


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Gemma 4 checkpoint in hub layout, and its float32 conversion made from the local folder."""
    from tests.reference_models import build_gemma4

    root = tmp_path_factory.mktemp("hub")
    build_gemma4("e4b", root / "repo", head_dim=32, global_head_dim=64)
    (root / "repo" / "README.md").write_text("# tiny\n")
    reference = convert_checkpoint(root / "repo", root / "reference", quantize=False, dtype="float32")
    return root / "repo", reference


@pytest.fixture
def hub(checkpoint, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv(DOWNLOADS_ENV, str(tmp_path / "downloads"))
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", SMALL_CHUNK)
    with FakeHub(REPO_ID, checkpoint[0]) as server:
        server.use(monkeypatch)
        yield server


def _shard(hub: FakeHub) -> str:
    return max((name for name in hub.files if name.endswith(".safetensors")), key=lambda n: hub.files[n].stat().st_size)


def _commit_folder(tmp_path: Path) -> Path:
    return tmp_path / "downloads" / REPO_ID.replace("/", "--") / COMMIT


def _same_model(converted: Path, reference: Path) -> None:
    ids = mx.array([[2, 5, 9, 11, 3]])
    assert np.array_equal(np.array(load_model(converted)(ids)), np.array(load_model(reference)(ids)))


_CHILD = textwrap.dedent("""
    import sys
    from huggingface_hub import constants
    constants.DOWNLOAD_CHUNK_SIZE = int(sys.argv[3])
    from convert import convert_checkpoint
    convert_checkpoint(sys.argv[1], sys.argv[2], quantize=False, dtype="float32")
""")


@pytest.mark.slow  # a child process and a tiny checkpoint built with transformers
def test_download_killed_mid_file_continues_where_it_stopped(checkpoint, hub, tmp_path):
    shard = _shard(hub)
    size = hub.files[shard].stat().st_size
    stall_at = (size // 2) // SMALL_CHUNK * SMALL_CHUNK
    assert stall_at >= SMALL_CHUNK
    hub.stall = Stall(shard, stall_at)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0",
           DOWNLOADS_ENV: str(tmp_path / "downloads")}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, REPO_ID, str(tmp_path / "models" / "tiny"),
                              str(SMALL_CHUNK)], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert hub.stall.reached.wait(120), child.stderr.read() if child.poll() is not None else "no stall"
        part = _commit_folder(tmp_path) / (shard + PART_SUFFIX)
        deadline = time.monotonic() + 30
        while not (part.is_file() and part.stat().st_size >= stall_at) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert part.stat().st_size >= stall_at  # what arrived is on disk before the kill
    finally:
        child.kill()
        child.wait(timeout=30)
        hub.stall.release.set()
    hub.stall = None
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []
    assert not (_commit_folder(tmp_path) / COMPLETE_MARKER).exists()

    reports = []
    converted = convert_checkpoint(REPO_ID, tmp_path / "models" / "tiny", quantize=False, dtype="float32",
                                   progress=reports.append)
    resumed_from = hub.ranges_for(shard)[-1]
    assert resumed_from is not None and int(resumed_from.removeprefix("bytes=").rstrip("-")) >= stall_at
    downloads = [r for r in reports if r.stage == "download" and r.total > 1]
    assert downloads[0].done >= stall_at  # progress starts from what was already there
    assert [r.done for r in downloads] == sorted(r.done for r in downloads)
    assert downloads[-1].done == downloads[-1].total == sum(p.stat().st_size for p in hub.files.values())
    _same_model(converted, checkpoint[1])


def test_cancelled_download_keeps_what_arrived_and_the_next_run_continues(checkpoint, hub, tmp_path):
    shard = _shard(hub)
    cancel = threading.Event()

    def progress(report):
        if report.stage == "download" and report.item == shard and report.done > SMALL_CHUNK:
            cancel.set()

    with pytest.raises(ConversionCancelled):
        convert_checkpoint(REPO_ID, tmp_path / "tiny", quantize=False, dtype="float32", progress=progress,
                           cancel=cancel)
    part = _commit_folder(tmp_path) / (shard + PART_SUFFIX)
    assert part.is_file() and part.stat().st_size >= SMALL_CHUNK
    assert not (tmp_path / "tiny").exists()
    arrived = part.stat().st_size
    converted = convert_checkpoint(REPO_ID, tmp_path / "tiny", quantize=False, dtype="float32")
    assert hub.ranges_for(shard)[-1] == f"bytes={arrived}-" and not part.exists()
    _same_model(converted, checkpoint[1])


def test_a_damaged_transfer_is_caught_by_its_checksum(checkpoint, hub, tmp_path):
    shard = _shard(hub)
    hub.corrupt = {shard}
    with pytest.raises(DownloadError, match=f"{shard} of {REPO_ID} arrived damaged.*download again"):
        convert_checkpoint(REPO_ID, tmp_path / "tiny", quantize=False, dtype="float32")
    folder = _commit_folder(tmp_path)
    assert not (folder / shard).exists() and not (folder / (shard + PART_SUFFIX)).exists()
    assert not (folder / COMPLETE_MARKER).exists() and not (tmp_path / "tiny").exists()
    hub.corrupt = set()
    _same_model(convert_checkpoint(REPO_ID, tmp_path / "tiny", quantize=False, dtype="float32"), checkpoint[1])


def test_gated_repo_says_how_to_get_access(hub, tmp_path):
    hub.gated = True
    with pytest.raises(DownloadError, match="is gated: accept its licence on huggingface.co and log in"):
        convert_checkpoint(REPO_ID, tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []


def test_unknown_repo_and_unknown_file_are_named(hub, tmp_path):
    with pytest.raises(DownloadError, match="google/no-such-model was not found on the Hugging Face hub"):
        convert_checkpoint("google/no-such-model", tmp_path / "tiny")
    with pytest.raises(DownloadError, match="has no file named gemma-4-Q4_K_M.gguf"):
        convert_checkpoint(f"{REPO_ID}/gemma-4-Q4_K_M.gguf", tmp_path / "tiny")


def test_too_little_disk_space_is_refused_with_the_numbers(hub, tmp_path, monkeypatch):
    import convert.hub_download as hub_download

    real = hub_download.shutil.disk_usage
    monkeypatch.setattr(hub_download.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=50_000_000))
    with pytest.raises(DownloadError, match=r"needs 0\.\d GB more on disk but only 0\.1 GB is free.*Free some disk"):
        convert_checkpoint(REPO_ID, tmp_path / "tiny")
    assert not any(name.endswith(PART_SUFFIX) for name in os.listdir(_commit_folder(tmp_path)))


def test_offline_uses_a_complete_download_and_otherwise_says_so(checkpoint, hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError, match=r"unreachable \(offline\?\).*resumes where it stopped"):
        convert_checkpoint(REPO_ID, tmp_path / "tiny")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    folder = download(REPO_ID, Reporter(None, None))
    assert (folder / COMPLETE_MARKER).is_file() and (folder / "README.md").is_file()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    requests = len(hub.requests)
    converted = convert_checkpoint(REPO_ID, tmp_path / "tiny", quantize=False, dtype="float32")
    assert len(hub.requests) == requests  # nothing was asked of the hub
    _same_model(converted, checkpoint[1])


def test_hub_unreachable_is_explained(tmp_path, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv(DOWNLOADS_ENV, str(tmp_path / "downloads"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for repo in ("google/gemma-4-E2B-it", "someone/gemma-4-gguf/gemma-4-E2B-Q4_K_M.gguf"):
        with pytest.raises(DownloadError, match=r"unreachable \(offline\?\).*resumes where it stopped"):
            convert_checkpoint(repo, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_one_gguf_file_is_downloaded_alone(tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "repo"
    repo.mkdir()
    payload = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    (repo / "gemma-4-Q4_K_M.gguf").write_bytes(b"GGUF" + payload)
    (repo / "gemma-4-Q8_0.gguf").write_bytes(b"GGUF" + payload * 2)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", SMALL_CHUNK)
    with FakeHub("someone/gemma-4-gguf", repo) as server:
        server.use(monkeypatch)
        reports = []
        path = download("someone/gemma-4-gguf/gemma-4-Q4_K_M.gguf", Reporter(reports.append, None),
                        cache_dir=tmp_path / "downloads")
        assert path.name == "gemma-4-Q4_K_M.gguf" and path.read_bytes() == b"GGUF" + payload
        assert [p.name for p in path.parent.iterdir() if not p.name.startswith(".")] == [path.name]
        assert reports[-1].done == reports[-1].total == len(payload) + 4
        assert not server.ranges_for("gemma-4-Q8_0.gguf")
        other = download("someone/gemma-4-gguf/gemma-4-Q8_0.gguf", Reporter(None, None), cache_dir=tmp_path / "downloads")
        assert other.parent == path.parent and path.read_bytes() == b"GGUF" + payload  # the first one stays
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        assert download("someone/gemma-4-gguf/gemma-4-Q4_K_M.gguf", Reporter(None, None),
                        cache_dir=tmp_path / "downloads") == path  # both are known complete offline
    discard_download(path, root=tmp_path / "downloads")
    assert not path.exists() and other.exists()  # converting one file frees that file only
    with pytest.raises(DownloadError, match="unreachable"):
        download("someone/gemma-4-gguf/gemma-4-Q4_K_M.gguf", Reporter(None, None), cache_dir=tmp_path / "downloads")
    discard_download(other, root=tmp_path / "downloads")
    assert not path.parent.exists()
    discard_download(repo, root=tmp_path / "downloads")  # a folder outside the downloads is never touched
    assert (repo / "gemma-4-Q8_0.gguf").exists()


def test_the_app_downloads_into_its_data_folder_and_frees_it_after_converting(hub, tmp_path, monkeypatch):
    from gemma4_mac.engine import MlxBackend
    from gemma4_mac.paths import HOME_ENV, downloads_dir

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "app"))
    backend, reports = MlxBackend(), []
    source = Path(backend.download(REPO_ID, reports.append, threading.Event()))
    assert source.parent.parent == downloads_dir() and (source / COMPLETE_MARKER).is_file()
    assert reports[-1]["stage"] == "download" and reports[-1]["fraction"] == 1.0
    converted = backend.convert(REPO_ID, tmp_path / "app" / "models" / "tiny", "Tiny", reports.append,
                                threading.Event(), source=str(source))
    assert load_model(converted) is not None
    assert not source.exists()  # the 4-bit model replaces the download
