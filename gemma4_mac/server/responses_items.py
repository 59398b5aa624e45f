"""OpenAI's Responses API in and out: input items -> chat messages, and generation outputs -> output items
and stream events; plus the in-memory store behind `previous_response_id`.

Input items: messages (string or input_text / input_image / output_text parts), `function_call` and
`function_call_output` items (a call and its result), and `reasoning` items (their text becomes the
next assistant message's thought). Output items: `reasoning` (the thought, as reasoning_text), a
`message` with one output_text part, and one `function_call` per call.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from typing import Any, Optional

from .errors import BadRequest, NotFound
from .replies import ChatReply, call_id

TEXT_PARTS = ("input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text")


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _text_of(content: Any, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS:
                raise BadRequest(f"{param}.{index}: only text parts are accepted here",
                                 param=f"{param}.{index}")
            texts.append(str(part.get("text", part.get("refusal", ""))))
        return "".join(texts)
    raise BadRequest(f"{param} must be text or a list of parts", param=param)


def _user_parts(content: Any, param: str) -> Any:
    """input_text / input_image parts as chat content parts (a string stays a string)."""
    if isinstance(content, str) or content is None:
        return content or ""
    if not isinstance(content, list):
        raise BadRequest(f"{param} must be text or a list of parts", param=param)
    parts = []
    for index, part in enumerate(content):
        where = f"{param}.{index}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS:
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image":
            if part.get("file_id") or not part.get("image_url"):
                raise BadRequest(f"{where}: send the image as image_url (a data URL); file ids are not kept "
                                 "by this server", param=f"{where}.image_url")
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise BadRequest(f"{where}: parts of type {kind!r} are not supported", param=f"{where}.type")
    return parts


def input_messages(items: list, instructions: Optional[str]) -> list[dict]:
    """Chat messages for the model from Responses input items (`param` names point into `input`)."""
    messages: list[dict] = [{"role": "system", "content": instructions}] if instructions else []
    thought: list[str] = []

    def assistant() -> dict:
        last = messages[-1] if messages else None
        if last is None or last["role"] != "assistant":
            last = {"role": "assistant", "content": ""}
            messages.append(last)
        if thought:
            last["reasoning_content"] = "".join(thought)
            thought.clear()
        return last

    for index, item in enumerate(items):
        param = f"input.{index}"
        if not isinstance(item, dict):
            raise BadRequest(f"{param} must be an object", param=param)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role in ("system", "developer"):
                text = _text_of(item.get("content"), f"{param}.content")
                messages.append({"role": "system", "content": text})
            elif role == "user":
                parts = _user_parts(item.get("content"), f"{param}.content")
                messages.append({"role": "user", "content": parts})
            elif role == "assistant":
                text = _text_of(item.get("content"), f"{param}.content")
                message = assistant()
                message["content"] = (message.get("content") or "") + text
            else:
                raise BadRequest(f"{param}.role must be user, assistant, system or developer",
                                 param=f"{param}.role")
        elif kind == "function_call":
            if not isinstance(item.get("name"), str):
                raise BadRequest(f"{param}.name is missing", param=f"{param}.name")
            message = assistant()
            message.setdefault("tool_calls", []).append(
                {"id": str(item.get("call_id") or item.get("id") or call_id()), "type": "function",
                 "function": {"name": item["name"], "arguments": item.get("arguments") or "{}"}})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": str(item.get("call_id")),
                             "content": output if isinstance(output, str) else
                             _text_of(output, f"{param}.output")})
        elif kind == "reasoning":
            parts = (item.get("content") or []) + (item.get("summary") or [])
            thought.append(_text_of(parts, f"{param}.content"))
        else:
            raise BadRequest(f"{param}: input items of type {kind!r} are not supported by this server",
                             param=f"{param}.type")
    return messages


def chat_tools(tools: Optional[list]) -> Optional[list[dict]]:
    """Responses function tools ({"type": "function", "name", "parameters"}) as chat tools."""
    if not tools:
        return None
    out = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise BadRequest(f"tools.{index}: tools of type {kind!r} are not supported; this server calls "
                             "function tools", param=f"tools.{index}.type")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise BadRequest(f"tools.{index}.name is missing", param=f"tools.{index}.name")
        function = {"name": tool["name"], "parameters": tool.get("parameters")}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Any) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise BadRequest("tool_choice must be none, auto, required or {\"type\": \"function\", \"name\": ...}",
                     param="tool_choice")


class ResponseBuilder:
    """Turns one generation's outputs into Responses output items, and (when streaming) their events."""

    def __init__(self, response: dict):
        self.response = response  # the response object; its output and status are filled in here
        self.output: list[dict] = response["output"]
        self.sequence = 0
        self.open: Optional[dict] = None  # the item receiving deltas
        self.stats = None

    def event(self, kind: str, **fields) -> tuple[str, dict]:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return kind, data

    def snapshot(self) -> dict:
        return json.loads(json.dumps(self.response))

    def _start(self, item: dict) -> list:
        self.output.append(item)
        self.open = item
        events = [self.event("response.output_item.added", output_index=len(self.output) - 1,
                             item=json.loads(json.dumps(item)))]
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(self.event("response.content_part.added", item_id=item["id"],
                                     output_index=len(self.output) - 1, content_index=0, part=part))
            item["content"].append(part)
        elif item["type"] == "reasoning":
            item["content"].append({"type": "reasoning_text", "text": ""})
        return events

    def close(self) -> list:
        """Close the item receiving deltas (its done events)."""
        item, self.open = self.open, None
        if item is None:
            return []
        index = self.output.index(item)
        item["status"] = "completed"
        events = []
        if item["type"] == "message":
            part = item["content"][0]
            events += [self.event("response.output_text.done", item_id=item["id"], output_index=index,
                                  content_index=0, text=part["text"], logprobs=[]),
                       self.event("response.content_part.done", item_id=item["id"], output_index=index,
                                  content_index=0, part=part)]
        elif item["type"] == "reasoning":
            events.append(self.event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                                     content_index=0, text=item["content"][0]["text"]))
        return events + [self.event("response.output_item.done", output_index=index,
                                    item=json.loads(json.dumps(item)))]

    def add(self, event) -> list:
        """The stream events for one generation event."""
        kind = event.kind
        if kind in ("answer", "thought") and event.text:
            wanted = "message" if kind == "answer" else "reasoning"
            events = []
            if self.open is None or self.open["type"] != wanted:
                events += self.close()
                item = ({"type": "message", "id": item_id("msg"), "status": "in_progress",
                         "role": "assistant", "content": []} if wanted == "message" else
                        {"type": "reasoning", "id": item_id("rs"), "summary": [], "content": []})
                events += self._start(item)
            part = self.open["content"][0]
            part["text"] += event.text
            index = len(self.output) - 1
            delta = "response.output_text.delta" if wanted == "message" else "response.reasoning_text.delta"
            extra = {"logprobs": []} if wanted == "message" else {}
            return events + [self.event(delta, item_id=self.open["id"], output_index=index, content_index=0,
                                        delta=event.text, **extra)]
        if kind == "tool_call" and event.tool_call:
            delta = ChatReply().add(event)
            if "tool_calls" not in delta:  # unreadable: its text is answer text
                return self.add(type(event)("answer", delta.get("content", "")))
            call = delta["tool_calls"][0]
            events = self.close()
            item = {"type": "function_call", "id": item_id("fc"), "call_id": call["id"],
                    "name": call["function"]["name"], "arguments": "", "status": "in_progress"}
            events += self._start(item)
            index = len(self.output) - 1
            item["arguments"] = call["function"]["arguments"]
            events += [self.event("response.function_call_arguments.delta", item_id=item["id"],
                                  output_index=index, delta=item["arguments"]),
                       self.event("response.function_call_arguments.done", item_id=item["id"],
                                  output_index=index, arguments=item["arguments"], name=item["name"])]
            return events + self.close()
        if kind == "done":
            self.stats = event.stats
            return self.close()
        return []

    def finish(self) -> tuple[str, dict]:
        """The final lifecycle event (completed, or incomplete when max_output_tokens cut the reply)."""
        stats = self.stats
        cut = stats is not None and stats.finish_reason == "length"
        self.response["status"] = "incomplete" if cut else "completed"
        self.response["incomplete_details"] = {"reason": "max_output_tokens"} if cut else None
        self.response["completed_at"] = int(time.time())
        prompt = int(stats.prompt_tokens) if stats else 0
        completion = int(stats.generation_tokens) if stats else 0
        cached = int(stats.cached_tokens) if stats else 0
        self.response["usage"] = {  # thought tokens are counted in output_tokens, not apart
            "input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}
        return self.event("response.incomplete" if cut else "response.completed", response=self.snapshot())


class ResponseStore:
    """Finished responses with the conversation that led to them, for `previous_response_id` and GET;
    the oldest go first past `max_items` entries or `max_bytes` of stored JSON."""

    def __init__(self, max_items: int = 64, max_bytes: int = 32 * 1024 * 1024):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._entries: "collections.OrderedDict[str, tuple[dict, list, int]]" = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, response: dict, context: list) -> bool:
        """Keep a response and its context items (its input and its output); False when it is too large."""
        size = len(json.dumps(response)) + len(json.dumps(context))
        if size > self.max_bytes:
            return False
        with self._lock:
            self._entries[response["id"]] = (response, context, size)
            self._bytes += size
            while len(self._entries) > self.max_items or self._bytes > self.max_bytes:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
        return True

    def get(self, response_id: str, param: str = "previous_response_id") -> tuple[dict, list]:
        with self._lock:
            entry = self._entries.get(response_id)
            if entry is None:
                raise NotFound(f"no response {response_id!r} is kept here (responses live in this server's "
                               f"memory, the last {self.max_items} at most)", param=param)
            self._entries.move_to_end(response_id)
            return entry[0], entry[1]

    def delete(self, response_id: str) -> None:
        with self._lock:
            entry = self._entries.pop(response_id, None)
            if entry is None:
                raise NotFound(f"no response {response_id!r} is kept here", param="response_id")
            self._bytes -= entry[2]
