"""The HTTP endpoints: /v1/models, /v1/chat/completions (server-sent events or not), /v1/completions."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from ..generate import SamplingSettings
from .constrained import ReplyShape
from .errors import APIError, AuthenticationError, BadRequest, ModelNotFound, PayloadTooLarge
from .messages import MediaFolder, convert_messages
from .replies import ChatReply
from .schemas import (ChatCompletionRequest, CompletionRequest, chat_chunk, chat_completion, model_object,
                      new_id, openai_finish_reason, parse_request, text_completion, usage, usage_chunk)
from .service import END, ERROR, EVENT, READY, GenerationJob, GenerationService, Stream

DISCONNECT_POLL_SECONDS = 0.25


@dataclass
class ServerOptions:
    """How the app behaves beyond the model: who may call it and how large a request may be."""

    api_key: Optional[str] = None
    max_body_bytes: int = 64 * 1024 * 1024
    allow_local_files: bool = True  # image paths on this computer (only when bound to loopback)
    default_max_tokens: int = 2048


class Routes:
    """Request handlers bound to one GenerationService."""

    def __init__(self, service: GenerationService, options: ServerOptions):
        self.service, self.options = service, options

    # -- shared steps --------------------------------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        if not self.options.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        expected = self.options.api_key.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise AuthenticationError("missing or wrong API key: send it as 'Authorization: Bearer KEY'")

    async def read_body(self, request: Request) -> bytes:
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"the request is {int(declared)} bytes; the most accepted is {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request is larger than {limit} bytes, the most accepted here")
            chunks.append(chunk)
        return b"".join(chunks)

    def sampling(self, body, *, stop: tuple[str, ...]) -> tuple[SamplingSettings, bool]:
        """Sampling settings from the request (Gemma's defaults where it is silent); and whether
        max_tokens was given."""
        defaults = SamplingSettings()
        max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
        return SamplingSettings(
            temperature=defaults.temperature if body.temperature is None else body.temperature,
            top_p=defaults.top_p if body.top_p is None else body.top_p,
            top_k=defaults.top_k if body.top_k is None else body.top_k,
            min_p=defaults.min_p if body.min_p is None else body.min_p,
            repetition_penalty=body.repetition_penalty or 1.0,
            seed=body.seed,
            max_tokens=max_tokens or self.options.default_max_tokens,
            stop_strings=stop,
        ), max_tokens is not None

    async def next_item(self, stream: Stream, request: Request, watch: "DisconnectWatch") -> tuple[str, Any]:
        """The job's next item; cancels the job and raises ClientGone once the client has left."""
        while True:
            try:
                item = await stream.get(DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                item = None
            if await watch.gone(request):
                stream.cancel()
                raise ClientGone("the client closed the connection; its generation was cancelled")
            if item is not None:
                return item

    async def first_item(self, stream: Stream, request: Request) -> Any:
        """Wait until the job was accepted (READY) or refused (ERROR, raised); cancels on disconnect."""
        watch = DisconnectWatch()
        try:
            while True:
                kind, payload = await self.next_item(stream, request, watch)
                if kind == ERROR:
                    await _drain(stream)
                    raise payload
                if kind == READY:
                    return payload
        except BaseException:
            stream.cancel()
            raise

    # -- endpoints -----------------------------------------------------------------------------------------

    async def models(self, request: Request) -> JSONResponse:
        self.authorize(request)
        model_id = self.service.model_id()
        data = [model_object(model_id, self.service.created)] if model_id else []
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request) -> JSONResponse:
        self.authorize(request)
        wanted = request.path_params["model_id"]
        if wanted != self.service.model_id():
            raise ModelNotFound(f"the model {wanted!r} does not exist", param="model")
        return JSONResponse(model_object(wanted, self.service.created))

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": self.service.model_id(),
                             "queued": self.service.worker.queued()})

    async def chat_completions(self, request: Request):
        self.authorize(request)
        body = parse_request(ChatCompletionRequest, await self.read_body(request))
        body.check_supported()
        self.service.require_model(body.model)
        job = await asyncio.to_thread(self.chat_job, body)
        stream = self.service.start(job, asyncio.get_running_loop())
        await self.first_item(stream, request)
        completion_id, model_id = new_id("chatcmpl"), self.service.model_id()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return event_stream(self.chat_events(stream, completion_id, model_id, include_usage))
        reply = ChatReply()
        stats = await self.collect(stream, request, reply.add)
        return JSONResponse(chat_completion(completion_id, model_id, reply.message(),
                                            openai_finish_reason(stats, reply.has_tool_calls), stats))

    async def completions(self, request: Request):
        self.authorize(request)
        body = parse_request(CompletionRequest, await self.read_body(request))
        body.check_supported()
        if body.echo or body.suffix or (body.best_of or 1) > 1:
            param = "echo" if body.echo else "suffix" if body.suffix else "best_of"
            raise BadRequest(f"{param} is not supported by this server", param=param)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise BadRequest("send one prompt per request", param="prompt")
            prompt = prompt[0]
        if not prompt:
            raise BadRequest("the prompt is empty", param="prompt")
        self.service.require_model(body.model)
        sampling, explicit = self.sampling(body, stop=body.stop_strings())
        job = GenerationJob(sampling=sampling, raw_prompt=prompt, max_tokens_explicit=explicit)
        stream = self.service.start(job, asyncio.get_running_loop())
        await self.first_item(stream, request)
        completion_id, model_id, created = new_id("cmpl"), self.service.model_id(), int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return event_stream(self.text_events(stream, completion_id, model_id, created, include_usage))
        parts: list[str] = []
        stats = await self.collect(stream, request,
                                   lambda e: parts.append(e.text) if e.kind == "answer" else None)
        return JSONResponse(text_completion(completion_id, model_id, created, "".join(parts),
                                            openai_finish_reason(stats, False), stats))

    # -- building the job (in a worker thread of the event loop: decoding attachments takes a while) -------

    def chat_job(self, body: ChatCompletionRequest) -> GenerationJob:
        media = MediaFolder()
        try:
            conversation = convert_messages(body.messages, media,
                                            allow_local_files=self.options.allow_local_files)
            tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
            shape, ban, param = reply_shape(body, tools)
            sampling, explicit = self.sampling(body, stop=body.stop_strings())
        except BaseException:
            media.cleanup()
            raise
        return GenerationJob(sampling=sampling, conversation=conversation, tools=tools,
                             enable_thinking=body.enable_thinking(), shape=shape, ban_tool_calls=ban,
                             media=media, shape_param=param, max_tokens_explicit=explicit)

    # -- collecting and streaming --------------------------------------------------------------------------

    async def collect(self, stream: Stream, request: Request, on_event) -> Any:
        """Feed every event to `on_event` until the end; returns the final stats. Cancels on disconnect."""
        stats, watch = None, DisconnectWatch()
        try:
            while True:
                kind, payload = await self.next_item(stream, request, watch)
                if kind == EVENT:
                    if payload.kind == "done":
                        stats = payload.stats
                    else:
                        on_event(payload)
                elif kind == ERROR:
                    await _drain(stream)
                    raise payload
                elif kind == END:
                    return stats
        except BaseException:
            stream.cancel()
            raise

    async def chat_events(self, stream: Stream, completion_id: str, model_id: str,
                          include_usage: bool) -> AsyncIterator[str]:
        created = int(time.time())
        reply = ChatReply()
        stats = None
        try:
            yield _sse(chat_chunk(completion_id, model_id, created, {"role": "assistant", "content": ""}))
            while True:
                kind, payload = await stream.get()
                if kind == END:
                    break
                if kind == ERROR:
                    yield _sse(payload.body())
                    continue
                if payload.kind == "done":
                    stats = payload.stats
                    continue
                delta = reply.add(payload)
                if delta:
                    yield _sse(chat_chunk(completion_id, model_id, created, delta))
            if stats is not None:
                yield _sse(chat_chunk(completion_id, model_id, created, {},
                                      openai_finish_reason(stats, reply.has_tool_calls)))
                if include_usage:
                    yield _sse(usage_chunk(completion_id, model_id, created, stats))
            yield "data: [DONE]\n\n"
        finally:
            stream.cancel()  # the client left (or the stream ended, when this changes nothing)

    async def text_events(self, stream: Stream, completion_id: str, model_id: str, created: int,
                          include_usage: bool) -> AsyncIterator[str]:
        stats = None
        try:
            while True:
                kind, payload = await stream.get()
                if kind == END:
                    break
                if kind == ERROR:
                    yield _sse(payload.body())
                elif payload.kind == "done":
                    stats = payload.stats
                elif payload.kind == "answer" and payload.text:
                    yield _sse(text_completion(completion_id, model_id, created, payload.text, None))
            if stats is not None:
                reason = openai_finish_reason(stats, False)
                yield _sse(text_completion(completion_id, model_id, created, "", reason))
                if include_usage:
                    yield _sse({"id": completion_id, "object": "text_completion", "created": created,
                                "model": model_id, "choices": [], "usage": usage(stats)})
            yield "data: [DONE]\n\n"
        finally:
            stream.cancel()


