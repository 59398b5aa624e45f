"""A conversation's KV cache that is never re-read: each turn costs only its new tokens.

The chat template strips earlier thoughts and sliding-window caches cannot be rewound once their
ring wraps, so a plain "trim to the common prefix" fails. Instead the session takes cheap restore
points at turn boundaries: before the generation prompt, after it (before any thought), and at
the end of each answer. Full-attention caches restore by offset; sliding rings by a handle on the
ring that MLX copies only if it is written again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

MAX_RESTORE_POINTS = 8


@dataclass
class RestorePoint:
    """The cache state after the first `n_tokens` tokens of the session."""

    n_tokens: int
    layer_states: list


class ChatSession:
    """One conversation's cache plus the tokens it holds."""

    def __init__(self, model, max_restore_points: int = MAX_RESTORE_POINTS):
        self.model = model
        self.cache = model.make_cache()
        self.tokens: list[int] = []
        self.max_restore_points = max_restore_points
        self.restore_points: list[RestorePoint] = []

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
        self.cache = self.model.make_cache()
        self.tokens = []
        self.restore_points = []

    def prepare(self, prompt_tokens: Sequence[int]) -> int:
        """Make the cache hold the longest reusable prefix of `prompt_tokens`; returns its length.

        At least one prompt token is always left to feed, since its logits start the answer.
        """
        limit = len(prompt_tokens) - 1
        common = 0
        for cached, new in zip(self.tokens, prompt_tokens[:limit]):
            if cached != new:
                break
            common += 1
        if common == len(self.tokens):
            return common
        candidates = [p for p in self.restore_points if p.n_tokens <= common]
        if not candidates:
            self.reset()
            return 0
        self._rewind_to(candidates[-1])
        return len(self.tokens)

    def append(self, tokens: Sequence[int]) -> None:
        """Record tokens that have just been run through the model into the cache."""
        self.tokens.extend(int(t) for t in tokens)

    def load_saved_prefix(self, store, model_id: str, prompt_tokens: Sequence[int]) -> int:
        """Into an empty session, memory-map the longest prefix of `prompt_tokens` saved on disk.

        A damaged or foreign file is dropped by the store and the session simply starts empty.
        """
        from .document_cache import CacheFileError

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

    @property
    def n_cached(self) -> int:
        return len(self.tokens)

    def cache_bytes(self) -> int:
        """Bytes the cache arrays hold now."""
        return sum(c.nbytes for c in self.cache)


def generation_prompt_boundary(full_prompt: str, without_generation_prompt: Optional[str]) -> Optional[int]:
    """Character index where the generation prompt starts, if the two renderings agree up to it."""
    if without_generation_prompt and full_prompt.startswith(without_generation_prompt):
        return len(without_generation_prompt)
    return None
