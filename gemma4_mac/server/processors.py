"""Logits processors the server adds to a generation: OpenAI's penalties, and a tap on the sampled tokens.

Both follow `gemma4_mac.generate.generate_tokens`' contract: `processor(history, logits)` on the model
thread, where `history` is the prompt followed by every token sampled so far (the first call sees the
prompt alone), so each sampled token shows up in the history of the next call, before it is yielded.
`settle` and `stop_sequence` read the tap once a reply ended (its held tool calls, the stop string it hit).
"""

from __future__ import annotations

import re
from typing import Callable, Optional, Sequence

import mlx.core as mx

from ..generate import GenerationEvent, SamplingSettings

MAX_TOP_LOGPROBS = 20
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class PenaltyProcessor:
    """OpenAI's frequency and presence penalties over the tokens generated so far (not the prompt):
    logit - frequency * count - presence * (count > 0)."""

    def __init__(self, frequency: float = 0.0, presence: float = 0.0):
        self.frequency, self.presence = float(frequency), float(presence)
        self.prompt_length: Optional[int] = None
        self.counts: Optional[mx.array] = None
        self.seen = 0

    def __call__(self, history: mx.array, logits: mx.array) -> mx.array:
        if self.prompt_length is None:
            self.prompt_length = history.size
            self.counts = mx.zeros((logits.shape[-1],), dtype=mx.float32)
        start = self.prompt_length + self.seen
        if history.size > start:
            new = history[start:]
            self.seen += new.size
            self.counts = self.counts.at[new].add(1.0)
        penalty = self.frequency * self.counts + self.presence * (self.counts > 0)
        return logits - penalty.astype(logits.dtype)


def token_piece(tokenizer, token: int) -> tuple[str, list[int]]:
    """(text, UTF-8 bytes) of one token; a byte-fallback token is that one byte."""
    hf = getattr(tokenizer, "hf_tokenizer", tokenizer)
    piece = hf.convert_ids_to_tokens(int(token))
    if isinstance(piece, str):
        match = BYTE_TOKEN.fullmatch(piece)
        if match:
            data = bytes([int(match.group(1), 16)])
            return data.decode("utf-8", errors="replace"), list(data)
        text = piece.replace("\u2581", " ")
        return text, list(text.encode("utf-8"))
    text = tokenizer.decode([int(token)])
    return text, list(text.encode("utf-8"))


class TokenTap:
    """The last processor of a generation: records every sampled token, whether a tool-call block is
    open (so a call cut off by max_tokens is not reported as a call), and, with `top` set, the
    log-probability of each token and of the `top` likeliest ones at its step (OpenAI's logprobs)."""

    observes_only = True  # returns the logits unchanged: answers may be drafted beside it (speculative.py)

    def __init__(self, *, top: Optional[int] = None, describe: Optional[Callable[[int], tuple]] = None,
                 call_open: Optional[int] = None, call_close: Optional[int] = None):
        self.top = None if top is None else max(0, min(int(top), MAX_TOP_LOGPROBS))
        self.describe = describe
        self.call_open, self.call_close = call_open, call_close
        self.prompt_length: Optional[int] = None
        self.tokens: list[int] = []
        self.open_calls = 0
        self._last: Optional[mx.array] = None
        self._entries: list[dict] = []

    def __call__(self, history: mx.array, logits: mx.array) -> mx.array:
        if self.prompt_length is None:
            self.prompt_length = history.size
        start = self.prompt_length + len(self.tokens)
        for token in history[start:].tolist() if history.size > start else []:
            if self._last is not None:
                self._entries.append(self._entry(int(token), self._last))
                self._last = None
            self._count(int(token))
        if self.top is not None:
            self._last = logits.reshape(-1) - mx.logsumexp(logits.reshape(-1))
        return logits

    def _count(self, token: int) -> None:
        self.tokens.append(token)
        if token == self.call_open:
            self.open_calls += 1
        elif token == self.call_close and self.open_calls:
            self.open_calls -= 1

    def _entry(self, token: int, logprobs: mx.array) -> dict:
        text, data = self.describe(token) if self.describe else (str(token), [])
        entry = {"token": text, "logprob": _finite(logprobs[token].item()), "bytes": data, "top_logprobs": []}
        if self.top:
            best = mx.argpartition(-logprobs, kth=self.top - 1)[: self.top]
            values = logprobs[best]
            order = mx.argsort(-values)
            for index, value in zip(best[order].tolist(), values[order].tolist()):
                top_text, top_bytes = self.describe(index) if self.describe else (str(index), [])
                entry["top_logprobs"].append({"token": top_text, "logprob": _finite(value),
                                              "bytes": top_bytes})
        return entry

    @property
    def call_is_open(self) -> bool:
        """A tool-call block was opened and not closed (the reply ended inside it)."""
        return self.open_calls > 0

    def take_logprobs(self) -> list[dict]:
        """The logprob entries of the tokens sampled since the last call."""
        entries, self._entries = self._entries, []
        return entries

    def ended_with(self, token_ids: Sequence[int]) -> bool:
        return bool(self.tokens) and self.tokens[-1] in set(token_ids)


def _finite(value: float) -> float:
    """JSON has no -inf: a token the grammar ruled out gets the lowest finite float32."""
    return value if value > -3.0e38 else -3.0e38


def settle(held: list[GenerationEvent], done: GenerationEvent, tap: TokenTap,
           tokenizer) -> list[GenerationEvent]:
    """The tool calls held while their block was open, once the reply is `done`: a call cut off by max_tokens
    (or a cancel) is not a call, its text is answer text."""
    if not held:
        return []
    if done.stats is None or done.stats.finish_reason not in ("length", "cancelled"):
        return list(held)
    opener = tokenizer.token_id("<|tool_call>")
    start = max(i for i, t in enumerate(tap.tokens) if t == opener) if opener in tap.tokens else 0
    text = tokenizer.decode(tap.tokens[start:])
    return [GenerationEvent("answer", text)]


def stop_sequence(done: GenerationEvent, tap: TokenTap, tokenizer,
                  sampling: SamplingSettings) -> Optional[str]:
    """Which stop string ended the reply (None when it ended otherwise)."""
    if not sampling.stop_strings or done.stats is None or done.stats.finish_reason != "stop":
        return None
    if tap.ended_with(tokenizer.eos_token_ids):
        return None
    text = tokenizer.decode(tap.tokens)
    found = [(text.find(s), s) for s in sampling.stop_strings if s in text]
    return min(found)[1] if found else None

