"""A chat request in one API-neutral form, and the generation job it becomes.

Each API's routes (chat completions, responses, messages) turn their request body into a `ChatSpec`:
OpenAI-style messages and function tools, the tool choice, an optional JSON schema for the answer,
thinking, sampling and the per-choice extras. `reply_shape` decides the constraint on the reply,
`chat_job` converts the messages (attachments decoded to temporary files) into a `GenerationJob`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..constrained import ReplyShape
from ..generate import SamplingSettings
from .errors import BadRequest
from .messages import MediaFolder, convert_messages
from .service import GenerationJob


@dataclass
class ChatSpec:
    """What a chat request asks for, whichever API it came through."""

    model: str
    messages: list[dict]  # OpenAI chat messages
    sampling: SamplingSettings
    max_tokens_explicit: bool = False
    tools: Optional[list[dict]] = None  # [{"type": "function", "function": {"name", "parameters", ...}}]
    tool_choice: Any = None  # "none" | "auto" | "required" | {"type": "function", "function": {"name"}}
    tool_choice_param: str = "tool_choice"
    parallel_tool_calls: Optional[bool] = None
    json_schema: Optional[dict] = None  # the answer must be JSON fitting this schema
    json_param: str = "response_format"
    enable_thinking: bool = False
    n: int = 1
    logprobs: Optional[int] = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0


def reply_shape(spec: ChatSpec) -> tuple[Optional[ReplyShape], bool, str]:
    """(constraint, ban tool calls, the parameter a bad constraint is blamed on) from the tool choice and
    the JSON schema. "required" and a named tool force calls; "auto" lets the model write text or call,
    and a call it writes follows its tool's schema (with a JSON schema: calls or that JSON); "none" bans
    the call opener."""
    tools = spec.tools or []
    declared = {t["function"]["name"]: t["function"].get("parameters") for t in tools}
    choice = spec.tool_choice if spec.tool_choice is not None else ("auto" if tools else "none")
    if choice != "none" and not tools and spec.tool_choice is not None:
        raise BadRequest("tool_choice needs a list of tools", param=spec.tool_choice_param)
    schema, param = spec.json_schema, spec.json_param
    called: Optional[list[str]] = None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name not in declared:
            raise BadRequest(f"tool_choice names {name!r}, which is not among the tools",
                             param=spec.tool_choice_param)
        called = [name]
    elif choice in ("required", "auto") and declared:
        called = list(declared)
    elif choice not in ("none", "auto", "required"):
        raise BadRequest(f"tool_choice {choice!r} is not one of none, auto, required or a named function",
                         param=spec.tool_choice_param)
    if schema is None and not called:
        return None, choice == "none" and bool(tools), param
    forced = called is not None and choice != "auto"
    shape = ReplyShape(json_schema=None if forced else schema,
                       tools=[(name, declared[name]) for name in called] if called else None,
                       tools_or_json=not forced and schema is not None and bool(called),
                       free_text=choice == "auto" and schema is None and bool(called),
                       single_call=spec.parallel_tool_calls is False,
                       # with tools a thought may open the reply even with thinking off (26B/31B write an
                       # empty one); JSON alone keeps to thinking, so a vocabulary without thought tokens
                       # (Gemma 3) can still be held to a schema
                       allow_thought=spec.enable_thinking or bool(called))
    return shape, False, spec.tool_choice_param if forced or shape.free_text else param


def chat_job(spec: ChatSpec, *, allow_local_files: bool) -> GenerationJob:
    """The generation job for a chat request (blocking: decodes attachments; run it on a worker thread)."""
    media = MediaFolder()
    try:
        conversation = convert_messages(spec.messages, media, allow_local_files=allow_local_files)
        shape, ban, param = reply_shape(spec)
    except BaseException:
        media.cleanup()
        raise
    return GenerationJob(sampling=spec.sampling, conversation=conversation, tools=spec.tools or None,
                         enable_thinking=spec.enable_thinking, shape=shape, ban_tool_calls=ban, media=media,
                         shape_param=param, max_tokens_explicit=spec.max_tokens_explicit, n=spec.n,
                         logprobs=spec.logprobs, frequency_penalty=spec.frequency_penalty,
                         presence_penalty=spec.presence_penalty)


def sampling_from(*, temperature: Optional[float], top_p: Optional[float], top_k: Optional[int] = None,
                  min_p: Optional[float] = None, repetition_penalty: Optional[float] = None,
                  seed: Optional[int] = None, max_tokens: Optional[int], default_max_tokens: int,
                  stop: tuple[str, ...] = (), draft: Optional[str] = None) -> tuple[SamplingSettings, bool]:
    """Sampling settings from a request (Gemma's defaults where it is silent); and whether max_tokens
    was given."""
    defaults = SamplingSettings()
    return SamplingSettings(
        temperature=defaults.temperature if temperature is None else temperature,
        top_p=defaults.top_p if top_p is None else top_p,
        top_k=defaults.top_k if top_k is None else top_k,
        min_p=defaults.min_p if min_p is None else min_p,
        repetition_penalty=repetition_penalty or 1.0,
        seed=seed,
        max_tokens=max_tokens or default_max_tokens,
        stop_strings=stop,
        draft=defaults.draft if draft is None else draft,
    ), max_tokens is not None
