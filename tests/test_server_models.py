"""Models by name: the listing with context lengths and abilities, loading on demand with an idle unload
(`serve`), the app's policy of never swapping the window's model, and `serve` beside a running app.

Two copies of the tiny random Gemma 4 with the real tokenizer ("alpha", "beta") stand for a library.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest

from gemma4_mac.server import registry
from gemma4_mac.server.app import ServerHandle, create_app, load_slot
from gemma4_mac.server.control import LocalServer, ServerConfig
from gemma4_mac.server.library import ModelLibrary, model_id_for
from gemma4_mac.server.service import GenerationService
from gemma4_mac.worker import ModelWorker
from tests.server_support import MODEL_ID, build_tiny_multimodal_model, raw_request, serve

pytestmark = pytest.mark.slow  # loads models with the real 262K-token vocabulary several times

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def library_folders(tiny_chat_model_dir, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("library")
    return [Path(shutil.copytree(tiny_chat_model_dir, root / name)) for name in ("alpha", "beta")]


def entries_of(folders):
    return lambda: [SimpleNamespace(path=p, label=p.name, has_chat_template=True) for p in folders]


def _wait(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.05)
    return predicate()


def test_serve_loads_the_named_model_on_demand_and_unloads_it_when_idle(library_folders):
    worker = ModelWorker()
    library = ModelLibrary(worker, owns_model=True, loader=load_slot, keep_alive=1.0,
                           entries=entries_of(library_folders))
    service = GenerationService(worker, library=library)
    handle = ServerHandle(create_app(service), "127.0.0.1", 0).start()
    client = openai.OpenAI(base_url=handle.base_url, api_key="unused", max_retries=0, timeout=120)
    try:
        listed = client.models.list().data
        assert [m.id for m in listed] == ["alpha", "beta"] and not any(m.loaded for m in listed)
        card = listed[0].model_dump()
        assert card["context_length"] > 0
        assert card["capabilities"] == {"vision": False, "audio": False, "tools": True, "thinking": True,
                                        "chat": True}

        reply = client.chat.completions.create(model="beta", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=2, temperature=0)
        assert reply.model == "beta" and worker.slot.info["id"] == "beta"
        assert [(m.id, m.loaded) for m in client.models.list().data] == [("beta", True), ("alpha", False)]

        chunks = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=2, temperature=0, stream=True)
        assert [c for c in chunks if c.choices]
        assert worker.slot.info["id"] == "alpha"  # swapped, one model at a time

        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="gamma", messages=[{"role": "user", "content": "hi"}])
        assert "'alpha'" in caught.value.body["message"] and "'beta'" in caught.value.body["message"]

        assert _wait(lambda: worker.slot is None), "the idle model was not unloaded"
        reply = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=2, temperature=0)
        assert reply.model == "alpha" and worker.slot is not None  # loaded again on demand
    finally:
        handle.stop()
        service.close()
        worker.stop()


def test_in_the_app_the_server_never_swaps_the_windows_model(library_folders, tmp_path):
    served = serve(build_tiny_multimodal_model(tmp_path / MODEL_ID),
                   library_entries=entries_of(library_folders))
    try:
        client = openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0, timeout=60)
        (listed,) = client.models.list().data  # what the app serves: the window's model
        assert listed.id == MODEL_ID and listed.loaded and listed.model_dump()["capabilities"]["vision"]
        with pytest.raises(openai.ConflictError) as caught:
            client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}])
        assert MODEL_ID in caught.value.body["message"] and caught.value.body["param"] == "model"
        assert served.worker.slot.info["id"] == MODEL_ID
        status, body, _ = raw_request(served.base_url, "GET", "/models/beta")
        assert status == 200 and body["loaded"] is False
    finally:
        served.stop()


def test_serve_points_to_the_apps_server_instead_of_loading_a_second_copy(library_folders, tmp_path,
                                                                          monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("GEMMA4_MAC_HOME", str(home))
    worker = ModelWorker()
    control = LocalServer(worker)
    url = control.start(ServerConfig(port=0))
    try:
        recorded = json.loads((home / registry.FILE_NAME).read_text())
        assert recorded["url"] == url and recorded["kind"] == "app" and recorded["pid"] == os.getpid()
        env = {**os.environ, "GEMMA4_MAC_HOME": str(home), "PYTHONPATH": str(REPO)}
        started = time.monotonic()
        command = [sys.executable, "-m", "gemma4_mac", "serve", "--model", str(library_folders[0]),
                   "--port", "0"]
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
        assert result.returncode == 3, result.stderr
        assert url in result.stderr and "already running" in result.stderr
        assert time.monotonic() - started < 60  # it did not load the model
    finally:
        control.stop()
        worker.stop()
    assert not (home / registry.FILE_NAME).exists()  # forgotten when the app's server stops
    assert registry.running_server() is None


def test_model_ids_of_cache_snapshots():
    assert model_id_for(Path("/x/models--google--gemma-4-E2B-it/snapshots/abc123")) == "google/gemma-4-E2B-it"
    assert model_id_for(Path("/Users/me/models/gemma-4-e4b-it-4bit")) == "gemma-4-e4b-it-4bit"
