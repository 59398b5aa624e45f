"""macOS glue behind small seams: the Carbon hotkey, the Dock icon (activation policy), activation.

Carbon's RegisterEventHotKey is the one global-hotkey API that needs no Accessibility permission.
pyobjc does not wrap HIToolbox's event functions, so they are called through ctypes; Qt's Cocoa
event loop dispatches the hot-key events to the application event target on the main thread.
Everything here is a no-op (or raises HotkeyUnavailable) on other platforms.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import sys
from typing import Callable, Optional

from .hotkey import Hotkey, HotkeyUnavailable

_NO_ERR = 0
_EVENT_NOT_HANDLED = -9874  # eventNotHandledErr: let other handlers see hot keys that are not ours
_HOTKEY_EXISTS = -9878  # eventHotKeyExistsErr: another app holds this chord
_HOTKEY_INVALID = -9879  # eventHotKeyInvalidErr
_K_EVENT_HOTKEY_PRESSED = 5


def _fourcc(code: bytes) -> int:
    return int.from_bytes(code, "big")


_K_EVENT_CLASS_KEYBOARD = _fourcc(b"keyb")
_K_EVENT_PARAM_DIRECT_OBJECT = _fourcc(b"----")
_TYPE_EVENT_HOTKEY_ID = _fourcc(b"hkid")
_SIGNATURE = _fourcc(b"GmQa")
_ids = itertools.count(1)


class _EventTypeSpec(ctypes.Structure):
    _fields_ = [("eventClass", ctypes.c_uint32), ("eventKind", ctypes.c_uint32)]


class _EventHotKeyID(ctypes.Structure):
    _fields_ = [("signature", ctypes.c_uint32), ("id", ctypes.c_uint32)]


_HANDLER = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


def _carbon() -> ctypes.CDLL:
    path = ctypes.util.find_library("Carbon") or "/System/Library/Frameworks/Carbon.framework/Carbon"
    try:
        lib = ctypes.CDLL(path)
    except OSError as error:
        raise HotkeyUnavailable(f"The Carbon framework could not be loaded ({error}).") from error
    lib.GetApplicationEventTarget.restype = ctypes.c_void_p
    lib.GetApplicationEventTarget.argtypes = []
    lib.InstallEventHandler.restype = ctypes.c_int32
    lib.InstallEventHandler.argtypes = [ctypes.c_void_p, _HANDLER, ctypes.c_ulong, ctypes.POINTER(_EventTypeSpec),
                                        ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.RemoveEventHandler.restype = ctypes.c_int32
    lib.RemoveEventHandler.argtypes = [ctypes.c_void_p]
    lib.RegisterEventHotKey.restype = ctypes.c_int32
    lib.RegisterEventHotKey.argtypes = [ctypes.c_uint32, ctypes.c_uint32, _EventHotKeyID, ctypes.c_void_p,
                                        ctypes.c_uint32, ctypes.POINTER(ctypes.c_void_p)]
    lib.UnregisterEventHotKey.restype = ctypes.c_int32
    lib.UnregisterEventHotKey.argtypes = [ctypes.c_void_p]
    lib.GetEventParameter.restype = ctypes.c_int32
    lib.GetEventParameter.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p,
                                      ctypes.c_ulong, ctypes.c_void_p, ctypes.c_void_p]
    return lib


class CarbonHotkeyBackend:
    """RegisterEventHotKey on the application event target; the callback runs on the main thread."""

    name = "carbon"

    def __init__(self):
        if sys.platform != "darwin":
            raise HotkeyUnavailable("The Carbon hotkey backend works on macOS only.")
        self._lib = _carbon()
        self._handler_ref = ctypes.c_void_p()
        self._hotkey_ref = ctypes.c_void_p()
        self._hotkey_id = 0
        self._callback: Optional[Callable[[], None]] = None
        self._handler = _HANDLER(self._on_event)  # kept referenced: Carbon holds a raw pointer to it

    def _on_event(self, _next_handler, event, _user_data) -> int:
        found = _EventHotKeyID()
        status = self._lib.GetEventParameter(event, _K_EVENT_PARAM_DIRECT_OBJECT, _TYPE_EVENT_HOTKEY_ID, None,
                                             ctypes.sizeof(found), None, ctypes.byref(found))
        if status != _NO_ERR or found.signature != _SIGNATURE or found.id != self._hotkey_id:
            return _EVENT_NOT_HANDLED
        if self._callback is not None:
            self._callback()
        return _NO_ERR

    def register(self, hotkey: Hotkey, callback: Callable[[], None]) -> None:
        self.unregister()
        target = self._lib.GetApplicationEventTarget()
        if not self._handler_ref:
            spec = _EventTypeSpec(_K_EVENT_CLASS_KEYBOARD, _K_EVENT_HOTKEY_PRESSED)
            status = self._lib.InstallEventHandler(target, self._handler, 1, ctypes.byref(spec), None,
                                                   ctypes.byref(self._handler_ref))
            if status != _NO_ERR:
                raise HotkeyUnavailable(f"macOS refused the hotkey handler (OSStatus {status}).")
        code, modifiers = hotkey.carbon_codes()
        self._hotkey_id = next(_ids)
        hotkey_id = _EventHotKeyID(_SIGNATURE, self._hotkey_id)
        status = self._lib.RegisterEventHotKey(code, modifiers, hotkey_id, target, 0, ctypes.byref(self._hotkey_ref))
        if status == _HOTKEY_EXISTS:
            raise HotkeyUnavailable(f"{hotkey.display(True)} is already used by another app; choose another "
                                    "hotkey in Settings.")
        if status != _NO_ERR:
            raise HotkeyUnavailable(f"macOS refused the hotkey {hotkey.display(True)} (OSStatus {status}).")
        self._callback = callback

    def unregister(self) -> None:
        if self._hotkey_ref:
            self._lib.UnregisterEventHotKey(self._hotkey_ref)
            self._hotkey_ref = ctypes.c_void_p()
        self._callback = None


class MacIntegrationError(RuntimeError):
    """A macOS-only feature that could not be applied; the message names what to install."""


def _appkit():
    try:
        import AppKit
    except ImportError as error:
        raise MacIntegrationError("The Dock and activation settings need pyobjc on macOS: "
                                  "pip install pyobjc-framework-Cocoa") from error
    return AppKit


def set_dock_icon_visible(visible: bool) -> bool:
    """Show or hide the Dock icon (activation policy Regular or Accessory). False off macOS."""
    if sys.platform != "darwin":
        return False
    appkit = _appkit()
    policy = (appkit.NSApplicationActivationPolicyRegular if visible
              else appkit.NSApplicationActivationPolicyAccessory)
    appkit.NSApplication.sharedApplication().setActivationPolicy_(policy)
    return True


def activate_app() -> bool:
    """Bring this app to the front (a menu-bar-only app is not active when its hotkey fires)."""
    if sys.platform != "darwin":
        return False
    _appkit().NSApplication.sharedApplication().activateIgnoringOtherApps_(True)
    return True
