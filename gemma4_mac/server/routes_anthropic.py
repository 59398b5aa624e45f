"""Anthropic's Messages API: POST /v1/messages (streamed or not) and POST /v1/messages/count_tokens.

Authentication takes Anthropic's `x-api-key` header (or a Bearer token); errors come back in Anthropic's
shape (`{"type": "error", "error": {...}}`), in the stream as an `error` event. `thinking` turns Gemma's
thinking on (`budget_tokens` counts within max_tokens; it does not stop a thought early), and thoughts
come back as thinking blocks with a signature. `output_config.format` (a JSON schema) constrains the
answer; temperature, top_p and top_k are still read when a client sends them.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Optional, Union

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from .anthropic_items import (MessageBuilder, anthropic_usage, block_id, chat_messages, chat_tool_choice,
                              chat_tools)
from .chat_spec import ChatSpec, chat_job, sampling_from
from .errors import APIError, BadRequest
from .schemas import MAX_STOP_STRINGS, DraftMode, Lenient
from .streaming import collect, event_stream, outputs, sse
from .routes import Endpoint


class CountTokensRequest(Lenient):
    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: Optional[Union[str, list[dict[str, Any]]]] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[dict[str, Any]] = None
    thinking: Optional[dict[str, Any]] = None
    output_config: Optional[dict[str, Any]] = None

    def enable_thinking(self) -> bool:
        return (self.thinking or {}).get("type") in ("enabled", "adaptive", "between_tools")

    def answer_schema(self) -> Optional[dict]:
        """output_config.format: the answer is JSON fitting this schema."""
        fmt = (self.output_config or {}).get("format")
        if not fmt:
            return None
        schema = fmt.get("schema") if isinstance(fmt, dict) and fmt.get("type") == "json_schema" else None
        if not isinstance(schema, dict):
            raise BadRequest("output_config.format must be {\"type\": \"json_schema\", \"schema\": {...}}",
                             param="output_config.format")
        return schema


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: Optional[list[str]] = Field(default=None, max_length=MAX_STOP_STRINGS)
    stream: bool = False
    temperature: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0)
    draft: Optional[DraftMode] = None  # speculative decoding (ours): auto, mtp, lookup or off
    metadata: Optional[dict[str, Any]] = None


class AnthropicRoutes(Endpoint):
    """POST /v1/messages and POST /v1/messages/count_tokens."""

    def spec(self, body: CountTokensRequest) -> ChatSpec:
        stop = tuple(s for s in getattr(body, "stop_sequences", None) or () if s)
        sampling, explicit = sampling_from(
            temperature=getattr(body, "temperature", None), top_p=getattr(body, "top_p", None),
            top_k=getattr(body, "top_k", None), max_tokens=getattr(body, "max_tokens", None),
            default_max_tokens=self.options.default_max_tokens, stop=stop, draft=getattr(body, "draft", None))
        choice, parallel = chat_tool_choice(body.tool_choice)
        return ChatSpec(model=body.model, messages=chat_messages(body.system, body.messages),
                        sampling=sampling, max_tokens_explicit=explicit, tools=chat_tools(body.tools),
                        tool_choice=choice, parallel_tool_calls=parallel,
                        enable_thinking=body.enable_thinking(),
                        json_schema=body.answer_schema(), json_param="output_config.format.schema")

    async def messages(self, request: Request):
        self.authorize(request)
        body = await self.read_json(request, MessagesRequest)
        job = await asyncio.to_thread(chat_job, self.spec(body),
                                      allow_local_files=self.options.allow_local_files)
        opening = await self.begin(job, body.model, body.stream)
        model_id = self.service.library.find(body.model).id
        message = {"id": block_id("msg"), "type": "message", "role": "assistant", "model": model_id,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        builder = MessageBuilder(message)
        if body.stream:
            return event_stream(self.events(opening, builder))
        stats, stop = None, None
        for output in await collect(opening, request):
            if output.kind == "done":
                stats, stop = output.event.stats, output.stop_sequence
            else:
                builder.add(output.event)
        builder.finish(stats, stop)
        return JSONResponse(message)

    async def events(self, opening, builder: MessageBuilder) -> AsyncIterator[str]:
        start = dict(builder.message, content=[])
        if not isinstance(opening, asyncio.Future):
            start["usage"] = {"input_tokens": opening.prompt_tokens, "output_tokens": 0}
        yield sse({"type": "message_start", "message": start}, event="message_start")
        yield sse({"type": "ping"}, event="ping")  # Anthropic's keep-alive, at once and while waiting
        try:
            stats, stop = None, None
            async for payload in outputs(opening, keepalive=self.options.keepalive_seconds):
                if payload is None:
                    yield sse({"type": "ping"}, event="ping")
                elif payload.kind == "done":
                    stats, stop = payload.event.stats, payload.stop_sequence
                else:
                    for name, data in builder.add(payload.event):
                        yield sse(data, event=name)
            for name, data in builder.finish(stats, stop):
                yield sse(data, event=name)
            message = builder.message
            delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
            yield sse({"type": "message_delta", "delta": delta, "usage": anthropic_usage(stats)},
                      event="message_delta")
            yield sse({"type": "message_stop"}, event="message_stop")
        except APIError as error:
            yield sse(error.anthropic_body(), event="error")

    async def count_tokens(self, request: Request) -> JSONResponse:
        self.authorize(request)
        body = await self.read_json(request, CountTokensRequest)
        spec = self.spec(body)
        if spec.tools is None and body.tool_choice is not None:
            raise BadRequest("tool_choice needs tools", param="tool_choice")
        job = await asyncio.to_thread(chat_job, spec, allow_local_files=self.options.allow_local_files)
        return JSONResponse({"input_tokens": await self.service.count_tokens(job, body.model)})
