"""KV caches built for Gemma's layer kinds on unified memory.

- `KVCache` (full-attention layers) grows in preallocated steps, never per-token concatenation.
- `SlidingKVCache` (sliding-window layers) is a ring of at most `window` entries, written in place
  while decoding, so its memory is bounded however long the conversation gets.
- KV-shared layers get no cache at all: they read the (keys, values) of their source layer.

Both follow mlx-lm's cache protocol (`offset`, `update_and_fetch`, `make_mask`, `state`,
`meta_state`, `trim`, `is_trimmable`, `nbytes`) so mlx-lm's generic helpers work with them.
"""

from __future__ import annotations

from typing import Optional, Union

import mlx.core as mx

Mask = Union[None, str, mx.array]


def window_mask(n_queries: int, query_start: int, n_keys: int, key_start: int,
                 window: Optional[int], return_array: bool = False) -> Mask:
    """Mask for queries at absolute positions query_start.. over keys at key_start..

    Key j is visible to query i iff i - window < j <= i (HF masking_utils.py:95). Without
    `return_array`, the cheap forms are used where exact: None, or the kernel's "causal".
    """
    if not return_array:
        if n_queries == 1 and key_start + n_keys - 1 <= query_start and (window is None or n_keys <= window):
            return None
        causal_only = window is None or (query_start + n_queries - 1) - key_start < window
        if causal_only and query_start + n_queries == key_start + n_keys:
            return "causal"  # bottom-right aligned causal mask, handled inside the SDPA kernel
    q_pos = mx.arange(query_start, query_start + n_queries)[:, None]
    k_pos = mx.arange(key_start, key_start + n_keys)[None, :]
    mask = k_pos <= q_pos
    if window is not None:
        mask = mask & (k_pos > q_pos - window)
    return mask


