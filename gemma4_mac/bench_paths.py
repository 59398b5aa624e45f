"""What the benchmark runs on each side: the path each side's users actually take.

Ours: the app's path, a `ChatSession` reading the prompt with its chunk policy (`planned_chunk_size`)
and `generate_tokens` answering. mlx-lm: `mlx_lm.generate.generate_step` with its defaults (2048-token
prefill steps, 16-bit KV unless asked), and for multi-turn chat its two practices: trimming the cached
prefix (its server) and keeping a copy of the cache at the turn boundary.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Optional

import mlx.core as mx

from mlx_model.planner import kv_bytes, prefill_scratch_bytes

from .generate import SamplingSettings, generate_tokens
from .prefill import RESERVE_AFTER_PROMPT, activation_bytes, planned_chunk_size, prefill
from .prompt import PreparedPrompt
from .session import ChatSession

THOUGHT_OPEN, THOUGHT_CLOSE, END_OF_TURN = 100, 101, 106


@dataclass
class Run:
    """One measured answer: prompt tokens/s (to the first token), decode tokens/s, peak beyond weights."""

    prefill_tps: float
    decode_tps: float
    peak_bytes: int
    chunk: Optional[int] = None


def measured(answer: Callable[[], tuple[float, float, Optional[int]]], n_prompt: int, n_decode: int) -> Run:
    """Run `answer` (returning first-token seconds, decode seconds, chunk) with MLX's peak counter reset;
    the peak is counted beyond what was allocated before (the weights)."""
    mx.clear_cache()
    mx.reset_peak_memory()
    baseline = mx.get_active_memory()
    ttft, decode_s, chunk = answer()
    peak = mx.get_peak_memory() - baseline
    mx.clear_cache()
    return Run(n_prompt / ttft, n_decode / max(decode_s, 1e-9), int(peak), chunk)


def ours(
    model,
    tokens: list[int],
    n_decode: int,
    kv_bits: Optional[int] = None,
    available_bytes: Optional[int] = None,
) -> Run:
    """The app's path: a chat session reads the prompt in planned chunks, then greedy decoding."""

    def answer():
        session = ChatSession(model, kv_bits=kv_bits)
        chunk = planned_chunk_size(model, len(tokens), available_bytes, kv_bits)
        start = time.perf_counter()
        if available_bytes is None:
            logits, _ = session.read_prompt(PreparedPrompt(tokens=list(tokens)))
        else:  # the same policy, told how much memory is free
            logits = prefill(model, tokens, session.cache, chunk_size=chunk)
        steps = generate_tokens(
            model, logits, session.cache, SamplingSettings(temperature=0.0, max_tokens=n_decode + 1)
        )
        next(steps)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        for _ in steps:
            pass
        return ttft, time.perf_counter() - start, chunk

    return measured(answer, len(tokens), n_decode)


def mlx_lm(model, tokens: list[int], n_decode: int, kv_bits: Optional[int] = None) -> Run:
    """mlx-lm's path: `generate_step` with its defaults (greedy)."""
    from mlx_lm.generate import generate_step

    def answer():
        start = time.perf_counter()
        steps = generate_step(mx.array(tokens), model, max_tokens=n_decode + 1, kv_bits=kv_bits)
        next(steps)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        for _ in steps:
            pass
        return ttft, time.perf_counter() - start, 2048

    return measured(answer, len(tokens), n_decode)


def planner_estimate(model, context: int, chunk: int, kv_bits: Optional[int] = None) -> int:
    """The planner's bytes beyond the weights for our path at `context` tokens (KV with the answer's
    reserve, plus one chunk's scratch)."""
    config = model.config.text_config
    size = activation_bytes(model)
    return kv_bytes(
        config, context + RESERVE_AFTER_PROMPT, kv_bits, float_bytes=size
    ) + prefill_scratch_bytes(config, chunk, context, float_bytes=size, kv_bits=kv_bits)


# Third turn of a chat about a long document (thinking mode: earlier thoughts are dropped).


