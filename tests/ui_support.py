"""A window, controller and scripted engine for the pytest-qt tests (no MLX, no modal dialogs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import pytest

from gemma4_mac.attachments import AttachmentStore
from gemma4_mac.fake_backend import FakeBackend
from gemma4_mac.history import HistoryStore
from gemma4_mac.settings import AppSettings
from ui.engine import Engine

TIMEOUT = 10_000


@dataclass
class Harness:
    qtbot: object
    window: object
    controller: object
    backend: FakeBackend
    engine: Engine
    history: HistoryStore
    home: Path
    questions: list = field(default_factory=list)

    def type_and_send(self, text: str) -> None:
        """Type into the composer and press Enter, then wait for the answer to finish."""
        from PySide6.QtCore import Qt

        edit = self.window.composer.edit
        edit.setPlainText(text)
        self.qtbot.keyClick(edit, Qt.Key_Return)
        self.wait_idle()

    def wait_idle(self) -> None:
        self.qtbot.waitUntil(lambda: self.controller.stream is None, timeout=TIMEOUT)
        self.qtbot.wait(60)  # the streaming renderer's last pass

    def wait_model(self) -> None:
        self.qtbot.waitUntil(lambda: self.controller.model_info is not None, timeout=TIMEOUT)


def make_harness(qtbot, tmp_path, monkeypatch, backend: Optional[FakeBackend] = None,
                 settings: Optional[AppSettings] = None, recorder=None, load=True) -> Harness:
    from ui.controller import ChatController
    from ui.main_window import MainWindow

    home = tmp_path / "home"
    monkeypatch.setenv("GEMMA4_MAC_HOME", str(home))
    backend = backend or FakeBackend()
    engine = Engine(backend)
    window = MainWindow()
    qtbot.addWidget(window)
    window.resize(1100, 760)
    history = HistoryStore(home / "history.sqlite3", home / "attachments")
    controller = ChatController(window, engine, history, AttachmentStore(home / "attachments"),
                                settings or AppSettings(), settings_path=home / "settings.json", recorder=recorder,
                                models_root=home / "models")
    harness = Harness(qtbot, window, controller, backend, engine, history, home)
    controller.confirm = lambda title, text: harness.questions.append(title) or True
    controller.choose_save_path = lambda name, fmt: str(tmp_path / name)
    window.show()
    if load:
        engine.load_model(str(home / "models" / "fake"))
        harness.wait_model()
    return harness


@pytest.fixture
def harness(qtbot, tmp_path, monkeypatch):
    h = make_harness(qtbot, tmp_path, monkeypatch)
    yield h
    h.controller.shutdown()
    h.history.close()


@pytest.fixture
def harness_factory(qtbot, tmp_path, monkeypatch):
    made = []

    def make(**kwargs) -> Harness:
        h = make_harness(qtbot, tmp_path, monkeypatch, **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        h.controller.shutdown()
        h.history.close()


@contextmanager
def xvfb_display(size: str = "1280x800x24") -> Iterator[str]:
    """A private Xvfb server for the duration; yields its DISPLAY (":N"). Fails with what to install."""
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: run `make system-deps` (scripts/install_system_deps.sh).")
    read, write = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", size, "-nolisten", "tcp"],
                              pass_fds=[write], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    number, deadline = b"", time.monotonic() + 20
    while not number.endswith(b"\n") and time.monotonic() < deadline:
        chunk = os.read(read, 16)
        if not chunk:
            break
        number += chunk
    os.close(read)
    try:
        if not number.strip():
            pytest.fail("Xvfb did not start (no display number reported).")
        yield f":{number.decode().strip()}"
    finally:
        server.terminate()
        server.wait(timeout=10)
