"""`GlobalHotkey`: the app's one global hotkey as a QObject whose `activated` signal always fires on the
Qt thread. A backend may call back on its own thread (pynput does), so presses go through a small bridge
with a queued connection."""

from __future__ import annotations

from typing import Optional

from PySide6.QtCore import QObject, Qt, Signal

from gemma4_mac.hotkey import Hotkey, HotkeyBackend, HotkeyUnavailable, parse_hotkey
from gemma4_mac.hotkey_backends import default_backend


class _Bridge(QObject):
    """Carries a backend's callback (any thread) onto the Qt thread through a queued signal."""

    fired = Signal()


class GlobalHotkey(QObject):
    """The app's one global hotkey. `activated` is emitted on the Qt thread each time it is pressed."""

    activated = Signal()

    def __init__(self, backend: Optional[HotkeyBackend] = None, parent: Optional[QObject] = None):
        super().__init__(parent)
        self._backend = backend
        self.hotkey: Optional[Hotkey] = None
        self._bridge = _Bridge()
        self._bridge.fired.connect(self.activated, Qt.QueuedConnection)

    @property
    def backend(self) -> HotkeyBackend:
        if self._backend is None:
            self._backend = default_backend()
        return self._backend

    def register(self, hotkey: "Hotkey | str") -> Hotkey:
        """Listen for `hotkey` (replacing the current one). Raises HotkeyError for a bad string and
        HotkeyUnavailable when the platform refuses; the current hotkey then stays as it was."""
        parsed = parse_hotkey(hotkey) if isinstance(hotkey, str) else hotkey
        backend = self.backend
        previous = self.hotkey
        backend.unregister()
        try:
            backend.register(parsed, self._bridge.fired.emit)
        except HotkeyUnavailable:
            if previous is not None:
                backend.register(previous, self._bridge.fired.emit)
            raise
        self.hotkey = parsed
        return parsed

    def unregister(self) -> None:
        """Stop listening (idempotent)."""
        if self._backend is not None:
            self._backend.unregister()
        self.hotkey = None

    def close(self) -> None:
        """Unregister and let the backend end its threads (at quit)."""
        self.unregister()
        close = getattr(self._backend, "close", None)
        if callable(close):
            close()