def _turn_tokens(thought, answer):
    return [THOUGHT_OPEN] + thought + [THOUGHT_CLOSE] + answer + [END_OF_TURN]


def third_turn_ours(model, doc, questions, thought, answer) -> float:
    """The app: restore points at the generation prompt, so the next turn rewinds past the thought."""
    session = ChatSession(model)
    history: list[int] = []
    ttft = 0.0
    for turn, question in enumerate(questions):
        full = history + (doc if turn == 0 else []) + question
        start = time.perf_counter()
        prepared = PreparedPrompt(tokens=full, generation_prompt_start=len(full) - 2)
        logits, _ = session.read_prompt(prepared)
        mx.eval(mx.argmax(logits, axis=-1))
        ttft = time.perf_counter() - start
        for token in _turn_tokens(thought, answer):
            model(mx.array([[token]]), cache=session.cache)
            session.append([token])
        mx.eval([c.state for c in session.cache])
        history = full + answer + [END_OF_TURN]
    return ttft


def _first_token_mlx_lm(model, tokens, cache) -> None:
    """`generate_step` over `tokens` into `cache`; returns once the first token is out. It has then
    also fed that token to the cache (it computes one step ahead)."""
    from mlx_lm.generate import generate_step

    steps = generate_step(mx.array(tokens), model, max_tokens=1, prompt_cache=cache)
    next(steps)


def _read_mlx_lm(model, tokens, cache, step: int = 2048) -> None:
    """Tokens into the cache as `generate_step` reads a prompt (2048-token steps), without generating."""
    for lo in range(0, len(tokens), step):
        model(mx.array([tokens[lo : lo + step]]), cache=cache)
        mx.eval([c.state for c in cache])
        mx.clear_cache()


def third_turn_mlx_lm_trim(model, doc, questions, thought, answer) -> float:
    """mlx-lm's server practice: extend or trim the cached prefix, else start over."""
    from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

    cache, cached, history, ttft = make_prompt_cache(model), [], [], 0.0
    for turn, question in enumerate(questions):
        full = history + (doc if turn == 0 else []) + question
        start = time.perf_counter()
        common = 0
        for a, b in zip(cached, full[:-1]):
            if a != b:
                break
            common += 1
        if common < len(cached):
            if (
                can_trim_prompt_cache(cache)
                and trim_prompt_cache(cache, len(cached) - common) == len(cached) - common
            ):
                cached = cached[:common]
            else:
                cache, cached = make_prompt_cache(model), []
        _first_token_mlx_lm(model, full[len(cached) :], cache)
        ttft = time.perf_counter() - start
        generated = _turn_tokens(thought, answer)
        for token in generated[1:]:  # the first one is in the cache already
            model(mx.array([[token]]), cache=cache)
        mx.eval([c.state for c in cache])
        cached = full + generated
        history = full + answer + [END_OF_TURN]
    return ttft


def third_turn_mlx_lm_copy(model, doc, questions, thought, answer) -> float:
    """The best an mlx-lm user can do by hand: read each prompt but its last token, deep-copy the cache
    there (the turn boundary), then generate; the next turn resumes from the copy."""
    from mlx_lm.models.cache import make_prompt_cache

    saved, saved_tokens, history, ttft = None, [], [], 0.0
    for turn, question in enumerate(questions):
        full = history + (doc if turn == 0 else []) + question
        start = time.perf_counter()
        reuse = saved is not None and full[: len(saved_tokens)] == saved_tokens
        cache = copy.deepcopy(saved) if reuse else make_prompt_cache(model)
        _read_mlx_lm(model, full[len(saved_tokens) if reuse else 0 : -1], cache)
        saved, saved_tokens = copy.deepcopy(cache), full[:-1]
        _first_token_mlx_lm(model, full[-1:], cache)
        ttft = time.perf_counter() - start
        for token in _turn_tokens(thought, answer)[1:]:
            model(mx.array([[token]]), cache=cache)
        mx.eval([c.state for c in cache])
        history = full + answer + [END_OF_TURN]
    return ttft
