"""Generation events -> an OpenAI assistant message (whole, or as streamed deltas).

Thoughts go to `reasoning_content`, never to `content`. Each parsed tool call becomes an entry of
`tool_calls` with a fresh id and its arguments as a JSON string. A call the parser could not read
is not passed off as a call with empty arguments: its text is returned as content instead, so the
client sees what the model wrote.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Optional

log = logging.getLogger(__name__)


def call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ChatReply:
    """Accumulates one reply; `add(event)` returns the streaming delta for that event (or None)."""

    def __init__(self):
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: list[dict] = []

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.tool_calls)

    def add(self, event) -> Optional[dict]:
        if event.kind == "answer" and event.text:
            self.content.append(event.text)
            return {"content": event.text}
        if event.kind == "thought" and event.text:
            self.reasoning.append(event.text)
            return {"reasoning_content": event.text}
        if event.kind == "tool_call" and event.tool_call:
            return self._tool_call(event.tool_call)
        return None

    def _tool_call(self, call: dict) -> dict:
        if call.get("error") or not call.get("name"):
            log.warning("the model wrote a tool call that cannot be read: %s", call.get("error"))
            text = call.get("raw") or json.dumps(call, ensure_ascii=False)
            self.content.append(text)
            return {"content": text}
        entry = {"id": call_id(), "type": "function",
                 "function": {"name": call["name"],
                              "arguments": json.dumps(call.get("arguments") or {}, ensure_ascii=False)}}
        index = len(self.tool_calls)
        self.tool_calls.append(entry)
        return {"tool_calls": [{"index": index, **entry}]}

    def message(self) -> dict:
        """The complete assistant message; content is null when the reply is only tool calls."""
        content = "".join(self.content)
        message: dict = {"role": "assistant",
                         "content": content if (content or not self.tool_calls) else None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message