def reply_shape(body: ChatCompletionRequest,
                tools: Optional[list[dict]]) -> tuple[Optional[ReplyShape], bool, str]:
    """(constraint, ban tool calls, the parameter a bad constraint is blamed on) from tool_choice and
    response_format. "required" and a named tool force calls (with schema-shaped arguments); "auto" with a
    response_format allows calls or JSON; "none" bans the call opener."""
    declared = {t["function"]["name"]: t["function"].get("parameters") for t in tools or []}
    choice = body.tool_choice if body.tool_choice is not None else ("auto" if tools else "none")
    if choice != "none" and not tools and body.tool_choice is not None:
        raise BadRequest("tool_choice needs a list of tools", param="tool_choice")
    schema, param = None, "response_format"
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        schema = {"type": "object"}
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise BadRequest("response_format.json_schema.schema is missing",
                             param="response_format.json_schema")
        schema, param = fmt.json_schema.schema_, "response_format.json_schema.schema"
    called: Optional[list[str]] = None
    if not isinstance(choice, str):
        if choice.function.name not in declared:
            raise BadRequest(f"tool_choice names {choice.function.name!r}, which is not among the tools",
                             param="tool_choice")
        called = [choice.function.name]
    elif choice == "required" or (choice == "auto" and schema is not None and declared):
        called = list(declared)
    if schema is None and not called:
        return None, choice == "none" and bool(tools), param
    forced = called is not None and choice != "auto"
    shape = ReplyShape(json_schema=None if forced else schema,
                       tools=[(name, declared[name]) for name in called] if called else None,
                       tools_or_json=not forced and schema is not None and bool(called),
                       single_call=body.parallel_tool_calls is False, allow_thought=body.enable_thinking())
    return shape, False, "tool_choice" if forced else param


