"""A model turn's events on the terminal: the answer to stdout; thoughts, notes and the reading progress of a
long prompt to stderr (shared by `ask` and `ask --mcp`)."""

from __future__ import annotations

import json
from typing import Iterable, TextIO

from .agent import StepResult


class ReadingLine:
    """The reading progress of a long prompt on stderr: one line rewritten in place on a terminal, a line
    per chunk otherwise; cleared when the answer starts."""

    def __init__(self, err: TextIO):
        from .progress import ReadingProgress

        self.err = err
        self.progress = ReadingProgress("prompt")
        self.terminal = bool(getattr(err, "isatty", lambda: False)())
        self.open = False

    def update(self, read: int, total: int) -> None:
        from .progress import text_bar

        if not self.progress.update(read, total):
            return
        line = f"{self.progress.text()} {text_bar(self.progress.fraction)}"
        self.err.write(f"\r{line}\033[K" if self.terminal else line + "\n")
        self.err.flush()
        self.open = self.terminal

    def close(self) -> None:
        if self.open:
            self.err.write("\r\033[K")
            self.err.flush()
            self.open = False


def print_events(events: Iterable, out: TextIO, err: TextIO, *, show_calls: bool = False) -> StepResult:
    """Print one turn's events as they come (`show_calls`: tool calls too, on stdout); returns the turn."""
    result = StepResult()
    in_thought = False
    reading = ReadingLine(err)
    for event in events:
        if event.kind == "progress":
            reading.update(*event.progress)
            continue
        reading.close()
        if event.kind == "thought":
            if not in_thought:
                err.write("[thinking] ")
                in_thought = True
            err.write(event.text)
            err.flush()
            result.thought += event.text
        elif event.kind == "answer":
            if in_thought:
                err.write("\n")
                in_thought = False
            out.write(event.text)
            out.flush()
            result.answer += event.text
        elif event.kind == "notice":
            err.write(f"[note] {event.text}\n")
        elif event.kind == "tool_call":
            result.calls.append(dict(event.tool_call or {}))
            if show_calls:
                out.write(f"\n[tool call] {json.dumps(event.tool_call, ensure_ascii=False)}\n")
        elif event.kind == "done":
            out.write("\n")
            stats = event.stats
            result.stats = {"prompt_tokens": stats.prompt_tokens, "generation_tokens": stats.generation_tokens,
                            "generation_tps": stats.generation_tps, "finish_reason": stats.finish_reason}
            drafted = (f", {stats.accepted_tokens}/{stats.drafted_tokens} drafted tokens accepted"
                       if stats.drafted_tokens else "")
            err.write(f"[{stats.prompt_tokens} prompt tokens, {stats.generation_tokens} generated, "
                      f"{stats.generation_tps:.1f} tok/s{drafted}, finish: {stats.finish_reason}]\n")
    return result
