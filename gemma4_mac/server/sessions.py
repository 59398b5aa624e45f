"""Conversation caches for API clients, matched by prompt prefix.

OpenAI clients resend the whole conversation each turn and name no conversation, so the pool keeps
a few `ChatSession`s and gives each request the one that can keep the longest prefix of its prompt
(`ChatSession.reusable`: the tokens it holds, or a restore point): a client's next turn lands on its own
cache and costs only the new tokens. A session that could keep nothing is not taken from its conversation
while the pool has room (every chat prompt starts with the same few template tokens, which alone would
send every new conversation to the same cache and empty it). Two sessions never serve one request, and a
session with attachments only matches a prompt with the same attachments in the same order (placeholder
tokens are equal for every image, so tokens alone cannot tell).

A batched reply is decoded in a copy of its session's cache; `hand_back` puts it back, so that the next
turn reuses the answer as it does after a reply decoded on the session itself.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

DEFAULT_SESSIONS = 2


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
            shared = entry.session.reusable(prompt_tokens)
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

    def hand_back(self, session, prompt_keys: Sequence[int], reply: Sequence[int],
                  copy_reply: Callable[[list], bool]) -> bool:
        """Put a reply decoded elsewhere (a batch row) into `session`, the one its prompt was read in, when
        the session is still this pool's and still holds exactly that prompt (not reacquired meanwhile by
        another request); `copy_reply(session.cache)` writes the reply's keys and values. Afterwards the
        session holds prompt + `reply` (the tokens fed to the model) with a restore point at the end, as
        `run_prompt` leaves it. Returns whether it did."""
        if not any(entry.session is session for entry in self.entries):
            return False  # dropped (another model, memory pressure): nothing to keep
        if session.tokens != list(prompt_keys) or not copy_reply(session.cache):
            return False
        session.append(reply)
        session.mark()
        return True

    def clear(self) -> None:
        """Drop every cache (memory pressure, or the model is being unloaded)."""
        self.entries = []
        self._model = None

    def cached_tokens(self) -> int:
        return sum(len(e.session.tokens) for e in self.entries)
