"""The real app (`python -m ui`, real engine, a tiny model with the real tokenizer) on a virtual X display: a
long paste shows "Reading document… N of M tokens" with a bar while the model reads it, and quitting (Ctrl+Q)
while it reads or while it answers cancels and exits within a second or so, with status 0 (no abort)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_ui_xvfb_app import stored_messages, xdotool
from tests.ui_support import xvfb_display

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="drives an X server with xdotool")]
ACCENT = (0x0A, 0x7C, 0xFF)  # the light theme's accent: the reading bar's filled part
QUIT_SECONDS = 2.0  # Ctrl+Q to the process gone; about 1 s here (0.5 s of it pynput's listener on X11)


def long_paste() -> str:
    sections = "\n\n".join(f"Section {i}. The cache keeps every token it has read, so each turn costs only "
                           f"its new words; sliding layers keep {i % 7 + 1} windows of recent tokens."
                           for i in range(500))
    return "# Notes on caches\n\n" + sections  # about 70 KB, 17,000 tokens


def reading_bar_in(picture: Path, left: int = 300) -> bool:
    """Whether the screenshot shows a thin bar partly filled with the accent colour, right of the sidebar (the
    chips' document tiles share the colour but are 40 px tall)."""
    import numpy as np
    from PySide6.QtGui import QImage

    image = QImage(str(picture)).convertToFormat(QImage.Format_RGB32)
    pixels = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    blue, green, red = (pixels[:, left:image.width(), i].astype(int) for i in range(3))  # BGRA in memory
    near = (abs(red - ACCENT[0]) <= 24) & (abs(green - ACCENT[1]) <= 24) & (abs(blue - ACCENT[2]) <= 24)
    rows = []
    for line in near:
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate(([0], line.astype(int), [0])))))[::2]
        rows.append(bool(runs.size) and runs.max() >= 12)
    bands, height = [], 0
    for filled in rows + [False]:
        if filled:
            height += 1
        elif height:
            bands.append(height)
            height = 0
    return any(3 <= h <= 8 for h in bands)


class Screen:
    """The helper that owns the clipboard (the paste) and takes screenshots of the display."""

    def __init__(self, env: dict, text_file: Path):
        self.process = subprocess.Popen([sys.executable, "-m", "tests.xvfb_screen", str(text_file)], cwd=ROOT,
                                        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "ready"

    def shot(self, path: Path) -> Path:
        self.process.stdin.write(f"shot {path}\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "ok"
        return path

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(10)


def paste_and_ask(tmp_path: Path, quit_when: str) -> dict:
    """Start the app, paste the long text, ask about it, quit while it `quit_when` ("reads" or "answers")."""
    from tests.tiny_chat_model import build_tiny_chat_model

    model = build_tiny_chat_model(tmp_path / "tiny-model")
    home = tmp_path / "home"
    home.mkdir()
    # a long answer that will still be streaming when Ctrl+Q comes (a random model seldom says <eos>)
    settings = {"max_tokens": 4000, "temperature": 1.0, "context_size": 65536}
    (home / "settings.json").write_text(json.dumps(settings))
    text_file = tmp_path / "paste.txt"
    text_file.write_text(long_paste(), encoding="utf-8")
    result: dict = {"shots": []}
    with xvfb_display() as display:
        env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb", "PYTHONPATH": str(ROOT)}
        env.pop("GEMMA4_MAC_HOME", None)
        screen = Screen(env, text_file)
        app = subprocess.Popen([sys.executable, "-m", "ui", "--home", str(home), "--model", str(model)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            found = xdotool(display, "search", "--sync", "--onlyvisible", "--name", "^Gemma$", timeout=120)
            window = found.split()[0]
            xdotool(display, "windowfocus", window)
            time.sleep(0.5)
            xdotool(display, "key", "ctrl+v")  # a long paste becomes a document chip
            time.sleep(0.5)
            xdotool(display, "type", "--delay", "20", "Summarise this.")
            xdotool(display, "key", "Return")
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and not result.get("reading"):
                picture = screen.shot(tmp_path / f"screen-{len(result['shots']):02d}.png")
                result["shots"].append(picture)
                if reading_bar_in(picture):
                    result["reading"] = picture
                time.sleep(0.3)
            if quit_when == "answers":
                while time.monotonic() < deadline:
                    messages = stored_messages(home / "history.sqlite3")  # the answer is saved every 2 s
                    if len(messages) >= 2 and messages[-1]["content"]:
                        break
                    time.sleep(0.3)
            pressed = time.monotonic()
            xdotool(display, "key", "ctrl+q")
            result["code"] = app.wait(timeout=60)
            result["quit_seconds"] = time.monotonic() - pressed
        finally:
            if app.poll() is None:
                app.kill()
            screen.close()
    result["log"] = app.stdout.read() if app.stdout else ""
    result["messages"] = stored_messages(home / "history.sqlite3")
    print(f"quit {quit_when}: {result['quit_seconds']:.2f} s from Ctrl+Q to the process gone")
    return result


def test_a_long_paste_shows_its_reading_and_quitting_mid_answer_is_quick(tmp_path):
    result = paste_and_ask(tmp_path, "answers")
    assert result.get("reading"), f"no reading bar in {len(result['shots'])} screenshots"
    assert result["code"] == 0, result["log"][-3000:]
    assert result["quit_seconds"] < QUIT_SECONDS, result["quit_seconds"]
    question, answer = result["messages"][-2:]
    assert question["content"] == "Summarise this."
    assert answer["partial"] and answer["content"]  # what was written before quitting is kept


def test_quitting_while_a_long_paste_is_read_exits_cleanly(tmp_path):
    result = paste_and_ask(tmp_path, "reads")
    assert result.get("reading")
    # before, quitting here waited 3 s for the chunk being read, then aborted ("terminate called ...")
    assert result["code"] == 0 and "terminate called" not in result["log"], result["log"][-3000:]
    assert result["quit_seconds"] < QUIT_SECONDS, result["quit_seconds"]
