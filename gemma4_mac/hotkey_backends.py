"""Hotkey backends: one platform's way to hear a global chord (Carbon on macOS, pynput on Linux/X11),
and `ManualHotkeyBackend`, driven by hand in tests and where a platform has none."""

from __future__ import annotations

import os
import sys
import threading
from typing import Callable, Optional

from .hotkey import Hotkey, HotkeyBackend, HotkeyUnavailable


class ManualHotkeyBackend:
    """A backend driven by hand (tests, and platforms without global hotkeys): `press()` fires it."""

    name = "manual"

    def __init__(self):
        self.hotkey: Optional[Hotkey] = None
        self._callback: Optional[Callable[[], None]] = None

    def register(self, hotkey: Hotkey, callback: Callable[[], None]) -> None:
        self.hotkey, self._callback = hotkey, callback

    def unregister(self) -> None:
        self.hotkey, self._callback = None, None

    def press(self, from_thread: bool = True) -> bool:
        """Fire the registered hotkey (from a separate thread, as pynput does); False when none is set."""
        callback = self._callback
        if callback is None:
            return False
        if from_thread:
            worker = threading.Thread(target=callback, name="manual-hotkey")
            worker.start()
            worker.join()
        else:
            callback()
        return True


class PynputBackend:
    """Linux/X11 through pynput: one keyboard listener (X RECORD extension, its own thread) for the
    backend's lifetime, matching whichever chord is registered now.

    The listener is never restarted to change the chord: on X11 a stopped pynput listener only ends
    at the next key event, so a restart would leave the old one running until someone types.
    """

    name = "pynput"

    def __init__(self):
        self._listener = None
        self._matcher = None  # pynput.keyboard.HotKey for the current chord, or None
        self._lock = threading.Lock()

    def register(self, hotkey: Hotkey, callback: Callable[[], None]) -> None:
        if not os.environ.get("DISPLAY"):
            hint = " (Wayland: add a system shortcut instead)" if os.environ.get("WAYLAND_DISPLAY") else ""
            raise HotkeyUnavailable("Global hotkeys need an X11 display and DISPLAY is not set" + hint + ".")
        try:
            from pynput import keyboard
        except ImportError as error:  # pynput reports a missing X connection as ImportError too
            raise HotkeyUnavailable(f"Global hotkeys are unavailable: {error}. "
                                    "Install pynput (pip install pynput) and run under X11.") from error
        matcher = keyboard.HotKey(keyboard.HotKey.parse(hotkey.pynput_format()), callback)
        with self._lock:
            self._matcher = matcher
        if self._listener is None or not self._listener.is_alive():
            listener = keyboard.Listener(on_press=self._on_press, on_release=self._on_release)
            listener.daemon = True
            listener.start()
            listener.wait()  # ready: a chord pressed after register() returns is heard
            self._listener = listener

    def _on_press(self, key) -> None:
        with self._lock:
            matcher, listener = self._matcher, self._listener
        if matcher is not None and listener is not None:
            matcher.press(listener.canonical(key))

    def _on_release(self, key) -> None:
        with self._lock:
            matcher, listener = self._matcher, self._listener
        if matcher is not None and listener is not None:
            matcher.release(listener.canonical(key))

    def unregister(self) -> None:
        with self._lock:
            self._matcher = None

    def close(self, timeout: float = 0.5) -> bool:
        """Stop the listener thread; True when it has ended (on X11 it may wait for the next key event)."""
        self.unregister()
        listener, self._listener = self._listener, None
        if listener is None:
            return True
        listener.stop()
        listener.join(timeout)
        return not listener.is_alive()

    @property
    def listening(self) -> bool:
        return self._listener is not None and self._listener.is_alive()


def default_backend() -> HotkeyBackend:
    """The backend for this platform; raises HotkeyUnavailable where there is none."""
    if sys.platform == "darwin":
        from .macos import CarbonHotkeyBackend

        return CarbonHotkeyBackend()
    if sys.platform.startswith("linux"):
        return PynputBackend()
    raise HotkeyUnavailable(f"Global hotkeys are not supported on {sys.platform}.")
