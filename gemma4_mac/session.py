"""A conversation's KV cache that is never re-read: each turn costs only its new tokens.

The chat template strips earlier thoughts and sliding-window caches cannot be rewound once their
ring wraps, so a plain "trim to the common prefix" fails. Instead the session takes cheap restore
points at turn boundaries: before the generation prompt, after it (before any thought), and at
the end of each answer. Full-attention caches restore by offset; sliding rings by a handle on the
ring that MLX copies only if it is written again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Generator, Optional, Sequence

import mlx.core as mx

from .document_cache import CacheFileError
from .prefill import RESERVE_AFTER_PROMPT, iter_prefill, planned_chunk_size, progress_chunk_size
from .prompt import PreparedPrompt

MAX_RESTORE_POINTS = 8


@dataclass
class RestorePoint:
    """The cache state after the first `n_tokens` tokens of the session."""

    n_tokens: int
    layer_states: list


class ChatSession:
    """One conversation's cache plus the tokens it holds; `kv_bits` (8 or 4) stores keys and values quantized."""

    def __init__(self, model, *, kv_bits: Optional[int] = None, max_restore_points: int = MAX_RESTORE_POINTS):
        self.model = model
        self.kv_bits = kv_bits
        self.max_restore_points = max_restore_points
        self.cache = self._new_cache()
        self.tokens: list[int] = []
        self.restore_points: list[RestorePoint] = []
        self.speculation = None  # what drafting learned in this conversation (speculative.SpeculationState)

    def _new_cache(self) -> list:
        return self.model.make_cache(kv_bits=self.kv_bits) if self.kv_bits else self.model.make_cache()

    def read_prompt(self, prepared: PreparedPrompt, *, cancel: Optional[threading.Event] = None,
                    document_cache=None, model_id: Optional[str] = None,
                    reserve_after: int = RESERVE_AFTER_PROMPT,
                    on_progress: Optional[Callable[[int, int], None]] = None) -> tuple[Optional[mx.array], int]:
        """Make the cache hold all of `prepared`; returns (the last position's logits, prompt tokens reused).

        The longest reusable prefix is kept (from this session, else from the `DocumentCacheStore`
        under `model_id`); the rest is prefilled. Restore points are taken where the generation
        prompt starts (that prefix is also saved to the document cache) and after the prompt.
        `on_progress(read, total)` hears the prompt tokens in the cache before the first chunk and after
        each one. The logits are None when `cancel` was set.
        """
        steps = self.reading(prepared, cancel=cancel, document_cache=document_cache, model_id=model_id,
                             reserve_after=reserve_after)
        while True:
            try:
                read, total = next(steps)
            except StopIteration as done:
                return done.value
            if on_progress is not None:
                on_progress(read, total)

    def reading(self, prepared: PreparedPrompt, *, cancel: Optional[threading.Event] = None,
                document_cache=None, model_id: Optional[str] = None,
                reserve_after: int = RESERVE_AFTER_PROMPT) -> Generator[tuple[int, int], None, tuple]:
        """`read_prompt` step by step: yields (prompt tokens in the cache, prompt tokens) before the first
        chunk and after each one, and returns what `read_prompt` returns."""
        tokens, keys, media = prepared.tokens, prepared.keys, prepared.media
        if document_cache is not None and model_id:
            self.load_saved_prefix(document_cache, model_id, keys)
        reused = self.prepare(keys)
        total = len(tokens)
        # several chunks for a long prompt, so that the person sees the reading advance
        planned = planned_chunk_size(self.model, total, kv_bits=self.kv_bits)
        chunk_size = progress_chunk_size(planned, total - reused)
        yield reused, total

        def report(steps: Generator) -> Generator[tuple[int, int], None, Optional[mx.array]]:
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    return done.value
                yield len(self.tokens), total

        boundary = prepared.generation_prompt_start
        if boundary is not None and reused < boundary < total:
            yield from report(iter_prefill(self.model, tokens[reused:boundary], self.cache, cancel=cancel,
                                           want_logits=False, on_chunk=self.append, media=media,
                                           position=reused, keys=keys[reused:boundary],
                                           chunk_size=chunk_size))
            if len(self.tokens) == boundary:
                self.mark()
                if document_cache is not None and model_id:
                    document_cache.save(model_id, self.tokens, self.cache)
        if cancel is not None and cancel.is_set():
            return None, reused
        done = len(self.tokens)
        logits = yield from report(iter_prefill(self.model, tokens[done:], self.cache, cancel=cancel,
                                                on_chunk=self.append, media=media, position=done,
                                                keys=keys[done:], chunk_size=chunk_size,
                                                reserve_after=reserve_after))
        if logits is not None:
            self.mark()
        return logits, reused

    def mark(self) -> None:
        """Take a restore point at the current position (replacing one at the same position)."""
        n = len(self.tokens)
        self.restore_points = [p for p in self.restore_points if p.n_tokens != n]
        self.restore_points.append(RestorePoint(n, [c.checkpoint() for c in self.cache]))
        self.restore_points.sort(key=lambda p: p.n_tokens)
        if len(self.restore_points) > self.max_restore_points:
            # keep the newest points: older turns are reached through later ones
            self.restore_points = self.restore_points[-self.max_restore_points:]

    def _rewind_to(self, point: RestorePoint) -> None:
        for cache, state in zip(self.cache, point.layer_states):
            cache.restore(state)
        self.tokens = self.tokens[: point.n_tokens]
        self.restore_points = [p for p in self.restore_points if p.n_tokens <= point.n_tokens]

    def reset(self) -> None:
        """Forget everything (a different conversation, or a cache that cannot be reused)."""
        self.cache = self._new_cache()
        self.tokens = []
        self.restore_points = []

    def reusable(self, prompt_tokens: Sequence[int]) -> int:
        """How many of `prompt_tokens` `prepare` would keep in the cache (nothing changes here)."""
        limit = len(prompt_tokens) - 1
        common = 0
        for cached, new in zip(self.tokens, prompt_tokens[:limit]):
            if cached != new:
                break
            common += 1
        if common == len(self.tokens):
            return common
        return max((p.n_tokens for p in self.restore_points if p.n_tokens <= common), default=0)

    def prepare(self, prompt_tokens: Sequence[int]) -> int:
        """Make the cache hold the longest reusable prefix of `prompt_tokens`; returns its length.

        At least one prompt token is always left to feed, since its logits start the answer.
        """
        kept = self.reusable(prompt_tokens)
        if kept == len(self.tokens):
            return kept
        points = [p for p in self.restore_points if p.n_tokens == kept]
        if not points:
            self.reset()
            return 0
        self._rewind_to(points[-1])
        return kept

    def append(self, tokens: Sequence[int]) -> None:
        """Record tokens that have just been run through the model into the cache."""
        self.tokens.extend(int(t) for t in tokens)

    def load_saved_prefix(self, store, model_id: str, prompt_tokens: Sequence[int]) -> int:
        """Into an empty session, memory-map the longest prefix of `prompt_tokens` saved on disk.

        A damaged or foreign file is dropped by the store and the session simply starts empty.
        """
        if self.tokens:
            return 0
        entry = store.lookup(model_id, prompt_tokens)
        if entry is None:
            return 0
        try:
            n = store.load_into(entry, self.cache)
        except CacheFileError:
            self.reset()
            return 0
        self.tokens = [int(t) for t in prompt_tokens[:n]]
        self.mark()
        return n
