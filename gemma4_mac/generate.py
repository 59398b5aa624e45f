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

from . import speculative
from .prefill import GenerationError
from .prompt import PreparedPrompt, prepare_prompt
from .session import ChatSession

__all__ = ["GenerationError", "GenerationEvent", "GenerationStats", "PreparedPrompt", "ReplyDecoder",
           "SamplingSettings", "TokenPicker", "TokenStep", "generate_tokens", "prepare_prompt", "run_prompt",
           "stream_generate"]


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
    draft: str = "auto"  # speculative decoding: "auto" | "mtp" | "lookup" | "off" (gemma4_mac/speculative.py)


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
    drafted_tokens: int = 0  # speculative decoding: tokens drafted, and how many the model accepted
    accepted_tokens: int = 0
    decode_forwards: int = 0  # forwards of the model while answering, counted when drafting was on


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


class TokenPicker:
    """Logits processors (plus the repetition penalty) and the sampler of one reply: `picker(history, logits)`
    gives (token, logprobs). `history` is the prompt and the tokens sampled so far (needed only when
    `processors` is not empty)."""

    def __init__(self, sampling: SamplingSettings, logits_processors: Optional[list[Callable]] = None):
        self.sampler = make_sampler(temp=sampling.temperature,
                                    top_p=sampling.top_p if sampling.top_p < 1.0 else 0.0,
                                    min_p=sampling.min_p, top_k=sampling.top_k or 0)
        self.processors = list(logits_processors or [])
        if sampling.repetition_penalty and sampling.repetition_penalty != 1.0:
            self.processors += make_logits_processors(repetition_penalty=sampling.repetition_penalty)

    def __call__(self, history: mx.array, logits: mx.array) -> tuple[mx.array, mx.array]:
        for processor in self.processors:
            logits = processor(history, logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return self.sampler(logprobs), logprobs


def generate_tokens(model, first_logits: mx.array, cache: list, sampling: SamplingSettings, *,
                    history: Sequence[int] = (), cancel: Optional[threading.Event] = None,
                    logits_processors: Optional[list[Callable]] = None) -> Iterator[TokenStep]:
    """Yield sampled tokens, starting from the logits of the last prompt position.

    Each yielded token is already in the cache. The next token is computed asynchronously while
    the caller handles the current one.
    """
    if sampling.seed is not None:
        mx.random.seed(sampling.seed)
    picker = TokenPicker(sampling, logits_processors)
    seen = mx.array(list(history), dtype=mx.int32)

    def pick(logits: mx.array):
        return picker(seen, logits)

    token, logprobs = pick(first_logits)
    for _ in range(sampling.max_tokens):
        next_logits = model(token.reshape(1, 1), cache=cache)[:, -1, :]
        if picker.processors:
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


class ReplyDecoder:
    """Sampled tokens in, answer/thought/tool-call events out: end of turn, stop strings, the streaming
    detokenizer and the output parser of one reply. Shared by `run_prompt` and the server's batches."""

    def __init__(self, tokenizer, prepared: PreparedPrompt, sampling: SamplingSettings,
                 stats: GenerationStats):
        self.eos_ids = set(tokenizer.eos_token_ids)
        self.detokenizer = tokenizer.detokenizer
        self.detokenizer.reset()
        self.parser = OutputParser(in_thought=prepared.opens_thought) if prepared.parse_output else None
        self.stops = StopStringWatcher(sampling.stop_strings)
        self.stats = stats
        self.finish = "length"  # until a token says otherwise
        self.saw_tool_call = self.hit_stop = False

    def feed(self, token: int) -> tuple[list[GenerationEvent], bool]:
        """The events one sampled token completes, and whether the reply ended with it."""
        if token in self.eos_ids:
            self.finish = "stop"
            return [], True
        self.stats.generation_tokens += 1
        self.detokenizer.add_token(token)
        text, self.hit_stop = self.stops.feed(self.detokenizer.last_segment)
        events = list(self._emit(text))
        if self.hit_stop:
            self.finish = "stop"
        return events, self.hit_stop

    def close(self) -> list[GenerationEvent]:
        """The text still held back (none after a stop string) and the parser's last events."""
        self.detokenizer.finalize()
        events = []
        if not self.hit_stop:  # text after a stop string is dropped, everything else is flushed
            tail_text, _ = self.stops.feed(self.detokenizer.last_segment)
            events += self._emit(tail_text + self.stops.flush())
        if self.parser is not None:
            events += self._count_calls(_events_from_parser(self.parser.finish()))
        called = self.saw_tool_call and self.finish == "stop"
        self.stats.finish_reason = "tool_calls" if called else self.finish
        return events

    def time(self, started: float, prompt_done: float, first_token_at: float, ended: float,
             reused: int) -> GenerationEvent:
        """Fill in the figures of the reply (perf_counter times) and return its "done" event."""
        stats = self.stats
        stats.time_to_first_token = first_token_at - started
        stats.prompt_tps = (stats.prompt_tokens - reused) / max(prompt_done - started, 1e-9)
        stats.generation_tps = max(stats.generation_tokens - 1, 0) / max(ended - first_token_at, 1e-9)
        stats.peak_memory_bytes = int(mx.get_peak_memory())
        return GenerationEvent("done", stats=stats)

    def _emit(self, text: str) -> list[GenerationEvent]:
        if self.parser is None:
            return [GenerationEvent("answer", text)] if text else []
        return self._count_calls(_events_from_parser(self.parser.feed(text)))

    def _count_calls(self, events: Iterable[GenerationEvent]) -> list[GenerationEvent]:
        events = list(events)
        self.saw_tool_call |= any(event.kind == "tool_call" for event in events)
        return events


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

    reply = ReplyDecoder(tokenizer, prepared, sampling, stats)
    first_token_at = None
    if speculative.applicable(model, sampling, logits_processors):
        steps = speculative.speculative_tokens(model, logits, session, sampling, TokenStep, history=tokens,
                                               cancel=cancel, stats=stats, media=prepared.media,
                                               observers=logits_processors or ())
    else:
        steps = generate_tokens(model, logits, session.cache, sampling, history=tokens, cancel=cancel,
                                logits_processors=logits_processors)
    for step in steps:
        session.append([step.token])
        if first_token_at is None:
            first_token_at = time.perf_counter()
        events, ended = reply.feed(step.token)
        yield from events
        if ended:
            break
        if cancel is not None and cancel.is_set():
            reply.finish = "cancelled"
            break
    steps.close()  # a speculative step may hold tokens the answer did not take: they leave the cache now
    session.mark()
    yield from reply.close()
    ended = time.perf_counter()
    yield reply.time(started, prompt_done, first_token_at or ended, ended, reused)


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
