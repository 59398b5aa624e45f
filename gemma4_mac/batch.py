"""Decoding several replies at once: one batched forward pass per step over rows that join and leave.

Each row is one reply with its own sampling, logits processors and stop conditions (a `TokenPicker` and a
`ReplyDecoder`, as in `run_prompt`). A row joins after its prompt was read into an ordinary per-request
cache (a `ChatSession`'s: prefix reuse, attachments and chunked prefill stay the single path's);
`batch_caches` copies those caches into mlx-lm's left-padded batch caches (`BatchKVCache` for full-attention
layers, `BatchRotatingKVCache` for sliding-window ones; KV-shared layers have none, as in a single cache),
and their `extend` / `filter` add and drop rows between steps. When a row ends, `copy_reply` puts what it
added (its reply's keys and values) back into the per-request cache it came from, so that cache is what
decoding the reply on it alone would have left. Everything here runs on the model thread.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Optional, Sequence

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache, BatchRotatingKVCache

from mlx_model.cache import KVCache, SlidingKVCache

from .generate import GenerationEvent, ReplyDecoder, TokenPicker


class BatchCacheError(ValueError):
    """A cache kind the batch cannot hold (an 8/4-bit KV cache); serve with a full-precision cache."""


def batch_caches(caches: Sequence[list]) -> list:
    """mlx-lm batch caches holding each request's cache (one per-layer list per row), left-padded."""
    return [_batch_layer(list(layer)) for layer in zip(*caches)]


def _batch_layer(layer: list):
    first = layer[0]
    if any(getattr(c, "bits", None) for c in layer):
        raise BatchCacheError("quantized KV caches cannot be batched; serve with a 16-bit KV cache")
    if isinstance(first, KVCache):
        return BatchKVCache.merge(layer)  # reads `size()`, `keys` and `offset`, which ours have
    if not isinstance(first, SlidingKVCache):
        raise BatchCacheError(f"a {type(first).__name__} cannot join a batch")
    ordered = [c.in_order() for c in layer]
    lengths = [c.size() for c in layer]
    longest = max(lengths)
    padding = [longest - n for n in lengths]
    keys = mx.concatenate([_left_pad(k, pad) for (k, _), pad in zip(ordered, padding)])
    values = mx.concatenate([_left_pad(v, pad) for (_, v), pad in zip(ordered, padding)])
    # the state BatchRotatingKVCache.merge builds from mlx-lm's own rotating caches, from ours
    batch = BatchRotatingKVCache(first.window, padding)
    batch.keys, batch.values = keys, values
    batch.offset = mx.array([c.offset for c in layer])
    batch._idx = batch._offset = longest
    return batch


def _left_pad(x: mx.array, n: int) -> mx.array:
    return mx.pad(x, [(0, 0), (0, 0), (n, 0), (0, 0)]) if n else x


