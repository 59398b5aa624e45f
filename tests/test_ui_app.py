"""The app as `gemma4-mac` (`python -m ui`) builds it: data folder, settings warnings, the scripted engine end to end."""

from __future__ import annotations

import json

from PySide6.QtCore import Qt

from ui.app import build_app, build_parser
from gemma4_mac.fake_backend import FakeBackend
from gemma4_mac.paths import app_data_dir


def test_parser_options():
    args = build_parser().parse_args(["--model", "/m", "--theme", "dark", "--fake-engine"])
    assert (args.model, args.theme, args.fake_engine) == ("/m", "dark", True)


def test_app_data_dir_override(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA4_MAC_HOME", str(tmp_path / "x"))
    assert app_data_dir() == tmp_path / "x" and (tmp_path / "x").is_dir()
    monkeypatch.delenv("GEMMA4_MAC_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if not __import__("sys").platform == "darwin":
        assert app_data_dir(create=False) == tmp_path / "xdg" / "gemma4-mac"


def test_build_app_with_broken_settings_shows_a_warning_and_answers(qtbot, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "settings.json").write_text("{broken")
    monkeypatch.setenv("GEMMA4_MAC_HOME", str(home))
    app, window, controller = build_app(["--model", str(tmp_path / "m"), "--theme", "dark"],
                                        backend=FakeBackend())
    qtbot.addWidget(window)
    try:
        assert "could not be read" in window.banner.label.text()
        assert controller.theme.palette.dark
        assert controller.settings.model_path == str(tmp_path / "m")
        window.show()
        controller.start()
        qtbot.waitUntil(lambda: controller.model_info is not None, timeout=10_000)
        window.composer.edit.setPlainText("Hello")
        qtbot.keyClick(window.composer.edit, Qt.Key_Return)
        qtbot.waitUntil(lambda: controller.stream is None and len(window.transcript.messages) == 2, timeout=10_000)
        assert (home / "history.sqlite3").is_file()
        controller.set_thinking(True)
        assert json.loads((home / "settings.json").read_text())["thinking"] is True  # rewritten, now valid
    finally:
        controller.shutdown()
        controller.history.close()
        controller.theme.set_preference("light")
