"""Streaming generation: prompt in, a stream of answer/thought/tool-call events out.

Sampling and the streaming detokenizer are mlx-lm's generic machinery; the prompt, caches and
event stream are ours. All of it must run on the thread that owns the model (MLX streams are
per thread).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Sequence

import mlx.core as mx
from mlx_lm.sample_utils import make_logits_processors, make_sampler

from mlx_model.chat_format import AnswerDelta, OutputParser, ThoughtDelta, ToolCall

from .prefill import GenerationError
from .prompt import PreparedPrompt, prepare_prompt
from .session import ChatSession

__all__ = ["GenerationError", "GenerationEvent", "GenerationStats", "PreparedPrompt", "SamplingSettings", "TokenStep",
           "generate_tokens", "prepare_prompt", "run_prompt", "stream_generate"]


@dataclass
class SamplingSettings:
    """How the next token is picked; temperature 0 means greedy."""

    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 64
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    max_tokens: int = 2048
    stop_strings: tuple[str, ...] = ()


@dataclass
class GenerationStats:
    """Figures shown under each answer."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    time_to_first_token: float = 0.0
    peak_memory_bytes: int = 0
    finish_reason: str = "stop"  # "stop" | "length" | "cancelled" | "tool_calls"
    cached_tokens: int = 0


@dataclass
class GenerationEvent:
    """One step of the stream: reading progress, answer or thought text, a parsed tool call, or the end.

    A "progress" event carries (prompt tokens in the cache, prompt tokens) before the prompt is read
    and after each chunk of it."""

    kind: str  # "progress" | "answer" | "thought" | "tool_call" | "notice" | "done"
    text: str = ""
    tool_call: Optional[dict] = None
    token_ids: list[int] = field(default_factory=list)
    stats: Optional[GenerationStats] = None
    progress: Optional[tuple[int, int]] = None


@dataclass
class TokenStep:
    """One generated token with the time it became available."""

    token: int
    logprobs: Optional[mx.array] = None


