"""Tools as a person meets them, on a real (virtual) X display: the app (real engine, the tiny model's replies
forced; tests/scripted_tool_app.py) with a real MCP server over stdio in its settings. A question typed with
the keyboard makes the model call `write_note`; the call waits for Allow while the window keeps taking keys;
a mouse click on Allow runs it and the note is written; a second question calls a tool that hangs, and Escape
stops it at once; Ctrl+Q quits with exit status 0."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.test_ui_xvfb_app import stored_messages, xdotool
from tests.ui_support import xvfb_display

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drives an X server with xdotool")]

WRITE = '<|tool_call>call:write_note{title:<|"|>march<|"|>,text:<|"|>14 invoices, 1240.50 EUR<|"|>}<tool_call|>'
HANG = "<|tool_call>call:wait{seconds:60}<tool_call|>"
REPLIES = ["I'll keep a note." + WRITE, "Saved the note march.", "Waiting." + HANG, "Done waiting."]


class Lines:
    """The app's stdout, line by line, read on a thread (so waiting for a line can time out)."""

    def __init__(self, stream):
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no {prefix!r} line in {timeout:.0f} s; the app said:\n" + "\n".join(self.seen[-60:]))


def wait_for_answer(database: Path, count: int, timeout: float) -> list[dict]:
    """The stored messages once the `count`th has its stats (the answer ended)."""
    deadline = time.monotonic() + timeout
    messages: list[dict] = []
    while time.monotonic() < deadline:
        messages = stored_messages(database)
        if len(messages) >= count and messages[count - 1]["stats"] is not None:
            return messages
        time.sleep(0.2)
    raise AssertionError(f"no finished answer #{count} in {timeout:.0f} s: {messages}")


def stored_tool_calls(database: Path) -> list[list[dict]]:
    import sqlite3

    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
        rows = db.execute("SELECT tool_calls FROM messages ORDER BY conversation_id, position")
        return [json.loads(r) for (r,) in rows]


def test_a_tool_call_waits_for_a_click_on_allow_and_escape_stops_a_hanging_one(tmp_path):
    from tests.tiny_chat_model import build_tiny_chat_model

    model = build_tiny_chat_model(tmp_path / "tiny-model")
    notes, home = tmp_path / "notes", tmp_path / "home"
    notes.mkdir()
    home.mkdir()
    server = {"command": sys.executable, "args": ["-m", "tests.mcp_servers.notes", str(notes)],
              "env": {"PYTHONPATH": str(ROOT)}}
    (home / "settings.json").write_text(json.dumps({
        "max_tokens": 120, "temperature": 0.0, "mcp_servers": {"notes": server}, "mcp_approval": {"notes": "always"}}))
    replies = tmp_path / "replies.json"
    replies.write_text(json.dumps(REPLIES))
    database = home / "history.sqlite3"
    with xvfb_display() as display:
        env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb", "PYTHONPATH": str(ROOT)}
        env.pop("GEMMA4_MAC_HOME", None)
        app = subprocess.Popen([sys.executable, "-m", "tests.scripted_tool_app", str(replies), "--home", str(home),
                                "--model", str(model)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        out = Lines(app.stdout)
        try:
            window = xdotool(display, "search", "--sync", "--onlyvisible", "--name", "^Gemma$", timeout=120).split()[0]
            xdotool(display, "windowfocus", window)  # no window manager: set the X input focus directly
            time.sleep(0.5)
            xdotool(display, "type", "--delay", "20", "Note the March invoices")
            xdotool(display, "key", "Return")
            _, call_id, x, y = out.wait_for("WAITING", timeout=300).split()
            assert not (notes / "march.txt").exists()  # nothing runs before the person allows it

            xdotool(display, "type", "--delay", "20", "meanwhile")  # the window takes keys while the call waits
            out.wait_for("COMPOSER meanwhile", timeout=30)
            xdotool(display, "mousemove", x, y, "click", "1")
            messages = wait_for_answer(database, 2, timeout=120)
            assert (notes / "march.txt").read_text() == "14 invoices, 1240.50 EUR"
            answer = messages[1]
            assert answer["content"] == "I'll keep a note.Saved the note march." and not answer["partial"]
            (call,) = stored_tool_calls(database)[1]
            assert call["id"] == call_id and call["status"] == "done" and call["result"] == "saved march"
            assert call["server"] == "notes" and call["arguments"] == {"title": "march",
                                                                        "text": "14 invoices, 1240.50 EUR"}

            xdotool(display, "key", "ctrl+a")
            xdotool(display, "type", "--delay", "20", "Wait a minute")
            xdotool(display, "key", "Return")
            out.wait_for("RUNNING wait", timeout=120)
            time.sleep(0.5)
            pressed = time.monotonic()
            xdotool(display, "key", "Escape")  # Stop
            messages = wait_for_answer(database, 4, timeout=30)
            stopped_in = time.monotonic() - pressed
            assert messages[3]["partial"] and messages[3]["stats"]["finish_reason"] == "cancelled"
            assert stored_tool_calls(database)[3][0]["status"] == "cancelled"
            assert stopped_in < 10, f"Stop took {stopped_in:.1f} s with the tool still running"
            xdotool(display, "key", "ctrl+q")
            code = app.wait(timeout=60)
        finally:
            if app.poll() is None:
                app.kill()
                app.wait(timeout=10)
    assert code == 0, "\n".join(out.seen[-60:])
