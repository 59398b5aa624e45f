"""Hotkey strings, the Qt-signal seam, and a real pynput hotkey sent with xdotool under Xvfb."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PySide6.QtCore import QThread
from PySide6.QtGui import QGuiApplication

from gemma4_mac.hotkey import (DEFAULT_HOTKEY_MAC, DEFAULT_HOTKEY_OTHER, MODIFIER_ORDER, _NAMED_KEYS, Hotkey,
                               HotkeyError, HotkeyUnavailable, default_hotkey, parse_hotkey)
from gemma4_mac.hotkey_backends import ManualHotkeyBackend, PynputBackend
from ui.global_hotkey import GlobalHotkey


@pytest.mark.parametrize("text, modifiers, key", [
    ("ctrl+alt+space", ("ctrl", "alt"), "space"),
    ("cmd+shift+g", ("shift", "cmd"), "g"),
    ("Option+Space", ("alt",), "space"),
    ("Control + Option + Return", ("ctrl", "alt"), "return"),
    ("⌃⌥Space", ("ctrl", "alt"), "space"),
    ("⌘⇧G", ("shift", "cmd"), "g"),
    ("shift+command+enter", ("shift", "cmd"), "return"),
    ("super+f5", ("cmd",), "f5"),
    ("f12", (), "f12"),
    ("ctrl+alt+,", ("ctrl", "alt"), "comma"),
    ("meta+alt+9", ("alt", "cmd"), "9"),
    ("alt+ctrl+Up", ("ctrl", "alt"), "up"),
])
def test_parse(text, modifiers, key):
    assert parse_hotkey(text) == Hotkey(modifiers, key)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("   ", "empty"),
    ("ctrl+alt", "only modifiers"),
    ("g", "needs ctrl, alt"),
    ("shift+g", "needs ctrl, alt"),
    ("ctrl+ctrl+g", "twice"),
    ("ctrl+a+b", "two keys"),
    ("ctrl+hyper+g", "not a key"),
    ("ctrl++g", "empty part"),
    ("cmd+space", "Spotlight"),
    ("ctrl+space", "input sources"),
    ("cmd+tab", "app switcher"),
])
def test_bad_hotkeys_say_what_is_wrong(text, message):
    with pytest.raises(HotkeyError, match=message):
        parse_hotkey(text)


def test_reserved_chords_can_be_allowed_explicitly():
    assert parse_hotkey("cmd+space", allow_reserved=True).reserved_by() == "Spotlight"


def test_formats_for_each_platform():
    h = parse_hotkey("ctrl+alt+space")
    assert h.display(mac=True) == "⌃⌥Space" and h.display(mac=False) == "Ctrl+Alt+Space"
    assert h.pynput_format() == "<ctrl>+<alt>+<space>" and h.xdotool_format() == "ctrl+alt+space"
    assert h.carbon_codes() == (0x31, 0x1000 | 0x0800)  # kVK_Space; controlKey | optionKey
    g = parse_hotkey("cmd+shift+g")
    assert g.display(mac=True) == "⇧⌘G" and g.display(mac=False) == "Shift+Super+G"
    assert g.pynput_format() == "<shift>+<cmd>+g" and g.xdotool_format() == "shift+super+g"
    assert g.carbon_codes() == (0x05, 0x0100 | 0x0200)  # kVK_ANSI_G; cmdKey | shiftKey
    assert parse_hotkey("alt+f5").carbon_codes() == (0x60, 0x0800)
    assert str(g) == "shift+cmd+g"


def test_defaults_do_not_clash_with_spotlight():
    mac, other = default_hotkey("darwin"), default_hotkey("linux")
    assert str(mac) == DEFAULT_HOTKEY_MAC == "alt+space" and str(other) == DEFAULT_HOTKEY_OTHER
    assert mac.reserved_by() is None and other.reserved_by() is None
    assert mac != parse_hotkey("cmd+space", allow_reserved=True)


_KEYS = sorted(_NAMED_KEYS) + list("abcdefghijklmnopqrstuvwxyz0123456789") + [f"f{i}" for i in range(1, 21)]


@settings(max_examples=150, deadline=None)
@given(st.sets(st.sampled_from(MODIFIER_ORDER), min_size=1), st.sampled_from(_KEYS))
def test_every_form_round_trips(modifiers, key):
    if not modifiers & {"ctrl", "alt", "cmd"}:
        modifiers = modifiers | {"ctrl"}
    hotkey = Hotkey(tuple(m for m in MODIFIER_ORDER if m in modifiers), key)
    if hotkey.reserved_by():
        return
    assert parse_hotkey(str(hotkey)) == hotkey
    assert parse_hotkey(hotkey.display(mac=True)) == hotkey
    assert parse_hotkey(hotkey.display(mac=False)) == hotkey
    code, mask = hotkey.carbon_codes()
    assert 0 <= code < 0x80 and mask and not mask & ~0x1B00


def test_seam_delivers_on_the_qt_thread(qtbot):
    backend = ManualHotkeyBackend()
    hotkey = GlobalHotkey(backend)
    assert hotkey.register("ctrl+alt+space") == parse_hotkey("ctrl+alt+space")
    assert backend.hotkey == parse_hotkey("ctrl+alt+space")
    threads = []
    hotkey.activated.connect(lambda: threads.append(QThread.currentThread()))
    with qtbot.waitSignal(hotkey.activated, timeout=2000):
        assert backend.press(from_thread=True)
    assert threads == [QGuiApplication.instance().thread()]
    hotkey.unregister()
    assert hotkey.hotkey is None and not backend.press()


class RefusingBackend(ManualHotkeyBackend):
    def register(self, hotkey, callback):
        if hotkey.key == "g":
            raise HotkeyUnavailable("⇧⌘G is already used by another app")
        super().register(hotkey, callback)


def test_a_refused_or_bad_hotkey_keeps_the_current_one(qtbot):
    backend = RefusingBackend()
    hotkey = GlobalHotkey(backend)
    hotkey.register("ctrl+alt+space")
    with pytest.raises(HotkeyUnavailable, match="another app"):
        hotkey.register("cmd+shift+g")
    with pytest.raises(HotkeyError):
        hotkey.register("shift+q")
    assert hotkey.hotkey == backend.hotkey == parse_hotkey("ctrl+alt+space")
    with qtbot.waitSignal(hotkey.activated, timeout=2000):
        backend.press()


def test_pynput_needs_an_x_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    with pytest.raises(HotkeyUnavailable, match="X11 display.*Wayland"):
        PynputBackend().register(parse_hotkey("ctrl+alt+space"), lambda: None)


# a real X server: pynput listens through the RECORD extension, xdotool presses the chord (XTEST)

@pytest.fixture(scope="module")
def xvfb():
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: run `make system-deps` "
                    "(scripts/install_system_deps.sh).")
    read, write = os.pipe()
    command = ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"]
    server = subprocess.Popen(command, pass_fds=[write], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    number = b""
    deadline = time.monotonic() + 20
    while not number.endswith(b"\n") and time.monotonic() < deadline:
        chunk = os.read(read, 16)
        if not chunk:
            break
        number += chunk
    os.close(read)
    if not number.strip():
        server.kill()
        pytest.fail("Xvfb did not start (no display number reported).")
    yield f":{number.decode().strip()}"
    server.terminate()
    server.wait(timeout=10)


def press(display: str, hotkey: str) -> None:
    subprocess.run(["xdotool", "key", "--clearmodifiers", parse_hotkey(hotkey).xdotool_format()],
                   env={**os.environ, "DISPLAY": display}, check=True, timeout=10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pynput's X11 backend is the Linux one")
def test_real_hotkey_under_xvfb_opens_the_panel(xvfb, qtbot, tmp_path, monkeypatch):
    from tests.ui_support import TIMEOUT, make_harness
    from ui.tray import install_menu_bar

    harness = make_harness(qtbot, tmp_path, monkeypatch)
    monkeypatch.setenv("DISPLAY", xvfb)
    backend = PynputBackend()
    bar = install_menu_bar(QGuiApplication.instance(), harness.window, harness.controller, hotkey_backend=backend,
                           tray_available=False, hotkey="ctrl+alt+space")
    try:
        assert bar.problems == [] and bar.hotkey.hotkey == parse_hotkey("ctrl+alt+space")
        assert not bar.panel.isVisible()
        press(xvfb, "ctrl+alt+space")
        qtbot.waitUntil(bar.panel.isVisible, timeout=TIMEOUT)
        bar.panel.dismiss()
        # a new chord replaces the old one: only cmd+shift+g (Super+Shift+G on X11) opens it now
        bar.set_hotkey("cmd+shift+g")
        press(xvfb, "ctrl+alt+space")
        qtbot.wait(400)
        assert not bar.panel.isVisible()
        press(xvfb, "cmd+shift+g")
        qtbot.waitUntil(bar.panel.isVisible, timeout=TIMEOUT)
        assert bar.tray.quick_ask_action.text().endswith("Shift+Super+G")
        # one listener thread served both chords
        assert backend.listening and len(listeners()) == 1
    finally:
        running = listeners()
        bar.uninstall()
        harness.controller.shutdown()
        harness.history.close()
    press(xvfb, "ctrl+alt+space")  # an X11 listener ends at the next key event after stop()
    for thread in running:
        thread.join(timeout=5)
    assert listeners() == [] and not backend.listening


def listeners() -> list[threading.Thread]:
    from pynput import keyboard

    return [t for t in threading.enumerate() if isinstance(t, keyboard.Listener) and t.is_alive()]