def generate_tokens(model, first_logits: mx.array, cache: list, sampling: SamplingSettings, *,
                    history: Sequence[int] = (), cancel: Optional[threading.Event] = None,
                    logits_processors: Optional[list[Callable]] = None) -> Iterator[TokenStep]:
    """Yield sampled tokens, starting from the logits of the last prompt position.

    Each yielded token is already in the cache. The next token is computed asynchronously while
    the caller handles the current one.
    """
    if sampling.seed is not None:
        mx.random.seed(sampling.seed)
    sampler = make_sampler(temp=sampling.temperature, top_p=sampling.top_p if sampling.top_p < 1.0 else 0.0,
                           min_p=sampling.min_p, top_k=sampling.top_k or 0)
    processors = list(logits_processors or [])
    if sampling.repetition_penalty and sampling.repetition_penalty != 1.0:
        processors += make_logits_processors(repetition_penalty=sampling.repetition_penalty)
    seen = mx.array(list(history), dtype=mx.int32)

    def pick(logits: mx.array):
        for processor in processors:
            logits = processor(seen, logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return sampler(logprobs), logprobs

    token, logprobs = pick(first_logits)
    for _ in range(sampling.max_tokens):
        next_logits = model(token.reshape(1, 1), cache=cache)[:, -1, :]
        if processors:
            seen = mx.concatenate([seen, token.reshape(-1).astype(mx.int32)])
        next_token, next_logprobs = pick(next_logits)
        mx.async_eval(next_token, next_logprobs)
        yield TokenStep(int(token.item()), logprobs)
        if cancel is not None and cancel.is_set():
            return
        token, logprobs = next_token, next_logprobs


class StopStringWatcher:
    """Holds back text that could be the start of a stop string; reports when one completes."""

    def __init__(self, stop_strings: Iterable[str]):
        self.stop_strings = [s for s in stop_strings if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        if not self.stop_strings:
            return text, False
        self.pending += text
        for stop in self.stop_strings:
            at = self.pending.find(stop)
            if at >= 0:
                out, self.pending = self.pending[:at], ""
                return out, True
        hold = max((len(s) - 1 for s in self.stop_strings), default=0)
        cut = len(self.pending)
        for k in range(min(hold, len(self.pending)), 0, -1):
            if any(s.startswith(self.pending[-k:]) for s in self.stop_strings):
                cut = len(self.pending) - k
                break
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _events_from_parser(parsed) -> Iterator[GenerationEvent]:
    for item in parsed:
        if isinstance(item, AnswerDelta) and item.text:
            yield GenerationEvent("answer", item.text)
        elif isinstance(item, ThoughtDelta) and item.text:
            yield GenerationEvent("thought", item.text)
        elif isinstance(item, ToolCall):
            yield GenerationEvent("tool_call", tool_call=item.as_dict())


def run_prompt(model, processor, prepared: PreparedPrompt, sampling: SamplingSettings, *,
               session=None, cancel: Optional[threading.Event] = None,
               logits_processors: Optional[list[Callable]] = None,
               document_cache=None, model_id: Optional[str] = None) -> Iterator[GenerationEvent]:
    """Prefill what the cache lacks (with "progress" events), generate, and stream parsed events ending
    with "done".

    With a `ChatSession`, the cached prefix is reused and restore points are taken at the
    generation-prompt boundary, after the prompt and at the end of the answer. With a
    `DocumentCacheStore` (and the model's fingerprint), a long prompt prefix is read back from
    disk when the session is empty, and saved there after it was computed.
    """
    tokenizer = processor.tokenizer
    session = session if session is not None else ChatSession(model)
    tokens = prepared.tokens
    for note in prepared.notes:  # e.g. a long recording split into 30 s clips: the person is told
        yield GenerationEvent("notice", note)
    mx.reset_peak_memory()
    started = time.perf_counter()
    reading = session.reading(prepared, cancel=cancel, document_cache=document_cache, model_id=model_id,
                              reserve_after=min(sampling.max_tokens, 4096))
    while True:
        try:
            read, total = next(reading)
        except StopIteration as done:
            logits, reused = done.value
            break
        yield GenerationEvent("progress", progress=(read, total))
    stats = GenerationStats(prompt_tokens=len(tokens), cached_tokens=reused)
    if logits is None:
        stats.finish_reason = "cancelled"
        yield GenerationEvent("done", stats=stats)
        return
    prompt_done = time.perf_counter()

    eos_ids = set(tokenizer.eos_token_ids)
    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    parser = OutputParser(in_thought=prepared.opens_thought) if prepared.parse_output else None
    stops = StopStringWatcher(sampling.stop_strings)
    first_token_at = None
    finish = "length"
    saw_tool_call = hit_stop = False

    def emit(text: str) -> Iterator[GenerationEvent]:
        nonlocal saw_tool_call
        if parser is None:
            if text:
                yield GenerationEvent("answer", text)
            return
        for event in _events_from_parser(parser.feed(text)):
            saw_tool_call |= event.kind == "tool_call"
            yield event

    for step in generate_tokens(model, logits, session.cache, sampling, history=tokens, cancel=cancel,
                                logits_processors=logits_processors):
        session.append([step.token])
        if first_token_at is None:
            first_token_at = time.perf_counter()
        if step.token in eos_ids:
            finish = "stop"
            break
        stats.generation_tokens += 1
        detokenizer.add_token(step.token)
        text, hit_stop = stops.feed(detokenizer.last_segment)
        yield from emit(text)
        if hit_stop:
            finish = "stop"
            break
        if cancel is not None and cancel.is_set():
            finish = "cancelled"
            break
    session.mark()
    detokenizer.finalize()
    if not hit_stop:  # text after a stop string is dropped, everything else is flushed
        tail_text, _ = stops.feed(detokenizer.last_segment)
        yield from emit(tail_text + stops.flush())
    if parser is not None:
        for event in _events_from_parser(parser.finish()):
            saw_tool_call |= event.kind == "tool_call"
            yield event
    ended = time.perf_counter()
    first_token_at = first_token_at or ended
    stats.time_to_first_token = first_token_at - started
    stats.prompt_tps = (len(tokens) - reused) / max(prompt_done - started, 1e-9)
    stats.generation_tps = max(stats.generation_tokens - 1, 0) / max(ended - first_token_at, 1e-9)
    stats.peak_memory_bytes = int(mx.get_peak_memory())
    stats.finish_reason = "tool_calls" if (saw_tool_call and finish == "stop") else finish
    yield GenerationEvent("done", stats=stats)


def stream_generate(model, processor, messages: Optional[list[dict]] = None, *, prompt: Optional[str] = None,
                    tools: Optional[list[dict]] = None, enable_thinking: bool = False,
                    sampling: SamplingSettings = SamplingSettings(),
                    cancel: Optional[threading.Event] = None, session=None, document_cache=None,
                    model_id: Optional[str] = None) -> Iterator[GenerationEvent]:
    """Render `messages` with the model's chat format (or take a raw `prompt`) and stream the reply.

    Pass the conversation's `ChatSession` to reuse its cache across turns, and a
    `DocumentCacheStore` with the model's fingerprint to reuse long prefixes across sessions.
    """
    prepared = prepare_prompt(processor, messages, prompt=prompt, tools=tools, enable_thinking=enable_thinking)
    yield from run_prompt(model, processor, prepared, sampling, session=session, cancel=cancel,
                          document_cache=document_cache, model_id=model_id)
