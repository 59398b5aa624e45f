"""Anthropic's Messages API in and out: a request's system, messages, content blocks and tools -> chat
messages and function tools; generation outputs -> content blocks (thinking, text, tool_use) and the
stream events Anthropic's clients read.

Content blocks read: text, image (base64, or a URL that is a local path where local files are allowed),
tool_use, tool_result (text, or text blocks), thinking and redacted_thinking (a thought the model had
before; Gemma's templates drop old thoughts anyway). Documents, server tools and search results are
refused with a 400 naming the block.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, Optional

from .errors import BadRequest
from .replies import ChatReply

STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "stop": "end_turn", "cancelled": "end_turn"}


def block_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def thought_signature(text: str) -> str:
    """An opaque signature for a thinking block (clients send it back; this server does not check it)."""
    return "gemma4-mac-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _text_blocks(content: Any, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise BadRequest(f"{param} must be a string or a list of blocks", param=param)
    texts = []
    for index, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            kind = block.get("type") if isinstance(block, dict) else None
            raise BadRequest(f"{param}.{index}: only text blocks are accepted here, not {kind!r}",
                             param=f"{param}.{index}.type")
        texts.append(str(block.get("text", "")))
    return "".join(texts)


def _image(block: dict, param: str) -> dict:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media_type = source.get("media_type") or "image/png"
        return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{source['data']}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise BadRequest(f"{param}.source must be base64 data (type base64, media_type, data)",
                     param=f"{param}.source")


def _user(content: Any, param: str) -> list[dict]:
    """A user turn: tool results first (as tool messages), then the rest as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{param} must be a string or a list of blocks", param=param)
    results, parts = [], []
    for index, block in enumerate(content):
        where = f"{param}.{index}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image(block, where))
        elif kind == "tool_result":
            text = _text_blocks(block.get("content"), f"{where}.content")
            if block.get("is_error"):
                text = f"error: {text}"
            results.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id")), "content": text})
        else:
            raise BadRequest(f"{where}: blocks of type {kind!r} are not supported in user messages",
                             param=f"{where}.type")
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _assistant(content: Any, param: str) -> dict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise BadRequest(f"{param} must be a string or a list of blocks", param=param)
    message: dict = {"role": "assistant", "content": ""}
    for index, block in enumerate(content):
        where = f"{param}.{index}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            message["content"] += str(block.get("text", ""))
        elif kind == "tool_use":
            if not isinstance(block.get("name"), str):
                raise BadRequest(f"{where}.name is missing", param=f"{where}.name")
            arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
            message.setdefault("tool_calls", []).append(
                {"id": str(block.get("id") or block_id("toolu")), "type": "function",
                 "function": {"name": block["name"], "arguments": json.dumps(arguments, ensure_ascii=False)}})
        elif kind == "thinking":
            thought = str(block.get("thinking", ""))
            message["reasoning_content"] = message.get("reasoning_content", "") + thought
        elif kind != "redacted_thinking":
            raise BadRequest(f"{where}: blocks of type {kind!r} are not supported in assistant messages",
                             param=f"{where}.type")
    return message


def chat_messages(system: Any, messages: list) -> list[dict]:
    """The request's system and messages as chat messages."""
    out = [{"role": "system", "content": _text_blocks(system, "system")}] if system else []
    for index, message in enumerate(messages):
        param = f"messages.{index}"
        role = message.get("role") if isinstance(message, dict) else None
        if role == "user":
            out += _user(message.get("content"), f"{param}.content")
        elif role == "assistant":
            out.append(_assistant(message.get("content"), f"{param}.content"))
        else:
            raise BadRequest(f"{param}.role must be user or assistant", param=f"{param}.role")
    return out


