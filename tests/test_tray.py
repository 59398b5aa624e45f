"""The menu-bar item: its menu, the model and memory lines, the Dock option, quitting, files opened
on the Dock icon, and an app that keeps working where no system tray exists."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QCoreApplication, QEvent, Qt
from PySide6.QtGui import QColor, QFileOpenEvent, QGuiApplication
from PySide6.QtWidgets import QSystemTrayIcon

from gemma4_mac import macos
from gemma4_mac.hotkey import HotkeyUnavailable, default_hotkey
from gemma4_mac.hotkey_backends import ManualHotkeyBackend
from gemma4_mac.settings import AppSettings
from tests.ui_support import TIMEOUT, make_harness
from ui.tray import TRAY_SIZE, install_menu_bar, tray_icon, tray_template_image


@pytest.fixture
def build(qtbot, tmp_path, monkeypatch):
    made = []

    def make(settings=None, **kwargs):
        harness = make_harness(qtbot, tmp_path, monkeypatch, settings=settings)
        kwargs.setdefault("hotkey_backend", ManualHotkeyBackend())
        quits = []
        bar = install_menu_bar(QGuiApplication.instance(), harness.window, harness.controller,
                               quit=lambda: quits.append(True), **kwargs)
        qtbot.addWidget(bar.panel)
        made.append((harness, bar))
        return harness, bar, quits

    yield make
    for harness, bar in made:
        bar.uninstall()
        harness.controller.shutdown()
        harness.history.close()


def visible_texts(menu):
    return [a.text() for a in menu.actions() if a.isVisible() and not a.isSeparator()]


def test_menu_lists_quick_ask_window_model_memory_and_quit(build, qtbot):
    harness, bar, quits = build(tray_available=True)
    assert bar.tray.tray is not None and bar.tray.tray.isVisible()
    assert bar.tray.tray.contextMenu() is bar.tray.menu
    texts = visible_texts(bar.tray.menu)
    assert texts[0] == f"Quick Ask\t{default_hotkey().display()}"
    assert texts[1:3] == ["Open Window", "Model: Fake Gemma"] and texts[-1] == "Quit Gemma"
    assert not bar.tray.memory_action.isEnabled() and not bar.tray.model_action.isEnabled()
    # the peak memory of the last answer appears once there is one
    harness.type_and_send("Hello")
    qtbot.waitUntil(bar.tray.memory_action.isVisible, timeout=TIMEOUT)
    assert bar.tray.memory_action.text() == "Memory: 3.0 GB peak while answering"
    bar.tray.quick_ask_action.trigger()
    assert bar.panel.isVisible()
    harness.window.hide()
    bar.tray.open_window_action.trigger()
    assert harness.window.isVisible()
    bar.tray.quit_action.trigger()
    assert quits == [True]


def test_model_loading_and_failure_show_in_the_menu(build, qtbot):
    harness, bar, _ = build(tray_available=True)
    harness.engine.load_model(None)
    qtbot.waitUntil(lambda: "Starter" in bar.tray.model_action.text(), timeout=TIMEOUT)
    bar.tray.set_loading("/models/gemma-4-e2b")
    assert bar.tray.model_action.text() == "Loading gemma-4-e2b…" and not bar.tray.memory_action.isVisible()
    bar.tray.set_failed("weights are damaged")
    assert "could not be loaded" in bar.tray.model_action.text()
    bar.tray.set_model({"name": "Gemma 4 E2B", "size_bytes": 3 * 1024 ** 3})
    assert bar.tray.memory_action.text() == "Memory: 3.0 GB weights"


def test_with_a_tray_closing_the_window_keeps_the_app_and_engine(build, qtbot):
    harness, bar, _ = build(tray_available=True)
    assert not QGuiApplication.instance().quitOnLastWindowClosed()
    harness.window.close()
    assert harness.engine.worker.running
    bar.hotkey.backend.press()
    qtbot.waitUntil(bar.panel.isVisible, timeout=TIMEOUT)
    bar.panel.input.setText("Still there?")
    qtbot.keyClick(bar.panel.input, Qt.Key_Return)
    qtbot.waitUntil(lambda: not bar.quick_ask.streaming, timeout=TIMEOUT)
    assert "Still there?" in bar.panel.answer


def test_without_a_system_tray_the_hotkey_still_opens_the_panel(build, qtbot, monkeypatch):
    monkeypatch.setattr(QSystemTrayIcon, "isSystemTrayAvailable", staticmethod(lambda: False))
    harness, bar, _ = build(menu_bar_only=True)
    assert bar.tray.available is False and bar.tray.tray is None
    assert QGuiApplication.instance().quitOnLastWindowClosed()  # the window is the app here
    assert any("needs a menu bar item" in p for p in bar.problems)
    banner = harness.window.banner
    assert banner.isVisible() and "menu bar item" in banner.label.text() and banner.property("level") == "warning"
    bar.hotkey.backend.press()
    qtbot.waitUntil(bar.panel.isVisible, timeout=TIMEOUT)
    bar.panel.input.setText("No tray here")
    qtbot.keyClick(bar.panel.input, Qt.Key_Return)
    qtbot.waitUntil(lambda: not bar.quick_ask.streaming, timeout=TIMEOUT)
    assert "No tray here" in bar.panel.answer
    bar.quick_ask.continue_in_window()
    assert harness.controller.conversation_id == bar.quick_ask.conversation_id


class RefusingBackend(ManualHotkeyBackend):
    def register(self, hotkey, callback):
        raise HotkeyUnavailable("Global hotkeys need an X11 display and DISPLAY is not set.")


def test_an_unavailable_hotkey_is_reported_and_the_menu_still_works(build):
    harness, bar, _ = build(tray_available=True, hotkey_backend=RefusingBackend())
    assert bar.hotkey.hotkey is None
    assert any("hotkey is off" in p and "X11" in p for p in bar.problems)
    assert bar.tray.quick_ask_action.text() == "Quick Ask"
    bar.tray.quick_ask_action.trigger()
    assert bar.panel.isVisible()


def test_a_bad_hotkey_in_settings_falls_back_to_the_default(build):
    settings = AppSettings()
    settings.hotkey = "shift+g"  # what a settings field would hold; the default field set has none yet
    harness, bar, _ = build(settings=settings, tray_available=False)
    assert bar.hotkey.hotkey == default_hotkey()
    assert any("cannot be used" in p for p in bar.problems)


def test_menu_bar_only_hides_the_dock_icon(build, monkeypatch):
    calls = []
    monkeypatch.setattr(macos, "set_dock_icon_visible", lambda visible: calls.append(visible) or True)
    harness, bar, _ = build(tray_available=True, menu_bar_only=True)
    assert calls == [False] and not bar.tray.dock_action.isChecked()
    bar.tray.dock_action.setVisible(True)
    bar.tray.dock_action.trigger()  # "Show in Dock" from the menu
    assert calls == [False, True] and bar.tray.dock_action.isChecked()


def test_files_opened_on_the_dock_icon_are_attached(build, tmp_path):
    harness, bar, _ = build(tray_available=True, file_open=True)
    note = tmp_path / "notes.md"
    note.write_text("# Notes\nSome text.", encoding="utf-8")
    harness.window.hide()
    event = QFileOpenEvent(str(note))
    assert event.type() == QEvent.FileOpen
    QCoreApplication.sendEvent(QGuiApplication.instance(), event)
    assert harness.window.isVisible()
    assert [a.name for a in harness.controller.pending] == ["notes.md"]


def test_template_icon_is_a_black_mask_at_menu_bar_sizes():
    icon = tray_icon(mac=True)
    assert icon.isMask()
    sizes = {(s.width(), s.height()) for s in icon.availableSizes()}
    assert {(TRAY_SIZE, TRAY_SIZE), (2 * TRAY_SIZE, 2 * TRAY_SIZE)} <= sizes
    image = tray_template_image(44)
    colours = {image.pixelColor(x, y).rgb() & 0xFFFFFF for x in range(44) for y in range(44)
               if image.pixelColor(x, y).alpha() > 0}
    assert colours == {0}
    assert image.pixelColor(22, 22).alpha() == 255 and image.pixelColor(1, 1).alpha() == 0
    assert not tray_icon(mac=False).isMask() and tray_icon(mac=False).pixmap(22).toImage().pixelColor(
        11, 11) != QColor(0, 0, 0)


def test_hotkey_changed_in_settings_is_registered_at_once(build):
    harness, bar, _ = build(tray_available=False)
    backend = bar.hotkey._backend
    harness.controller.apply_settings(AppSettings(hotkey="ctrl+shift+g"))
    assert str(backend.hotkey) == "ctrl+shift+g"
    harness.controller.apply_settings(AppSettings(hotkey="shift+g"))  # no ctrl/alt/cmd: refused, the old stays
    assert str(backend.hotkey) == "ctrl+shift+g" and "cannot be used" in harness.window.banner.label.text()
    harness.controller.apply_settings(AppSettings(hotkey=""))  # empty: the platform's default
    assert backend.hotkey == default_hotkey()
