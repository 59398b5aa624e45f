"""The global quick-ask hotkey: parsing strings like "ctrl+alt+space", and a seam to the platform.

`GlobalHotkey` is a QObject whose `activated` signal always fires on the Qt thread: a backend may
call back on its own thread (pynput does), so it goes through a small bridge with a queued
connection. Backends: Carbon's RegisterEventHotKey on macOS (`gemma4_mac.macos`, no Accessibility
prompt), pynput on Linux/X11, and `ManualHotkeyBackend` for tests.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from PySide6.QtCore import QObject, Qt, Signal

MODIFIER_ORDER = ("ctrl", "alt", "shift", "cmd")
MODIFIER_ALIASES = {
    "ctrl": "ctrl", "control": "ctrl", "ctl": "ctrl", "⌃": "ctrl", "^": "ctrl",
    "alt": "alt", "option": "alt", "opt": "alt", "⌥": "alt",
    "shift": "shift", "⇧": "shift",
    "cmd": "cmd", "command": "cmd", "meta": "cmd", "super": "cmd", "win": "cmd", "⌘": "cmd",
}
# canonical key name -> (macOS virtual key code, pynput token, X keysym for xdotool, symbol shown on a Mac)
_NAMED_KEYS: dict[str, tuple[int, str, str, str]] = {
    "space": (0x31, "<space>", "space", "Space"), "return": (0x24, "<enter>", "Return", "↩"),
    "tab": (0x30, "<tab>", "Tab", "⇥"), "escape": (0x35, "<esc>", "Escape", "⎋"),
    "backspace": (0x33, "<backspace>", "BackSpace", "⌫"), "up": (0x7E, "<up>", "Up", "↑"),
    "down": (0x7D, "<down>", "Down", "↓"), "left": (0x7B, "<left>", "Left", "←"),
    "right": (0x7C, "<right>", "Right", "→"),
    "comma": (0x2B, ",", "comma", ","), "period": (0x2F, ".", "period", "."), "slash": (0x2C, "/", "slash", "/"),
    "semicolon": (0x29, ";", "semicolon", ";"), "quote": (0x27, "'", "apostrophe", "'"),
    "backslash": (0x2A, "\\", "backslash", "\\"), "minus": (0x1B, "-", "minus", "-"),
    "equal": (0x18, "=", "equal", "="), "bracketleft": (0x21, "[", "bracketleft", "["),
    "bracketright": (0x1E, "]", "bracketright", "]"), "grave": (0x32, "`", "grave", "`"),
}
_KEY_ALIASES = {
    "enter": "return", "↩": "return", "esc": "escape", "delete": "backspace", "del": "backspace",
    ",": "comma", ".": "period", "/": "slash", ";": "semicolon", "'": "quote", "\\": "backslash",
    "-": "minus", "=": "equal", "[": "bracketleft", "]": "bracketright", "`": "grave",
    "↑": "up", "↓": "down", "←": "left", "→": "right", "⇥": "tab", "⎋": "escape", "⌫": "backspace",
}
_LETTER_CODES = dict(zip("asdfhgzxcv", (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09)))
_LETTER_CODES.update(dict(zip("bqweryt", (0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x11))))
_LETTER_CODES.update(dict(zip("oupilkjnm", (0x1F, 0x20, 0x23, 0x22, 0x25, 0x28, 0x26, 0x2D, 0x2E))))
_DIGIT_CODES = dict(zip("1234567890", (0x12, 0x13, 0x14, 0x15, 0x17, 0x16, 0x1A, 0x1C, 0x19, 0x1D)))
_FUNCTION_CODES = {1: 0x7A, 2: 0x78, 3: 0x63, 4: 0x76, 5: 0x60, 6: 0x61, 7: 0x62, 8: 0x64, 9: 0x65, 10: 0x6D,
                   11: 0x67, 12: 0x6F, 13: 0x69, 14: 0x6B, 15: 0x71, 16: 0x6A, 17: 0x40, 18: 0x4F, 19: 0x50,
                   20: 0x5A}
# Carbon modifier masks (HIToolbox Events.h: cmdKey, shiftKey, optionKey, controlKey)
CARBON_MODIFIERS = {"cmd": 1 << 8, "shift": 1 << 9, "alt": 1 << 11, "ctrl": 1 << 12}
_MAC_SYMBOLS = {"ctrl": "⌃", "alt": "⌥", "shift": "⇧", "cmd": "⌘"}
_OTHER_NAMES = {"ctrl": "Ctrl", "alt": "Alt", "shift": "Shift", "cmd": "Super"}
_XDOTOOL_MODIFIERS = {"ctrl": "ctrl", "alt": "alt", "shift": "shift", "cmd": "super"}
# Shortcuts macOS itself owns; registering one would break the system's (Spotlight is cmd+space).
RESERVED = {
    (("cmd",), "space"): "Spotlight", (("alt", "cmd"), "space"): "Finder search",
    (("cmd",), "tab"): "the app switcher", (("cmd",), "q"): "Quit", (("cmd",), "w"): "Close Window",
    (("ctrl",), "space"): "switching input sources", (("cmd",), "h"): "Hide",
}
DEFAULT_HOTKEY_MAC = "alt+space"  # Option-Space: free by default, and what Mac chat apps use
DEFAULT_HOTKEY_OTHER = "ctrl+alt+space"  # Alt+Space opens the window menu on Linux desktops


class HotkeyError(ValueError):
    """A hotkey string that cannot be used; the message says what to write instead."""


class HotkeyUnavailable(RuntimeError):
    """Global hotkeys cannot be registered here (no X server, Wayland, a key taken by another app)."""


@dataclass(frozen=True)
class Hotkey:
    """A key plus modifiers, in canonical form: modifiers ordered ctrl, alt, shift, cmd."""

    modifiers: tuple[str, ...]
    key: str

    def __str__(self) -> str:
        return "+".join((*self.modifiers, self.key))

    def display(self, mac: Optional[bool] = None) -> str:
        """How menus show it: "⌃⌥Space" on a Mac, "Ctrl+Alt+Space" elsewhere."""
        mac = sys.platform == "darwin" if mac is None else mac
        if mac:
            return "".join(_MAC_SYMBOLS[m] for m in self.modifiers) + _key_symbol(self.key)
        key = self.key.upper() if len(self.key) == 1 else self.key.capitalize()
        return "+".join([*(_OTHER_NAMES[m] for m in self.modifiers), key])

    def pynput_format(self) -> str:
        """The string pynput's GlobalHotKeys understands, e.g. "<ctrl>+<alt>+<space>"."""
        return "+".join([*(f"<{m}>" for m in self.modifiers), _key_entry(self.key)[1]])

    def carbon_codes(self) -> tuple[int, int]:
        """(virtual key code, modifier mask) for Carbon's RegisterEventHotKey."""
        mask = 0
        for m in self.modifiers:
            mask |= CARBON_MODIFIERS[m]
        return _key_entry(self.key)[0], mask

    def xdotool_format(self) -> str:
        """The chord as `xdotool key` spells it (used by tests to press it under Xvfb)."""
        return "+".join([*(_XDOTOOL_MODIFIERS[m] for m in self.modifiers), _key_entry(self.key)[2]])

    def reserved_by(self) -> Optional[str]:
        """What macOS uses this chord for, or None when it is free."""
        return RESERVED.get((self.modifiers, self.key))


