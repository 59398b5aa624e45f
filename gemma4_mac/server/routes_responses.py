"""OpenAI's Responses API: POST /v1/responses, GET and DELETE /v1/responses/{id}.

A response can continue an earlier one by `previous_response_id`: the earlier conversation (its input
and output items) is kept in this server's memory, the last `stored_responses` responses at most and
`stored_bytes` of them in all (oldest dropped first), unless the request says `store: false`.
`instructions` apply to the request that carries them only, as OpenAI defines them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Optional, Union

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from .chat_spec import ChatSpec, chat_job, sampling_from
from .errors import APIError, BadRequest
from .responses_items import (ResponseBuilder, ResponseStore, chat_tool_choice, chat_tools, input_messages,
                              item_id)
from .routes import Endpoint, ServerOptions
from .schemas import DraftMode, Lenient
from .service import GenerationService
from .streaming import collect, event_stream, keepalive_comment, outputs, sse

THINKING_EFFORTS = ("low", "medium", "high", "xhigh")


class ResponsesRequest(Lenient):
    model: str = Field(min_length=1)
    input: Union[str, list[dict[str, Any]]] = Field(default_factory=list)
    instructions: Optional[str] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    previous_response_id: Optional[str] = None
    store: Optional[bool] = True
    stream: bool = False
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0)
    seed: Optional[int] = None
    draft: Optional[DraftMode] = None  # speculative decoding (ours): auto, mtp, lookup or off
    max_output_tokens: Optional[int] = Field(default=None, ge=1)
    reasoning: Optional[dict[str, Any]] = None
    text: Optional[dict[str, Any]] = None
    metadata: Optional[dict[str, Any]] = None
    user: Optional[str] = None

    def thinking(self) -> bool:
        return (self.reasoning or {}).get("effort") in THINKING_EFFORTS

    def answer_schema(self) -> Optional[dict]:
        fmt = (self.text or {}).get("format") or {}
        if fmt.get("type") == "json_object":
            return {"type": "object"}
        if fmt.get("type") == "json_schema":
            if not isinstance(fmt.get("schema"), dict):
                raise BadRequest("text.format.schema is missing", param="text.format.schema")
            return fmt["schema"]
        return None


class ResponsesRoutes(Endpoint):
    """POST /v1/responses, GET /v1/responses/{id}, DELETE /v1/responses/{id}."""

    def __init__(self, service: GenerationService, options: ServerOptions):
        super().__init__(service, options)
        self.store = ResponseStore(options.stored_responses, options.stored_bytes)

    async def create(self, request: Request):
        self.authorize(request)
        body = await self.read_json(request, ResponsesRequest)
        items = [{"type": "message", "role": "user", "content": body.input}] if isinstance(body.input, str) \
            else list(body.input)
        context = self.store.get(body.previous_response_id)[1] if body.previous_response_id else []
        messages = input_messages(context + items, body.instructions)
        if not any(m["role"] in ("user", "tool") for m in messages):
            raise BadRequest("input holds nothing to answer: send a user message or a function_call_output",
                             param="input")
        sampling, explicit = sampling_from(
            temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, seed=body.seed,
            max_tokens=body.max_output_tokens, default_max_tokens=self.options.default_max_tokens,
            draft=body.draft)
        spec = ChatSpec(model=body.model, messages=messages, sampling=sampling, max_tokens_explicit=explicit,
                        tools=chat_tools(body.tools), tool_choice=chat_tool_choice(body.tool_choice),
                        parallel_tool_calls=body.parallel_tool_calls, json_schema=body.answer_schema(),
                        json_param="text.format.schema", enable_thinking=body.thinking())
        job = await asyncio.to_thread(chat_job, spec, allow_local_files=self.options.allow_local_files)
        opening = await self.begin(job, body.model, body.stream)
        builder = ResponseBuilder(self.skeleton(body, self.service.library.find(body.model).id))
        if body.stream:
            return event_stream(self.events(opening, builder, body, context + items))
        for output in await collect(opening, request):
            builder.add(output.event)
        builder.finish()
        self.remember(body, builder.response, context + items)
        return JSONResponse(builder.response)

    async def events(self, opening, builder: ResponseBuilder, body: ResponsesRequest,
                     conversation: list) -> AsyncIterator[str]:
        for name, data in (builder.event("response.created", response=builder.snapshot()),
                           builder.event("response.in_progress", response=builder.snapshot())):
            yield sse(data, event=name)
        try:
            async for payload in outputs(opening, keepalive=self.options.keepalive_seconds):
                if payload is None:
                    yield keepalive_comment()
                    continue
                for name, data in builder.add(payload.event):
                    yield sse(data, event=name)
            name, data = builder.finish()
            self.remember(body, builder.response, conversation)
            yield sse(data, event=name)
        except APIError as error:
            name, data = builder.event("error", code=error.code, message=error.message, param=error.param)
            yield sse(data, event=name)
            builder.response.update(status="failed", error={"code": error.code or "server_error",
                                                            "message": error.message})
            name, data = builder.event("response.failed", response=builder.snapshot())
            yield sse(data, event=name)

    def skeleton(self, body: ResponsesRequest, model_id: str) -> dict:
        """The response object before any output: what was asked, status in_progress."""
        return {"id": item_id("resp"), "object": "response", "created_at": int(time.time()),
                "status": "in_progress", "error": None, "incomplete_details": None,
                "instructions": body.instructions,
                "max_output_tokens": body.max_output_tokens, "model": model_id, "output": [],
                "parallel_tool_calls": body.parallel_tool_calls is not False,
                "previous_response_id": body.previous_response_id,
                "reasoning": {"effort": (body.reasoning or {}).get("effort"), "summary": None},
                "store": body.store is not False, "temperature": body.temperature, "top_p": body.top_p,
                "text": body.text or {"format": {"type": "text"}}, "tool_choice": body.tool_choice or "auto",
                "tools": body.tools or [], "truncation": "disabled", "usage": None, "user": body.user,
                "metadata": body.metadata or {}}

    def remember(self, body: ResponsesRequest, response: dict, conversation: list) -> None:
        """Keep the response for previous_response_id (its output items continue the conversation)."""
        if body.store is not False:
            self.store.put(response, conversation + [_as_input(item) for item in response["output"]])

    async def retrieve(self, request: Request) -> JSONResponse:
        self.authorize(request)
        response, _ = self.store.get(request.path_params["response_id"], param="response_id")
        return JSONResponse(response)

    async def delete(self, request: Request) -> JSONResponse:
        self.authorize(request)
        response_id = request.path_params["response_id"]
        self.store.delete(response_id)
        return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


def _as_input(item: dict) -> dict:
    """An output item as the input item that continues the conversation."""
    if item["type"] == "message":
        return {"type": "message", "role": "assistant", "content": item["content"]}
    if item["type"] == "function_call":
        return {"type": "function_call", "call_id": item["call_id"], "name": item["name"],
                "arguments": item["arguments"]}
    return {"type": "reasoning", "content": item.get("content") or [], "summary": item.get("summary") or []}