class KVCache:
    """Cache of a full-attention layer: grows in steps of `step` tokens."""

    def __init__(self, step: int = 256):
        self.step = step
        self.keys: Optional[mx.array] = None
        self.values: Optional[mx.array] = None
        self.offset = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        """Append [B, H, L, D] keys/values; return everything cached so far."""
        n_new = keys.shape[2]
        needed = self.offset + n_new
        if self.keys is None or needed > self.keys.shape[2]:
            self._grow(keys, values, needed)
        self.keys[..., self.offset:needed, :] = keys
        self.values[..., self.offset:needed, :] = values
        self.offset = needed
        return self.keys[..., :needed, :], self.values[..., :needed, :]

    def _grow(self, keys: mx.array, values: mx.array, needed: int) -> None:
        capacity = ((needed + self.step - 1) // self.step) * self.step
        batch, heads, _, _ = keys.shape
        new_k = mx.zeros((batch, heads, capacity, keys.shape[3]), keys.dtype)
        new_v = mx.zeros((batch, heads, capacity, values.shape[3]), values.dtype)
        if self.keys is not None and self.offset:
            new_k[..., : self.offset, :] = self.keys[..., : self.offset, :]
            new_v[..., : self.offset, :] = self.values[..., : self.offset, :]
        self.keys, self.values = new_k, new_v

    def make_mask(self, n_queries: int, window_size: Optional[int] = None, return_array: bool = False) -> Mask:
        """Mask for the next `n_queries` tokens against the cache after their update."""
        return window_mask(n_queries, self.offset, self.offset + n_queries, 0, window_size, return_array)

    def size(self) -> int:
        return self.offset

    def empty(self) -> bool:
        return self.keys is None

    @property
    def nbytes(self) -> int:
        """Bytes actually allocated (capacity, not just the filled part)."""
        if self.keys is None:
            return 0
        return self.keys.nbytes + self.values.nbytes

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        """Forget the last `n` tokens; returns how many were removed."""
        n = min(self.offset, n)
        self.offset -= n
        return n

    def checkpoint(self) -> int:
        """A restore point: writes only ever go past the offset, so the offset alone is enough."""
        return self.offset

    def restore(self, checkpoint: int) -> None:
        """Rewind to a restore point taken earlier in this conversation."""
        if checkpoint > self.offset:
            raise ValueError("cannot restore a cache forward in time")
        self.offset = checkpoint

    @property
    def state(self):
        if self.keys is None:
            return []
        return [self.keys[..., : self.offset, :], self.values[..., : self.offset, :]]

    @state.setter
    def state(self, value):
        if not value:
            self.keys = self.values = None
            self.offset = 0
            return
        self.keys, self.values = value
        self.offset = self.keys.shape[2]

    @property
    def meta_state(self):
        return (str(self.step),)

    @meta_state.setter
    def meta_state(self, value):
        (self.step,) = map(int, value)


class SlidingKVCache:
    """Cache of a sliding-window layer: a ring holding the last `window` tokens.

    Position p lives in slot p % window once the ring is full. A single decoded token is written
    in place and attends to the whole ring (order does not matter without a mask); a multi-token
    chunk is attended in temporal order with an explicit window mask.
    """

    def __init__(self, window: int, step: int = 256):
        self.window = window
        self.step = step
        self.keys: Optional[mx.array] = None
        self.values: Optional[mx.array] = None
        self.offset = 0
        self._last_chunk_start = 0  # absolute position of the first key returned by the last update

    def _temporal(self):
        """Cached keys/values in temporal order, and the absolute position of the first one."""
        kept = min(self.offset, self.window)
        if self.keys is None or kept == 0:
            return None, None, self.offset
        if self.offset <= self.window:
            return self.keys[..., :kept, :], self.values[..., :kept, :], 0
        split = self.offset % self.window
        k = mx.concatenate([self.keys[..., split:, :], self.keys[..., :split, :]], axis=2)
        v = mx.concatenate([self.values[..., split:, :], self.values[..., :split, :]], axis=2)
        return k, v, self.offset - self.window

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        """Add [B, H, L, D] keys/values; return the keys/values the new queries attend to."""
        n_new = keys.shape[2]
        if n_new == 1:
            return self._update_one(keys, values)
        old_k, old_v, start = self._temporal()
        all_k = keys if old_k is None else mx.concatenate([old_k, keys], axis=2)
        all_v = values if old_v is None else mx.concatenate([old_v, values], axis=2)
        self._last_chunk_start = start
        self.offset += n_new
        self._store_tail(all_k, all_v)
        return all_k, all_v

    def _update_one(self, keys, values):
        slot = self.offset % self.window
        if self.keys is None or (self.offset < self.window and self.offset >= self.keys.shape[2]):
            self._reserve(keys, values, self.offset + 1)
        self.keys[..., slot:slot + 1, :] = keys
        self.values[..., slot:slot + 1, :] = values
        self.offset += 1
        kept = min(self.offset, self.window)
        self._last_chunk_start = self.offset - kept
        return self.keys[..., :kept, :], self.values[..., :kept, :]

    def _reserve(self, keys, values, needed):
        capacity = min(self.window, ((needed + self.step - 1) // self.step) * self.step)
        batch, heads, _, _ = keys.shape
        new_k = mx.zeros((batch, heads, capacity, keys.shape[3]), keys.dtype)
        new_v = mx.zeros((batch, heads, capacity, values.shape[3]), values.dtype)
        if self.keys is not None and self.offset:
            used = min(self.offset, self.keys.shape[2])
            new_k[..., :used, :] = self.keys[..., :used, :]
            new_v[..., :used, :] = self.values[..., :used, :]
        self.keys, self.values = new_k, new_v

    def _store_tail(self, all_k, all_v):
        """Keep the last `window` positions of a temporally ordered chunk, in ring order."""
        kept = min(self.offset, self.window)
        tail_k, tail_v = all_k[..., -kept:, :], all_v[..., -kept:, :]
        if self.offset >= self.window:
            shift = self.offset % self.window
            self.keys = mx.roll(tail_k, shift, axis=2) if shift else tail_k
            self.values = mx.roll(tail_v, shift, axis=2) if shift else tail_v
            return
        self.keys = self.values = None
        self._reserve(tail_k, tail_v, kept)
        self.keys[..., :kept, :] = tail_k
        self.values[..., :kept, :] = tail_v

    def make_mask(self, n_queries: int, window_size: Optional[int] = None, return_array: bool = False) -> Mask:
        """Mask for the next `n_queries` tokens against what `update_and_fetch` will return."""
        window = window_size or self.window
        if n_queries == 1 and not return_array:
            return None  # the ring holds exactly the window: every cached key is visible
        kept = min(self.offset, self.window)
        return window_mask(n_queries, self.offset, kept + n_queries, self.offset - kept, window, return_array)

    def size(self) -> int:
        return min(self.offset, self.window)

    def empty(self) -> bool:
        return self.keys is None

    @property
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return self.keys.nbytes + self.values.nbytes

    def is_trimmable(self) -> bool:
        # Tokens that fell out of the ring are gone; only an unwrapped ring can be rewound.
        return self.offset < self.window

    def trim(self, n: int) -> int:
        if not self.is_trimmable():
            return 0
        n = min(self.offset, n)
        self.offset -= n
        return n

    def checkpoint(self):
        """A restore point: new array handles on the ring (copied lazily on the next in-place write)."""
        if self.keys is None:
            return (None, None, self.offset)
        return (self.keys[...], self.values[...], self.offset)

    def restore(self, checkpoint) -> None:
        """Rewind (or jump) to a restore point, also after the ring has wrapped."""
        keys, values, offset = checkpoint
        self.keys = None if keys is None else keys[...]
        self.values = None if values is None else values[...]
        self.offset = offset

    @property
    def state(self):
        if self.keys is None:
            return []
        kept = min(self.offset, self.window)
        return [self.keys[..., :kept, :], self.values[..., :kept, :]]

    @state.setter
    def state(self, value):
        if not value:
            self.keys = self.values = None
            return
        self.keys, self.values = value

    @property
    def meta_state(self):
        return tuple(map(str, (self.window, self.step, self.offset)))

    @meta_state.setter
    def meta_state(self, value):
        self.window, self.step, self.offset = map(int, value)