def _key_entry(key: str) -> tuple[int, str, str, str]:
    if key in _NAMED_KEYS:
        return _NAMED_KEYS[key]
    if key in _LETTER_CODES:
        return _LETTER_CODES[key], key, key, key.upper()
    if key in _DIGIT_CODES:
        return _DIGIT_CODES[key], key, key, key
    if key.startswith("f") and key[1:].isdigit() and int(key[1:]) in _FUNCTION_CODES:
        return _FUNCTION_CODES[int(key[1:])], f"<{key}>", key.upper(), key.upper()
    raise HotkeyError(f"Unknown key {key!r}.")


def _key_symbol(key: str) -> str:
    return _key_entry(key)[3]


def _canonical_key(name: str) -> Optional[str]:
    name = _KEY_ALIASES.get(name, name)
    try:
        _key_entry(name)
    except HotkeyError:
        return None
    return name


def parse_hotkey(text: str, *, allow_reserved: bool = False) -> Hotkey:
    """Parse "ctrl+alt+space", "cmd+shift+g", "⌥Space"... into a Hotkey.

    Needs exactly one key and at least one of ctrl, alt or cmd (a function key may stand alone):
    a global hotkey without one would swallow ordinary typing everywhere.
    """
    if not isinstance(text, str) or not text.strip():
        raise HotkeyError("The hotkey is empty. Write it like ctrl+alt+space or cmd+shift+g.")
    spaced = text.strip().lower()
    for symbol in "⌃⌥⇧⌘":  # "⌥⌘G" style: split the symbols off into their own parts
        spaced = spaced.replace(symbol, f"{symbol}+")
    parts = [p.strip() for p in spaced.replace(" ", "").split("+")]
    if "" in parts and parts[-1] == "" and len(parts) > 1 and not text.strip().endswith("+"):
        parts = parts[:-1]
    if any(not p for p in parts):
        raise HotkeyError(f"{text!r} has an empty part; join keys with single plus signs, e.g. ctrl+alt+space.")
    modifiers: list[str] = []
    key: Optional[str] = None
    for part in parts:
        if part in MODIFIER_ALIASES:
            modifier = MODIFIER_ALIASES[part]
            if modifier in modifiers:
                raise HotkeyError(f"{text!r} names the {modifier} modifier twice.")
            modifiers.append(modifier)
            continue
        canonical = _canonical_key(part)
        if canonical is None:
            raise HotkeyError(f"{text!r}: {part!r} is not a key this app knows. Use a letter, a digit, space, "
                              "return, tab, escape, an arrow, f1–f20 or punctuation, plus modifiers "
                              "ctrl, alt (option), shift and cmd.")
        if key is not None:
            raise HotkeyError(f"{text!r} names two keys ({key} and {canonical}); a hotkey has one key "
                              "plus modifiers.")
        key = canonical
    if key is None:
        raise HotkeyError(f"{text!r} has only modifiers; add a key, e.g. {'+'.join(modifiers or ['ctrl'])}+space.")
    ordered = tuple(m for m in MODIFIER_ORDER if m in modifiers)
    if not set(ordered) & {"ctrl", "alt", "cmd"} and not key.startswith("f"):
        raise HotkeyError(f"{text!r} needs ctrl, alt (option) or cmd as well, or it would take over "
                          "normal typing.")
    hotkey = Hotkey(ordered, key)
    owner = hotkey.reserved_by()
    if owner and not allow_reserved:
        raise HotkeyError(f"{hotkey.display(True)} is used by macOS for {owner}; choose another, "
                          f"e.g. {parse_hotkey(DEFAULT_HOTKEY_MAC).display(True)}.")
    return hotkey


def default_hotkey(platform: Optional[str] = None) -> Hotkey:
    """The hotkey used when the settings name none (never Spotlight's cmd+space)."""
    platform = platform or sys.platform
    return parse_hotkey(DEFAULT_HOTKEY_MAC if platform == "darwin" else DEFAULT_HOTKEY_OTHER)


class HotkeyBackend(Protocol):
    """One platform's way to hear a global chord. `callback` may be called on any thread."""

    name: str

    def register(self, hotkey: Hotkey, callback: Callable[[], None]) -> None: ...

    def unregister(self) -> None: ...


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
