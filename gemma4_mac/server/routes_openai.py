"""OpenAI's chat completions and text completions: POST /v1/chat/completions and /v1/completions.

Both take `n` (choices generated one after another from the same prompt cache), `logprobs`, penalties
(frequency and presence over the generated tokens, as OpenAI defines them) and stream as server-sent
events, with a keep-alive comment at once and while the request waits.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Callable, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse

from .chat_spec import ChatSpec, chat_job, sampling_from
from .errors import APIError, BadRequest
from .mcp_tools import answer_with_tools, check_request, with_tools
from .replies import ChatReply
from .routes import Endpoint
from .schemas import (ChatCompletionRequest, CompletionRequest, chat_choice, chat_chunk, chat_completion,
                      new_id, openai_finish_reason, text_choice, text_completion, usage, usage_chunk)
from .service import GenerationJob, Output
from .streaming import collect, event_stream, keepalive_comment, outputs, sse


def chat_spec_of(body: ChatCompletionRequest, default_max_tokens: int) -> ChatSpec:
    """A chat completions request in the neutral form."""
    sampling, explicit = sampling_from(
        temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
        repetition_penalty=body.repetition_penalty, seed=body.seed,
        max_tokens=body.max_completion_tokens or body.max_tokens, default_max_tokens=default_max_tokens,
        stop=body.stop_strings(), draft=body.draft)
    schema, param = None, "response_format"
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        schema = {"type": "object"}
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise BadRequest("response_format.json_schema.schema is missing",
                             param="response_format.json_schema")
        schema, param = fmt.json_schema.schema_, "response_format.json_schema.schema"
    choice = body.tool_choice.model_dump() if hasattr(body.tool_choice, "model_dump") else body.tool_choice
    return ChatSpec(model=body.model, messages=body.messages, sampling=sampling, max_tokens_explicit=explicit,
                    tools=[t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None,
                    tool_choice=choice, parallel_tool_calls=body.parallel_tool_calls, json_schema=schema,
                    json_param=param, enable_thinking=body.enable_thinking(), n=body.n,
                    logprobs=body.logprob_count(), frequency_penalty=body.frequency_penalty or 0.0,
                    presence_penalty=body.presence_penalty or 0.0)


class Choices:
    """Per-choice accumulation of a whole (non-streamed) answer."""

    def __init__(self, count: int):
        self.replies = [ChatReply() for _ in range(count)]
        self.logprobs: list[list[dict]] = [[] for _ in range(count)]
        self.stats: list = [None] * count

    def add(self, output: Output) -> Optional[dict]:
        """The output's streaming delta (None when it adds nothing)."""
        if output.kind == "done":
            self.stats[output.choice] = output.event.stats
            return None
        self.logprobs[output.choice] += output.logprobs
        return self.replies[output.choice].add(output.event)

    def usage(self) -> dict:
        return usage(self.stats[0], self.stats[1:])

    def finish_reason(self, index: int) -> str:
        return openai_finish_reason(self.stats[index], self.replies[index].has_tool_calls)