def chat_tools(tools: Optional[list]) -> Optional[list[dict]]:
    if not tools:
        return None
    out = []
    for index, tool in enumerate(tools):
        client_tool = isinstance(tool, dict) and tool.get("type") in (None, "custom")
        if not client_tool or "input_schema" not in tool:
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise BadRequest(f"tools.{index}: only client tools with an input_schema are supported here "
                             f"(not {kind!r})", param=f"tools.{index}")
        function = {"name": tool.get("name"), "parameters": tool["input_schema"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Optional[dict]) -> tuple[Any, Optional[bool]]:
    """(the chat tool_choice, parallel_tool_calls) for Anthropic's tool_choice."""
    if choice is None:
        return None, None
    kind = choice.get("type") if isinstance(choice, dict) else None
    parallel = False if choice.get("disable_parallel_tool_use") else None
    if kind in ("auto", "none"):
        return kind, parallel
    if kind == "any":
        return "required", parallel
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}, parallel
    raise BadRequest("tool_choice.type must be auto, any, tool or none", param="tool_choice.type")


class MessageBuilder:
    """Content blocks of one reply, and (when streaming) Anthropic's events for them."""

    def __init__(self, message: dict):
        self.message = message
        self.content: list[dict] = message["content"]
        self.open: Optional[dict] = None

    def _start(self, block: dict) -> list:
        self.content.append(block)
        self.open = block
        shown = dict(block, **({"text": ""} if block["type"] == "text" else {"thinking": "", "signature": ""}
                               if block["type"] == "thinking" else {"input": {}}))
        return [("content_block_start", {"type": "content_block_start", "index": len(self.content) - 1,
                                         "content_block": shown})]

    def close(self) -> list:
        block, self.open = self.open, None
        if block is None:
            return []
        index = self.content.index(block)
        events = []
        if block["type"] == "thinking":
            block["signature"] = thought_signature(block["thinking"])
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                   "delta": {"type": "signature_delta",
                                                             "signature": block["signature"]}}))
        return events + [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def add(self, event) -> list:
        kind = event.kind
        if kind in ("answer", "thought") and event.text:
            wanted, field = ("text", "text") if kind == "answer" else ("thinking", "thinking")
            events = []
            if self.open is None or self.open["type"] != wanted:
                events += self.close()
                events += self._start({"type": wanted, field: ""} if wanted == "text" else
                                      {"type": "thinking", "thinking": "", "signature": ""})
            self.open[field] += event.text
            delta = {"type": "text_delta", "text": event.text} if wanted == "text" else \
                {"type": "thinking_delta", "thinking": event.text}
            return events + [("content_block_delta", {"type": "content_block_delta",
                                                      "index": len(self.content) - 1, "delta": delta})]
        if kind == "tool_call" and event.tool_call:
            delta = ChatReply().add(event)
            if "tool_calls" not in delta:  # unreadable: its text is answer text
                return self.add(type(event)("answer", delta.get("content", "")))
            function = delta["tool_calls"][0]["function"]
            events = self.close()
            block = {"type": "tool_use", "id": block_id("toolu"), "name": function["name"],
                     "input": json.loads(function["arguments"])}
            events += self._start(block)
            delta = {"type": "input_json_delta", "partial_json": function["arguments"]}
            events.append(("content_block_delta", {"type": "content_block_delta",
                                                   "index": len(self.content) - 1, "delta": delta}))
            return events + self.close()
        return []

    def finish(self, stats, stop_sequence: Optional[str]) -> list:
        """Close the last block; the message's stop reason and usage."""
        events = self.close()
        reason = STOP_REASONS.get(getattr(stats, "finish_reason", "stop"), "end_turn")
        if any(block["type"] == "tool_use" for block in self.content) and reason == "end_turn":
            reason = "tool_use"
        if stop_sequence is not None:
            reason = "stop_sequence"
        self.message.update(stop_reason=reason, stop_sequence=stop_sequence)
        self.message["usage"] = anthropic_usage(stats)
        return events


def anthropic_usage(stats) -> dict:
    """Anthropic counts the reused prefix apart: input_tokens are the ones read afresh."""
    prompt = int(getattr(stats, "prompt_tokens", 0) or 0)
    cached = int(getattr(stats, "cached_tokens", 0) or 0)
    output = int(getattr(stats, "generation_tokens", 0) or 0)
    return {"input_tokens": prompt - cached, "output_tokens": output, "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0}
