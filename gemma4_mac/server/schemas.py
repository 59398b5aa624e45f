"""Request bodies of the OpenAI API as pydantic models, and the response objects as plain dicts.

Unknown fields are ignored (clients send many we have no use for); fields whose meaning we cannot
honour (echo, suffix, best_of) are refused with a 400 rather than silently dropped.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import BadRequest

MAX_STOP_STRINGS = 16
MAX_CHOICES = 8
# speculative decoding per request (gemma4_mac/speculative.py): same answer, drafted where it pays
DraftMode = Literal["auto", "mtp", "lookup", "off"]


class Lenient(BaseModel):
    """A request body that ignores the fields it does not know (clients send many)."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(Lenient):
    include_usage: bool = False


class FunctionDefinition(Lenient):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(Lenient):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedToolChoiceFunction(Lenient):
    name: str


class NamedToolChoice(Lenient):
    type: Literal["function"] = "function"
    function: NamedToolChoiceFunction


class JsonSchemaSpec(Lenient):
    name: str = "response"
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaSpec] = None


class _SamplingFields(Lenient):
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0)
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: Optional[float] = Field(default=None, gt=0.0)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    seed: Optional[int] = None
    draft: Optional[DraftMode] = None
    stop: Optional[Union[str, list[str]]] = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    user: Optional[str] = None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > MAX_STOP_STRINGS:
            raise BadRequest(f"at most {MAX_STOP_STRINGS} stop strings are allowed", param="stop")
        return tuple(s for s in stops if s)


class ChatCompletionRequest(_SamplingFields):
    messages: list[dict[str, Any]] = Field(min_length=1)
    mcp_tools: bool = False  # this app's extension: the person's MCP tools too, run by the server
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[ResponseFormat] = None
    reasoning_effort: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)

    def logprob_count(self) -> Optional[int]:
        """None without logprobs, else how many alternatives each token lists."""
        if not self.logprobs:
            if self.top_logprobs:
                raise BadRequest("top_logprobs needs logprobs: true", param="top_logprobs")
            return None
        return self.top_logprobs or 0

    def enable_thinking(self) -> bool:
        """Thinking is off unless asked for: `reasoning_effort` other than none/minimal, or
        `chat_template_kwargs.enable_thinking` (vLLM's spelling)."""
        kwargs = self.chat_template_kwargs or {}
        if "enable_thinking" in kwargs:
            return bool(kwargs["enable_thinking"])
        return self.reasoning_effort is not None and self.reasoning_effort not in ("none", "minimal")


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str], list[int]]
    echo: bool = False
    suffix: Optional[str] = None
    best_of: Optional[int] = None
    logprobs: Optional[int] = Field(default=None, ge=0, le=5)


def parse_request(model_class: type[BaseModel], body: Union[str, bytes]):
    """The request body as `model_class`, or BadRequest naming the first faulty field."""
    try:
        data = json.loads(body or "null")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"the request body is not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return model_class.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise BadRequest(f"{param or 'body'}: {first['msg']}", param=param) from error


# ------------------------------------------------------------------------------------------ responses

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(stats, more: Sequence = ()) -> dict:
    """OpenAI's usage block from GenerationStats (with the reused prefix as cached tokens); `more` are the
    stats of further choices of the same prompt (their tokens are added, the prompt counted once)."""
    if stats is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    prompt = int(stats.prompt_tokens)
    completion = int(stats.generation_tokens) + sum(int(s.generation_tokens) for s in more if s is not None)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(getattr(stats, "cached_tokens", 0))}}


def openai_finish_reason(stats, saw_tool_call: bool) -> str:
    """stop | length | tool_calls (a cancelled run only reaches a client that is still there: stop)."""
    reason = getattr(stats, "finish_reason", "stop") if stats is not None else "stop"
    if saw_tool_call and reason in ("stop", "tool_calls"):
        return "tool_calls"
    return "length" if reason == "length" else "stop"


def chat_completion(completion_id: str, model_id: str, choices: list[dict], stats_usage: dict) -> dict:
    return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model_id,
            "system_fingerprint": None, "choices": choices, "usage": stats_usage}


def chat_choice(index: int, message: dict, finish_reason: str, logprobs: Optional[list[dict]]) -> dict:
    return {"index": index, "message": message, "finish_reason": finish_reason,
            "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None}}


def chat_chunk(completion_id: str, model_id: str, created: int, delta: dict,
               finish_reason: Optional[str] = None, *, index: int = 0,
               logprobs: Optional[list[dict]] = None) -> dict:
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
            "system_fingerprint": None,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason,
                         "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None}}]}


def usage_chunk(completion_id: str, model_id: str, created: int, stats_usage: dict,
                kind: str = "chat.completion.chunk") -> dict:
    return {"id": completion_id, "object": kind, "created": created, "model": model_id,
            "choices": [], "usage": stats_usage}


def text_choice(index: int, text: str, finish_reason: Optional[str], logprobs: Optional[list[dict]],
                offset: int = 0) -> dict:
    """A /v1/completions choice; logprobs in that API's older layout (tokens, token_logprobs, ...)."""
    legacy = None
    if logprobs is not None:
        offsets, at = [], offset
        for entry in logprobs:
            offsets.append(at)
            at += len(entry["token"])
        legacy = {"tokens": [e["token"] for e in logprobs],
                  "token_logprobs": [e["logprob"] for e in logprobs],
                  "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in logprobs],
                  "text_offset": offsets}
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": legacy}


def text_completion(completion_id: str, model_id: str, created: int, choices: list[dict],
                    stats_usage: Optional[dict] = None) -> dict:
    out = {"id": completion_id, "object": "text_completion", "created": created, "model": model_id,
           "choices": choices}
    if stats_usage is not None:
        out["usage"] = stats_usage
    return out
