"""Words for the progress of reading a prompt, shared by the window, Quick Ask and the command line.

Reading (prefill) reports after each chunk: `generate.GenerationEvent("progress", progress=(read, total))`.
Short prompts are read in a blink; only one with at least READING_SHOWN_FROM tokens still to read gets
a bar, so a quick question never flashes one.
"""

from __future__ import annotations

READING_SHOWN_FROM = 1024  # tokens left to read when reading starts


class ReadingProgress:
    """Follows the progress events of one answer: whether to show them, and what to say."""

    def __init__(self, what: str = "prompt"):
        self.what = what
        self.start: int | None = None  # tokens already in the cache when reading began
        self.read = 0
        self.total = 0

    def update(self, read: int, total: int) -> bool:
        """Take one progress event; True when it should be shown."""
        if self.start is None:
            self.start = read
        self.read, self.total = read, total
        return self.shown

    @property
    def shown(self) -> bool:
        return self.start is not None and self.total - self.start >= READING_SHOWN_FROM

    @property
    def done(self) -> bool:
        return self.start is not None and self.read >= self.total

    @property
    def fraction(self) -> float:
        return self.read / self.total if self.total else 0.0

    def text(self) -> str:
        """"Reading document… 1,840 of 3,287 tokens"."""
        return reading_text(self.what, self.read, self.total)


def reading_text(what: str, read: int, total: int) -> str:
    """What is being read and how far: "Reading document… 1,840 of 3,287 tokens"."""
    return f"Reading {what}… {read:,} of {total:,} tokens"


def text_bar(fraction: float, width: int = 24) -> str:
    """A progress bar for a terminal: "[#########...............]"."""
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"