class OpenAIRoutes(Endpoint):
    """POST /v1/chat/completions and POST /v1/completions."""

    async def chat_completions(self, request: Request):
        self.authorize(request)
        body = await self.read_json(request, ChatCompletionRequest)
        spec = chat_spec_of(body, self.options.default_max_tokens)
        if body.mcp_tools:
            return await self.chat_with_mcp_tools(request, body, spec)
        job = await asyncio.to_thread(chat_job, spec, allow_local_files=self.options.allow_local_files)
        opening = await self.begin(job, body.model, body.stream)
        completion_id = new_id("chatcmpl")
        model_id = self.service.library.find(body.model).id
        with_logprobs = spec.logprobs is not None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return event_stream(self.chat_events(opening, completion_id, model_id, spec.n, include_usage,
                                                 with_logprobs))
        choices = Choices(spec.n)
        for output in await collect(opening, request):
            choices.add(output)
        answer = [chat_choice(i, choices.replies[i].message(), choices.finish_reason(i),
                              choices.logprobs[i] if with_logprobs else None) for i in range(spec.n)]
        return JSONResponse(chat_completion(completion_id, model_id, answer, choices.usage()))

    async def chat_with_mcp_tools(self, request: Request, body: ChatCompletionRequest, spec: ChatSpec):
        """A chat completion with the person's MCP tools, run by the server between turns (mcp_tools.py)."""
        registry = self.options.tools() if self.options.tools is not None else None
        check_request(spec, body.stream, registry)

        async def turn(messages: list[dict], tools: Optional[list[dict]]) -> Choices:
            job = await asyncio.to_thread(chat_job, with_tools(spec, messages, tools),
                                          allow_local_files=self.options.allow_local_files)
            choices = Choices(1)
            for output in await collect(await self.begin(job, body.model, False), request):
                choices.add(output)
            return choices

        message, reason, total, calls, added = await answer_with_tools(spec, registry, turn)
        model_id = self.service.library.find(body.model).id
        reply = chat_completion(new_id("chatcmpl"), model_id, [chat_choice(0, message, reason, None)], total)
        return JSONResponse({**reply, "mcp_calls": calls, "mcp_messages": added})

    async def events(self, opening, render: Callable[[Output], list[dict]],
                     tail: Callable[[], list[dict]]) -> AsyncIterator[str]:
        """OpenAI's stream: a keep-alive at once (headers and a first byte, even while queued) and while
        waiting, each output's chunks from `render`, the `tail` chunks, an error as a data event, [DONE]."""
        yield keepalive_comment()
        try:
            async for output in outputs(opening, keepalive=self.options.keepalive_seconds):
                if output is None:
                    yield keepalive_comment()
                    continue
                for chunk in render(output):
                    yield sse(chunk)
            for chunk in tail():
                yield sse(chunk)
        except APIError as error:
            yield sse(error.body())
        yield "data: [DONE]\n\n"

    def chat_events(self, opening, completion_id: str, model_id: str, count: int, include_usage: bool,
                    with_logprobs: bool) -> AsyncIterator[str]:
        created = int(time.time())
        choices = Choices(count)
        started: set[int] = set()

        def chunk(delta: dict, index: int, finish: Optional[str] = None, logprobs=None) -> dict:
            return chat_chunk(completion_id, model_id, created, delta, finish, index=index,
                              logprobs=logprobs if with_logprobs else None)

        def render(output: Output) -> list[dict]:
            index, chunks = output.choice, []
            if index not in started:
                started.add(index)
                chunks.append(chunk({"role": "assistant", "content": ""}, index, logprobs=[]))
            delta = choices.add(output)
            if delta:
                chunks.append(chunk(delta, index, logprobs=output.logprobs))
            elif output.kind == "done":
                chunks.append(chat_chunk(completion_id, model_id, created, {}, choices.finish_reason(index),
                                         index=index))
            return chunks

        def tail() -> list[dict]:
            return [usage_chunk(completion_id, model_id, created, choices.usage())] if include_usage else []

        return self.events(opening, render, tail)

    async def completions(self, request: Request):
        self.authorize(request)
        body = await self.read_json(request, CompletionRequest)
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
        sampling, explicit = sampling_from(
            temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
            repetition_penalty=body.repetition_penalty, seed=body.seed, max_tokens=body.max_tokens,
            default_max_tokens=self.options.default_max_tokens, stop=body.stop_strings(), draft=body.draft)
        job = GenerationJob(sampling=sampling, raw_prompt=prompt, max_tokens_explicit=explicit, n=body.n,
                            logprobs=body.logprobs, frequency_penalty=body.frequency_penalty or 0.0,
                            presence_penalty=body.presence_penalty or 0.0)
        opening = await self.begin(job, body.model, body.stream)
        completion_id, created = new_id("cmpl"), int(time.time())
        model_id = self.service.library.find(body.model).id
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return event_stream(self.text_events(opening, completion_id, model_id, created, body.n,
                                                 include_usage, body.logprobs is not None))
        texts, logprobs, stats = [""] * body.n, [[] for _ in range(body.n)], [None] * body.n
        for output in await collect(opening, request):
            if output.kind == "done":
                stats[output.choice] = output.event.stats
            elif output.kind == "answer":
                texts[output.choice] += output.event.text
                logprobs[output.choice] += output.logprobs
        choices = [text_choice(i, texts[i], openai_finish_reason(stats[i], False),
                               logprobs[i] if body.logprobs is not None else None) for i in range(body.n)]
        return JSONResponse(text_completion(completion_id, model_id, created, choices,
                                            usage(stats[0], stats[1:])))

    def text_events(self, opening, completion_id: str, model_id: str, created: int, count: int,
                    include_usage: bool, with_logprobs: bool) -> AsyncIterator[str]:
        stats, offsets = [None] * count, [0] * count

        def render(output: Output) -> list[dict]:
            index = output.choice
            if output.kind == "done":
                stats[index] = output.event.stats
                choice = text_choice(index, "", openai_finish_reason(stats[index], False), None)
            elif output.kind == "answer" and output.event.text:
                logprobs = output.logprobs if with_logprobs else None
                choice = text_choice(index, output.event.text, None, logprobs, offsets[index])
                offsets[index] += len(output.event.text)
            else:
                return []
            return [text_completion(completion_id, model_id, created, [choice])]

        def tail() -> list[dict]:
            if not include_usage:
                return []
            total = usage(stats[0], stats[1:])
            return [usage_chunk(completion_id, model_id, created, total, kind="text_completion")]

        return self.events(opening, render, tail)
