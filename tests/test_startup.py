"""Starting the app with its features on: heavy imports never race, and a start that died never locks the
person out (the crash-loop guard)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gemma4_mac.settings import AppSettings, load_settings
from gemma4_mac.startup_guard import MARKER_NAME, StartupGuard

ROOT = Path(__file__).resolve().parent.parent

# The app's start-up order in miniature: the model thread starts and imports the runtime while this thread
# starts the local server at once (what a saved "serve this model" setting did at every start).
RACE_SCRIPT = """
import json, sys, urllib.request
from gemma4_mac.worker import ModelWorker
from gemma4_mac.server.control import LocalServer, ServerConfig
def load_tokenizer(_slot):  # what loading a model does first on the model thread
    from transformers import AutoTokenizer
    return AutoTokenizer.__name__
worker = ModelWorker()
job = worker.submit("window", load_tokenizer)
server = LocalServer(worker)
url = server.start(ServerConfig(port=0))
with urllib.request.urlopen(url + "/models", timeout=30) as reply:
    print(json.dumps({"status": reply.status, "loaded": job.wait(60)}))
server.stop()
worker.stop()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_model_thread_and_a_server_started_at_once_never_race_their_imports():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(3):  # a fresh interpreter each time: the race is in first imports
        result = subprocess.run([sys.executable, "-c", RACE_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, f"attempt {attempt}: {result.stderr[-3000:]}"
        assert json.loads(result.stdout.strip().splitlines()[-1]) == {"status": 200, "loaded": "AutoTokenizer"}


# -- the guard ----------------------------------------------------------------------------------------------

def test_a_clean_start_changes_nothing_and_leaves_no_marker(tmp_path):
    guard = StartupGuard(tmp_path)
    settings = AppSettings(server_enabled=True, model_path="/models/big")
    start = guard.begin(settings)
    assert start.settings == settings and start.message is None and not start.load_starter
    assert (tmp_path / MARKER_NAME).exists()
    guard.finish()
    assert not (tmp_path / MARKER_NAME).exists()
    assert StartupGuard(tmp_path).begin(settings).message is None


def test_a_start_that_died_turns_off_what_it_had_on_and_says_why(tmp_path):
    settings = AppSettings(server_enabled=True, model_path="/models/gemma-4-31b-it-4bit", menu_bar_only=True)
    StartupGuard(tmp_path).begin(settings)
    marker = json.loads((tmp_path / MARKER_NAME).read_text())
    marker["pid"] = _dead_pid()  # the process that wrote it is gone, as after a crash
    (tmp_path / MARKER_NAME).write_text(json.dumps(marker))
    start = StartupGuard(tmp_path).begin(settings)
    assert not start.settings.server_enabled and not start.settings.menu_bar_only
    assert start.settings.model_path == "" and start.load_starter
    assert "did not finish starting last time" in start.message
    assert "local server off" in start.message and "gemma-4-31b-it-4bit" in start.message
    assert "Settings" in start.message


def test_a_marker_of_a_running_app_is_not_a_crash(tmp_path):
    settings = AppSettings(server_enabled=True)
    (tmp_path / MARKER_NAME).write_text(json.dumps({"pid": os.getppid(), "server_enabled": True}))
    start = StartupGuard(tmp_path).begin(settings)
    assert start.settings.server_enabled and start.message is None


def test_a_marker_cut_off_mid_write_counts_as_a_failed_start(tmp_path):
    (tmp_path / MARKER_NAME).write_text('{"pid": 12')
    start = StartupGuard(tmp_path).begin(AppSettings(server_enabled=True))
    assert not start.settings.server_enabled and start.message


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# -- the real app --------------------------------------------------------------------------------------------

def _settings_file(home: Path, port: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.json").write_text(json.dumps({"server_enabled": True, "server_port": port,
                                                     "max_tokens": 3, "temperature": 0.0}))


