"""`gemma4-mac` (`python -m ui`) as a person runs it, on a real (virtual) X display: the window opens, a question
typed with the keyboard (xdotool) is answered by a real model on the engine thread, and Ctrl+Q quits
with exit status 0."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ui_support import xvfb_display

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drives an X server with xdotool")]


def xdotool(display: str, *args: str, timeout: float = 60) -> str:
    result = subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": display}, capture_output=True,
                            text=True, timeout=timeout, check=True)
    return result.stdout.strip()


def stored_messages(database: Path) -> list[dict]:
    """The messages in the app's history (read-only; the app keeps writing in WAL mode)."""
    if not database.exists():
        return []
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute("SELECT role, content, partial, stats FROM messages ORDER BY conversation_id, position")
            return [{"role": r, "content": c, "partial": bool(p), "stats": json.loads(s) if s else None}
                    for r, c, p, s in rows]
    except sqlite3.OperationalError:
        return []  # the schema is still being created


def ask_the_window(display: str, home: Path, app_args: list[str], question: str, timeout: float) -> tuple:
    """Start the app, type `question` into its window, wait for the stored answer, quit; (exit code, messages, log)."""
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    env.pop("GEMMA4_MAC_HOME", None)
    app = subprocess.Popen([sys.executable, "-m", "ui", "--home", str(home), *app_args], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    messages: list[dict] = []
    try:
        window = xdotool(display, "search", "--sync", "--onlyvisible", "--name", "^Gemma$", timeout=120).split()[0]
        xdotool(display, "windowfocus", window)  # no window manager: set the X input focus directly
        time.sleep(0.5)
        xdotool(display, "type", "--delay", "25", question)
        xdotool(display, "key", "Return")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and app.poll() is None:
            messages = stored_messages(home / "history.sqlite3")
            if len(messages) >= 2 and messages[-1]["stats"] is not None:
                break
            time.sleep(0.5)
        if app.poll() is None:
            xdotool(display, "key", "ctrl+q")  # to the focused window, as a person presses it
        code = app.wait(timeout=60)
    finally:
        if app.poll() is None:
            app.kill()
    log = app.stdout.read() if app.stdout else ""
    return code, messages, log


def test_the_window_answers_a_typed_question_and_quits_cleanly(tmp_path):
    from tests.tiny_chat_model import build_tiny_chat_model

    model = build_tiny_chat_model(tmp_path / "tiny-model")
    home = tmp_path / "home"
    home.mkdir()
    (home / "settings.json").write_text(json.dumps({"max_tokens": 12, "temperature": 0.0}))
    with xvfb_display() as display:
        code, messages, log = ask_the_window(display, home, ["--model", str(model)], "What is two plus two?",
                                             timeout=300)
    assert code == 0, log[-3000:]
    assert [m["role"] for m in messages] == ["user", "assistant"], log[-3000:]
    assert messages[0]["content"] == "What is two plus two?"  # typed key by key through X
    answer = messages[1]
    assert not answer["partial"] and answer["stats"]["finish_reason"] in ("stop", "length")
    assert 1 <= answer["stats"]["generation_tokens"] <= 12


def test_a_fresh_start_opens_with_the_starter_model_and_completes_text(tmp_path):
    """What `make run` does on a fresh machine: no model anywhere, so the offline starter (Gemma 3 270M,
    converted from its PyPI package on first use) loads; being a base model, it continues the text."""
    cached = ROOT / ".cache" / "app-starter-models"  # the converted starter, kept between runs (~290 MB)
    cached.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(cached, target_is_directory=True)
    (home / "settings.json").write_text(json.dumps({"max_tokens": 3, "temperature": 0.0}))
    with xvfb_display() as display:
        code, messages, log = ask_the_window(display, home, [], "The capital of France is", timeout=900)
    assert code == 0, log[-3000:]
    assert [m["role"] for m in messages] == ["user", "assistant"], log[-3000:]
    answer = messages[1]
    assert answer["stats"]["prompt_tokens"] <= 8  # the raw text, no chat template around it
    assert answer["stats"]["generation_tokens"] == 3 and answer["content"].strip()
    assert any(p.name.startswith("gemma-3-270m") for p in cached.iterdir())
