"""The global quick-ask hotkey: parsing strings like "ctrl+alt+space", and the backend protocol.

The backends (Carbon on macOS, pynput on Linux/X11, a manual one for tests) are in hotkey_backends.py;
the Qt object that delivers presses on the window's thread is `ui.global_hotkey.GlobalHotkey`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

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
