"""Progress reports and cancellation shared by every stage of a conversion."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from .errors import ConversionCancelled


@dataclass(frozen=True)
class ConversionProgress:
    """One progress report.

    stage: "download", "unpack" (the starter's packaged weights), "convert", "tokenizer", "finalize" or
    "done".
    fraction: 0..1 within the stage. done/total: bytes (download: files) so far and in all.
    item: the file or tensor being worked on; message: a short sentence for a status line.
    """

    stage: str
    fraction: float
    done: int = 0
    total: int = 0
    item: str = ""
    message: str = ""


ProgressCallback = Callable[[ConversionProgress], None]


class Reporter:
    """Sends progress to the caller's callback and raises ConversionCancelled once `cancel` is set."""

    def __init__(self, callback: ProgressCallback | None, cancel: threading.Event | None):
        self.callback, self.cancel = callback, cancel

    def check_cancel(self) -> None:
        """Raise ConversionCancelled when the caller asked to stop."""
        if self.cancel is not None and self.cancel.is_set():
            raise ConversionCancelled("Conversion cancelled; nothing was written to the destination.")

    def report(self, stage: str, done: int = 0, total: int = 0, item: str = "", message: str = "") -> None:
        """Report progress (and honour cancellation)."""
        self.check_cancel()
        if self.callback is not None:
            fraction = min(1.0, done / total) if total else (1.0 if stage == "done" else 0.0)
            self.callback(ConversionProgress(stage, fraction, done, total, item, message))