class BatchRow:
    """One reply in a batch: its picker (sampling and processors), its decoder (events, stop conditions)
    and where it stands. `owner` and `choice` say whose reply it is; the batch never reads them."""

    def __init__(self, picker: TokenPicker, decoder: ReplyDecoder, *, history: Sequence[int], max_tokens: int,
                 temperature: float, seed: Optional[int], cancel: Optional[threading.Event] = None,
                 owner: Any = None, choice: int = 0):
        self.picker, self.decoder = picker, decoder
        self.history = mx.array(list(history), dtype=mx.int32)
        self.max_tokens, self.cancel = max_tokens, cancel
        self.owner, self.choice = owner, choice
        # each row has its own generator state, swapped in for its draws: a seeded reply draws what
        # `generate_tokens` draws after mx.random.seed(seed), whatever else is in the batch
        if temperature <= 0:
            self.key: Optional[mx.array] = None
        else:
            self.key = mx.random.key(seed if seed is not None else random.getrandbits(64))
        self.token: Optional[mx.array] = None  # sampled, not yet in the cache
        self.logprobs: Optional[mx.array] = None
        self.count = 0  # tokens handed to the decoder
        self.reply: list[int] = []  # those tokens: each is in the batch cache once handed over
        self.prompt_length = int(self.history.size)
        self.error: Optional[Exception] = None  # a processor failed: the row leaves, its owner reports it
        self.first_token_at: Optional[float] = None
        self.ended = False

    def start(self, prompt_logits: mx.array) -> None:
        """Sample the first token from the logits of the prompt's last position ([1, vocab])."""
        self.token, self.logprobs = self._pick(prompt_logits)
        mx.async_eval(self.token, self.logprobs)

    def _pick(self, logits: mx.array) -> tuple[mx.array, mx.array]:
        if self.key is None:
            return self.picker(self.history, logits)
        high, low = self.key.tolist()  # mx.random.key(n) is [n >> 32, n & 0xFFFFFFFF]: seed() sets it back
        mx.random.seed((high << 32) | low)
        picked = self.picker(self.history, logits)
        self.key = mx.random.state[0]  # mlx-lm's sampler advanced the global state: this row's next state
        return picked

    def _advance(self, logits: mx.array) -> tuple[mx.array, mx.array]:
        if self.picker.processors:  # they read the tokens so far, the current one included
            self.history = mx.concatenate([self.history, self.token.reshape(-1).astype(mx.int32)])
        return self._pick(logits)

    def feed(self, token: int) -> list[GenerationEvent]:
        """Hand the current token to the decoder; sets `ended` at end of turn, a stop string, max_tokens or
        a cancel (the decoder's `finish` says which)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        events, ended = self.decoder.feed(token)
        self.count += 1
        self.reply.append(token)
        if not ended and self.count >= self.max_tokens:
            ended = True  # the decoder's finish stays "length"
        elif not ended and self.cancel is not None and self.cancel.is_set():
            self.decoder.finish, ended = "cancelled", True
        self.ended = ended
        return events


class DecodeBatch:
    """The rows being decoded together and their batch caches."""

    def __init__(self, model):
        self.model = model
        self.rows: list[BatchRow] = []
        self.cache: Optional[list] = None

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: Sequence[BatchRow], caches: Sequence[list]) -> None:
        """Rows whose prompts were read (`start` called) join; `caches[i]` is row i's per-request cache,
        copied, so the session it came from may be reused at once."""
        joining = batch_caches(caches)
        if self.cache is None:
            self.cache = joining
        else:
            for mine, theirs in zip(self.cache, joining):
                mine.extend(theirs)
        self.rows.extend(rows)

    def step(self) -> list[tuple[BatchRow, int]]:
        """One forward pass for every row: each row's current token enters the cache and its next one is
        sampled (computed while the caller decodes); returns (row, current token) for each row."""
        inputs = mx.concatenate([row.token.reshape(1) for row in self.rows]).reshape(-1, 1)
        logits = self.model(inputs, cache=self.cache)[:, -1, :]
        picked = []
        for i, row in enumerate(self.rows):
            try:
                picked.append(row._advance(logits[i:i + 1]))
            except Exception as error:  # e.g. a grammar that cannot go on: that row alone fails
                row.error, row.ended = error, True
                picked.append((row.token, row.logprobs))
        mx.async_eval(*[array for pair in picked for array in pair])
        current = [(row, int(row.token.item())) for row in self.rows]
        for row, (token, logprobs) in zip(self.rows, picked):
            row.token, row.logprobs = token, logprobs
        return current

    @property
    def longest(self) -> int:
        """The most tokens any row holds (prompt and reply so far)."""
        return max((row.prompt_length + row.count for row in self.rows), default=0)

    def remove(self, rows: Sequence[BatchRow]) -> None:
        """Rows that ended leave (their cache rows are dropped)."""
        gone = {id(row) for row in rows}
        keep = [i for i, row in enumerate(self.rows) if id(row) not in gone]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = None
            return
        indices = mx.array(keep)
        for layer in self.cache:
            layer.filter(indices)

    def copy_reply(self, row: BatchRow, cache: list) -> bool:
        """Write what `row` added to the batch (its reply so far: `row.reply`) into `cache`, the per-request
        cache its prompt was read into, which must still hold just that prompt; call it before the row leaves.
        Full-attention layers get the reply's positions appended; sliding-window rings become the row's last
        `window` positions (mlx-lm's `extract`), wrapped or not. Returns False, `cache` untouched, when the
        row and `cache` do not line up (another prompt in `cache`)."""
        index = next(i for i, r in enumerate(self.rows) if r is row)
        total = row.prompt_length + row.count
        writes = []
        for batch_layer, ours in zip(self.cache, cache):
            if int(batch_layer.offset[index].item()) != total or ours.offset != row.prompt_length:
                return False
            if isinstance(ours, KVCache):
                keys, values = batch_layer.keys_and_values()  # every row ends at the batch's last position
                reply = slice(keys.shape[2] - row.count, keys.shape[2])
                writes.append((ours, keys[index:index + 1, :, reply], values[index:index + 1, :, reply]))
            else:
                taken = batch_layer.extract(index)  # temporal order, a copy of at most `window` positions
                if taken.offset != total or taken.keys.shape[2] != min(total, ours.window):
                    return False
                writes.append((ours, taken.keys, taken.values))
        for ours, keys, values in writes:
            if isinstance(ours, KVCache):
                ours.update_and_fetch(keys, values)
            else:
                ours.hold(keys, values, total)
        # computed now, so that nothing in `cache` keeps the batch's buffers alive after the row leaves
        mx.eval([array for layer in cache for array in (layer.keys, layer.values) if array is not None])
        return True

    def clear(self) -> None:
        self.rows, self.cache = [], None
