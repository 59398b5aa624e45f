"""Conversation caches for API clients, matched by prompt prefix.

OpenAI clients resend the whole conversation each turn and name no conversation, so the pool keeps
a few `ChatSession`s and gives each request the one whose tokens share the longest prefix with its
prompt: a client's next turn lands on its own cache and costs only the new tokens. Two sessions never
serve one request, and a session with attachments only matches a prompt with the same attachments
in the same order (placeholder tokens are equal for every image, so tokens alone cannot tell).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

DEFAULT_SESSIONS = 2


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the shared start of two token lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class PooledSession:
    session: object  # a gemma4_mac.session.ChatSession
    media_digests: list[str] = field(default_factory=list)
    last_used: int = 0


class SessionPool:
    """Up to `size` conversation caches of one model; least recently used goes first.

    Used only on the model thread, so it needs no lock. `make_session(model)` builds an empty one
    (the ChatSession class by default; the window's engine may pass its own factory).
    """

    def __init__(self, size: int = DEFAULT_SESSIONS, make_session: Optional[Callable] = None):
        if size < 1:
            raise ValueError("the session pool needs room for at least one conversation")
        self.size = size
        self.make_session = make_session
        self.entries: list[PooledSession] = []
        self._model = None
        self._clock = itertools.count(1)

    def _new(self, model) -> object:
        if self.make_session is not None:
            return self.make_session(model)
        from ..session import ChatSession

        return ChatSession(model)

    def acquire(self, model, prompt_tokens: Sequence[int], media_digests: Sequence[str] = ()) -> object:
        """The session that best continues `prompt_tokens` (its cache is rewound by the caller's prepare)."""
        if model is not self._model:  # another model was loaded: every cache is stale
            self.entries, self._model = [], model
        media = list(media_digests)
        best, best_len = None, 0
        for entry in self.entries:
            if entry.media_digests != media[: len(entry.media_digests)]:
                continue
            shared = common_prefix(entry.session.tokens, prompt_tokens)
            if shared > best_len:
                best, best_len = entry, shared
        if best is None:
            if len(self.entries) >= self.size:
                best = min(self.entries, key=lambda e: e.last_used)
                best.session.reset()
            else:
                best = PooledSession(self._new(model))
                self.entries.append(best)
        best.media_digests = media
        best.last_used = next(self._clock)
        return best.session

    def clear(self) -> None:
        """Drop every cache (memory pressure, or the model is being unloaded)."""
        self.entries = []
        self._model = None

    def cached_tokens(self) -> int:
        return sum(len(e.session.tokens) for e in self.entries)