def _complete(port: int, timeout: float) -> dict:
    """A completion from the app's server, once it listens and has loaded the model (waiting up to `timeout`)."""
    base, deadline, last = f"http://127.0.0.1:{port}/v1", time.monotonic() + timeout, None
    while True:
        try:
            with urllib.request.urlopen(base + "/models", timeout=30) as reply:
                models = json.loads(reply.read())["data"]
            if models:
                model = models[0]["id"]
                break
            last = "no model loaded yet"
        except urllib.error.HTTPError:
            raise
        except OSError as error:  # not listening yet
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"the app's server never served a model on port {port}: {last}")
        time.sleep(0.5)
    body = json.dumps({"model": model, "prompt": "The capital of France is", "max_tokens": 3,
                       "temperature": 0}).encode()
    request = urllib.request.Request(base + "/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as reply:
            return {"status": reply.status, **json.loads(reply.read())}
    except urllib.error.HTTPError as error:
        raise AssertionError(f"the completion failed: {error.code} {error.read()[:500]!r}") from error


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drives an X server with xdotool")
def test_the_app_with_its_server_on_starts_five_times_and_answers_each_time(tmp_path):
    """The first-hour crash: with "Serve this model to other apps" on, every start died. Five starts of the
    real app (real engine, the starter model) on a virtual display: each serves a completion, the window
    stays up, and Ctrl+Q quits cleanly."""
    from tests.test_ui_xvfb_app import xdotool
    from tests.ui_support import xvfb_display

    cached = ROOT / ".cache" / "app-starter-models"  # the converted starter, shared with the other app tests
    cached.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "home"
    port = _free_port()
    _settings_file(home, port)
    (home / "models").symlink_to(cached, target_is_directory=True)
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb", "PYTHONPATH": str(ROOT)}
    env.pop("GEMMA4_MAC_HOME", None)
    with xvfb_display() as display:
        env["DISPLAY"] = display
        for start in range(5):
            app = subprocess.Popen([sys.executable, "-m", "ui", "--home", str(home)], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                window = xdotool(display, "search", "--sync", "--onlyvisible", "--name", "^Gemma$",
                                 timeout=300).split()[0]
                reply = _complete(port, timeout=900)
                assert reply["status"] == 200 and reply["choices"][0]["text"], reply
                assert app.poll() is None, "the app died after answering"
                assert window in xdotool(display, "search", "--onlyvisible", "--name", "^Gemma$").split()
                xdotool(display, "windowfocus", window)
                xdotool(display, "key", "ctrl+q")
                code = app.wait(timeout=60)
            finally:
                if app.poll() is None:
                    app.kill()
            log = app.stdout.read() if app.stdout else ""
            assert code == 0, f"start {start + 1}: exit {code}\n{log[-3000:]}"
            assert "Traceback" not in log and "terminate called" not in log, f"start {start + 1}:\n{log[-3000:]}"
            assert not (home / MARKER_NAME).exists(), "a clean quit leaves no start-up marker"
    settings, _ = load_settings(home / "settings.json")
    assert settings.server_enabled, "the setting stays on after clean starts"


def test_after_a_start_that_died_the_window_opens_with_the_server_off_and_says_why(tmp_path, qapp, monkeypatch):
    """The person is never locked out: the app built after a failed start has the server off, tells why in
    the banner, and has saved the setting off (so Settings shows it off, ready to turn back on)."""
    from ui.app import build_app

    home = tmp_path / "home"
    _settings_file(home, _free_port())
    (home / MARKER_NAME).write_text(json.dumps({"pid": _dead_pid(), "server_enabled": True, "model_path": ""}))
    monkeypatch.setenv("GEMMA4_MAC_HOME", str(home))
    app, window, controller = build_app(["--fake-engine"])
    try:
        assert not controller.settings.server_enabled
        assert "did not finish starting last time" in window.banner.label.text()
        assert "local server off" in window.banner.label.text()
        saved, _ = load_settings(home / "settings.json")
        assert not saved.server_enabled
    finally:
        controller.shutdown()
        window.close()
