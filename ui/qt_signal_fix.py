"""A guard against a reference-count bug in PySide6 6.12's `SignalInstance.emit` (Python below 3.12).

That `emit` returns `True` without taking a reference, so each call from Python drops one from the
`True` singleton; after a few hundred signals (a streamed answer) the interpreter aborts with
"Fatal Python error: bool_dealloc". `apply()` measures the loss once and, where it exists, wraps
`emit` to give the reference back. Where PySide is fixed, nothing is changed.
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal, SignalInstance

_PROBES = 64
_applied = False


class _Probe(QObject):
    ping = Signal()


def _give_back(count: int) -> None:
    for _ in range(count):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))


def emit_loses_references() -> bool:
    """True when `emit` drops a reference to `True` (the loss of the probe itself is given back)."""
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(_PROBES):
        probe.ping.emit()
    lost = before - sys.getrefcount(True)
    _give_back(max(0, lost))
    return lost >= _PROBES // 2  # other threads may take or drop a few references meanwhile


def apply() -> bool:
    """Wrap `SignalInstance.emit` when this PySide needs it (idempotent); True once wrapped."""
    global _applied
    if _applied:
        return True
    if sys.version_info >= (3, 12) or not emit_loses_references():
        return False  # bools are immortal from 3.12 on, and a fixed PySide loses nothing
    original = SignalInstance.emit

    def emit(self, *args):
        result = original(self, *args)
        if result is True:
            _give_back(1)
        return result

    emit.__doc__ = original.__doc__
    SignalInstance.emit = emit
    _applied = True
    return True