def event_stream(events: AsyncIterator[str]) -> "DisconnectAwareStream":
    """Server-sent events, cancelled when the client leaves."""
    return DisconnectAwareStream(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})


def _sse(data: dict) -> str:
    return "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n"


async def _drain(stream: Stream) -> None:
    """Wait for the job's END so its attachments are gone before the error is answered."""
    while True:
        kind, _ = await stream.get()
        if kind == END:
            return


class ClientGone(APIError):
    """The client left before its answer was ready (nginx's 499; nobody reads the body)."""

    status, code = 499, "client_closed_request"


class DisconnectWatch:
    """Asks the server whether the client left at most every DISCONNECT_POLL_SECONDS."""

    def __init__(self):
        self.checked = time.monotonic()

    async def gone(self, request: Request) -> bool:
        now = time.monotonic()
        if now - self.checked < DISCONNECT_POLL_SECONDS:
            return False
        self.checked = now
        return await request.is_disconnected()


class DisconnectAwareStream(StreamingResponse):
    """A streaming response that always listens for the client leaving (Starlette skips that on ASGI 2.4),
    so a generation is cancelled even while no token is being sent (a long prefill)."""

    async def __call__(self, scope, receive, send) -> None:
        import anyio

        async with anyio.create_task_group() as group:
            async def run_then_stop(step) -> None:
                await step()
                group.cancel_scope.cancel()

            group.start_soon(run_then_stop, lambda: self.stream_response(send))
            await run_then_stop(lambda: self.listen_for_disconnect(receive))


def json_error(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)
