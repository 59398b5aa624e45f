"""The PySide6 window, menu-bar item and quick-ask panel; they talk to the model only through the engine."""

from .qt_signal_fix import apply as _guard_signal_emit

_guard_signal_emit()  # PySide6 6.12 drops a reference to True on every emit; see qt_signal_fix
