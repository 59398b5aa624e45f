"""The agent loop: the model answers, its tool calls run, their results go back to it, and it goes on.

`AgentRun.run(messages)` repeats, up to `max_steps` model turns:

1. one model turn (`step(messages, allow_calls)`: the caller streams its text to the person and returns
   what it wrote and the calls it made; the last turn allowed may not call, so the model answers);
2. each call is checked (a tool of this chat, readable arguments), shown (`report("tool_call", record)`),
   approved by the person when it writes (`approve(record)` blocks until they answer), run, and its result
   shown (`report("tool_update", record)`);
3. the turn and the results join the conversation as an assistant message with `tool_calls` and one
   "tool" message per call (images as image parts when the model sees images), and the loop goes on.

A failed, refused or timed-out call is never an exception here: the model is told what happened and
carries on. `cancel` ends the run between steps (and stops a call or approval under way). No thread is
held by the loop but the caller's: the app runs it on a thread of its own, each model turn a job on the
model thread, so the window and the server keep going while a tool runs or the person decides.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .mcp_client import McpCancelled, McpError
from .toolbox import ToolBox, ToolCallRecord, output_text

DEFAULT_MAX_STEPS = 8
DENIED = "The person did not allow this call, so it did not run. Do not try it again unless they ask."
CANCELLED = "The person stopped the call."
IMAGE_SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp"}


@dataclass
class StepResult:
    """One model turn: its answer text, its thought, its tool calls ({"name", "arguments"[, "error",
    "raw"]}) and its statistics (a dict, as the window shows them)."""

    answer: str = ""
    thought: str = ""
    calls: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


@dataclass
class AgentOutcome:
    """What a run did: the calls, the messages it added to the conversation, and the figures of the whole
    run (the last turn's, with the generated tokens of all turns and the number of turns)."""

    records: list[ToolCallRecord] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    answer: str = ""


class AgentRun:
    """One person's request answered with tools; see the module docstring."""

    def __init__(self, toolbox: ToolBox, *, step: Callable[[list[dict], bool], StepResult],
                 approve: Callable[[ToolCallRecord], bool], report: Callable[[str, dict], None],
                 cancel: Optional[threading.Event] = None, max_steps: int = DEFAULT_MAX_STEPS,
                 person_texts: Optional[list[str]] = None, can_see: bool = False,
                 image_dir: Optional[Path] = None, approved: Optional[set[str]] = None,
                 call_ids: Optional[Any] = None):
        self.toolbox, self.step, self.approve, self.report = toolbox, step, approve, report
        self.cancel = cancel or threading.Event()
        self.max_steps = max(1, max_steps)
        self.person_texts = list(person_texts or [])
        self.can_see, self.image_dir = can_see, image_dir
        self.approved = approved if approved is not None else set()  # servers allowed in this chat ("once")
        self._ids = call_ids or itertools.count(1)

    def run(self, messages: list[dict]) -> AgentOutcome:
        """Answer the conversation `messages` (not changed); see the module docstring."""
        conversation = list(messages)
        outcome = AgentOutcome()
        generated, steps = 0, 0
        for index in range(self.max_steps):
            result = self.step(conversation, index < self.max_steps - 1)
            steps += 1
            generated += int(result.stats.get("generation_tokens", 0) or 0)
            outcome.stats = dict(result.stats)
            outcome.answer += result.answer
            if not result.calls or self.cancel.is_set():
                break
            turn = {"role": "assistant", "content": result.answer.strip(), "tool_calls": []}
            if result.thought:
                turn["reasoning_content"] = result.thought
            answers = []
            for call in result.calls:
                record = self._record(call)
                turn["tool_calls"].append({"id": record.id, "type": "function",
                                           "function": {"name": record.name, "arguments": record.arguments}})
                self.report("tool_call", record.as_dict())
                if index == self.max_steps - 1:
                    self._end(record, "failed", f"Not run: the limit of {self.max_steps} steps was reached.")
                elif record.status == "asked":
                    self._settle(record, call)
                outcome.records.append(record)
                answers.append(self._tool_message(record))
                if self.cancel.is_set():
                    break
            conversation += [turn] + answers
            outcome.messages += [turn] + answers
            if self.cancel.is_set() or index == self.max_steps - 1:
                break
        outcome.stats["generation_tokens"] = generated
        outcome.stats["steps"] = steps
        if self.cancel.is_set():
            outcome.stats["finish_reason"] = "cancelled"
        return outcome

    # -- one call ------------------------------------------------------------------------------------------

    def _record(self, call: dict) -> ToolCallRecord:
        name = str(call.get("name") or "")
        arguments = call.get("arguments") if isinstance(call.get("arguments"), dict) else {}
        tool = self.toolbox.find(name)
        record = ToolCallRecord(id=f"call_{next(self._ids)}", name=name, server=tool.server if tool else "",
                                tool=tool.name if tool else name, arguments=arguments,
                                writes=bool(tool and tool.writes))
        if call.get("error"):
            record.status = "failed"
            record.result = f"The call could not be read ({call['error']}); write it again."
        elif tool is None:
            record.status = "failed"
            offered = ", ".join(self.toolbox.by_name) or "none"
            record.result = f"There is no tool called {name!r} in this chat. The tools are: {offered}."
        return record

    def _end(self, record: ToolCallRecord, status: str, result: str) -> None:
        record.status, record.result = status, result
        self.report("tool_update", record.as_dict())

    def _settle(self, record: ToolCallRecord, call: dict) -> None:
        """Ask (when the tool writes and the server's mode says so), run, and record the result."""
        tool = self.toolbox.find(record.name)
        if self.toolbox.needs_approval(tool, self.approved):
            record.status = "waiting"
            self.report("tool_update", record.as_dict())
            granted = self.approve(record)
            if self.cancel.is_set():
                self._end(record, "cancelled", CANCELLED)
                return
            if not granted:
                self._end(record, "denied", DENIED)
                return
            self.approved.add(tool.server)
        record.status = "running"
        self.report("tool_update", record.as_dict())
        started = time.monotonic()
        try:
            output = self.toolbox.run(tool, record.arguments, cancel=self.cancel, person_texts=self.person_texts)
        except McpCancelled:
            record.seconds = time.monotonic() - started
            self._end(record, "cancelled", CANCELLED)
            return
        except McpError as error:
            record.seconds = time.monotonic() - started
            self._end(record, "failed", f"The tool failed: {error}")
            return
        record.seconds = time.monotonic() - started
        record.images = self._save_images(record, output.images)
        text = output_text(output)
        if output.is_error:
            self._end(record, "failed", text or "The tool reported an error without saying which.")
        else:
            pictures = f"{len(record.images)} image" + ("s" if len(record.images) > 1 else "")
            self._end(record, "done", text or (pictures if record.images else "(the tool returned nothing)"))

    def _save_images(self, record: ToolCallRecord, images: list[tuple[bytes, str]]) -> list[str]:
        if not images or self.image_dir is None:
            return []
        saved = []
        try:
            self.image_dir.mkdir(parents=True, exist_ok=True)
            for number, (data, mime) in enumerate(images, 1):
                path = self.image_dir / f"{record.id}-{int(time.time())}-{number}{IMAGE_SUFFIXES.get(mime, '.png')}"
                path.write_bytes(data)
                saved.append(str(path))
        except OSError:
            return saved  # a full or read-only disk: the text of the result still goes to the model
        return saved

    def _tool_message(self, record: ToolCallRecord) -> dict:
        """The "tool" message that tells the model what the call gave (or why it gave nothing)."""
        text = record.result if record.status == "done" else f"Error: {record.result}"
        message = {"role": "tool", "tool_call_id": record.id, "name": record.name, "content": text}
        if record.images and self.can_see:
            message["content"] = [{"type": "text", "text": text}] + \
                [{"type": "image", "path": path} for path in record.images]
        elif record.images:
            message["content"] = text + f"\n[The tool returned {len(record.images)} image(s), which this " \
                                        "model cannot see.]"
        return message


def replay_messages(content: str, records: list[dict]) -> list[dict]:
    """A stored agent answer as the model reads it on later turns: its calls and their results (text
    only), then its answer. `records` are `ToolCallRecord.as_dict()` entries."""
    calls = [r for r in records if isinstance(r, dict) and r.get("id") and r.get("status")]
    if not calls:
        return [{"role": "assistant", "content": content}]
    turn = {"role": "assistant", "content": "",
            "tool_calls": [{"id": r["id"], "type": "function",
                            "function": {"name": r.get("name", ""), "arguments": r.get("arguments") or {}}}
                           for r in calls]}
    results = [{"role": "tool", "tool_call_id": r["id"], "name": r.get("name", ""),
                "content": (r.get("result") or "") if r.get("status") == "done"
                else f"Error: {r.get('result') or 'the call did not run'}"} for r in calls]
    tail = [{"role": "assistant", "content": content}] if content.strip() else []
    return [turn] + results + tail
