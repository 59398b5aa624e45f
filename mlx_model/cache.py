"""KV caches built for Gemma's layer kinds on unified memory.

- `KVCache` (full-attention layers) grows in preallocated steps, never per-token concatenation.
- `SlidingKVCache` (sliding-window layers) is a ring of at most `window` entries, written in place
  while decoding, so its memory is bounded however long the conversation gets.
- KV-shared layers get no cache at all: they read the (keys, values) of their source layer.

Both follow mlx-lm's cache protocol (`offset`, `update_and_fetch`, `make_mask`, `state`,
`meta_state`, `trim`, `is_trimmable`, `nbytes`) so mlx-lm's generic helpers work with them. Our
attention calls `update_and_view`, which returns the keys as spans of positions (`attention.KVView`),
so a prefill chunk attends in tiles without copying the ring. 8 and 4-bit caches live in
`quantized_cache.py`.
`cache_arrays` / `restore_cache_arrays` turn a model's caches into named arrays and back, for files
(the app's document cache keeps them on disk, as mlx-lm's `save_prompt_cache` does with its caches).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import mlx.core as mx

from .attention import KVView, Span

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


def _map(fn, store, *others):
    """Apply fn to a stored tensor, or to each part of a quantized (data, scales, biases) triple."""
    if isinstance(store, tuple):
        return tuple(fn(*parts) for parts in zip(store, *others))
    return fn(store, *others)


def _alloc(like, capacity: int):
    return _map(lambda x: mx.zeros((*x.shape[:2], capacity, x.shape[3]), x.dtype), like)


def _write(store, start: int, new) -> None:
    n = (new[0] if isinstance(new, tuple) else new).shape[2]
    for dst, src in (zip(store, new) if isinstance(store, tuple) else [(store, new)]):
        dst[..., start:start + n, :] = src


def _read(store, start: int, end: int):
    return _map(lambda x: x[..., start:end, :], store)


def _length(store) -> int:
    return (store[0] if isinstance(store, tuple) else store).shape[2]


def _nbytes(store) -> int:
    return sum(x.nbytes for x in store) if isinstance(store, tuple) else store.nbytes


class _LayerCache:
    """What both cache kinds share: keys and values and the tokens seen."""

    bits = None  # 16-bit: the quantized caches say 8 or 4

    def __init__(self, step: int):
        self.step = step
        self.keys = None
        self.values = None
        self.offset = 0

    def empty(self) -> bool:
        return self.keys is None

    @property
    def nbytes(self) -> int:
        """Bytes actually allocated (capacity, not just the filled part)."""
        return 0 if self.keys is None else _nbytes(self.keys) + _nbytes(self.values)

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        """Forget the last `n` tokens (none where the cache cannot rewind); returns how many were removed."""
        if not self.is_trimmable():
            return 0
        n = min(self.offset, n)
        self.offset -= n
        return n


class KVCache(_LayerCache):
    """Cache of a full-attention layer: grows in steps of `step` tokens."""

    def __init__(self, step: int = 256):
        super().__init__(step)
        self._reserved = 0

    def update_and_view(self, keys: mx.array, values: mx.array) -> KVView:
        """Append [B, H, L, D] keys/values; the view holds every cached position as one span."""
        keys, values = self.update_and_fetch(keys, values)
        return KVView([Span(keys, values, 0, self.offset)], dense=lambda: (keys, values))

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        """Append [B, H, L, D] keys/values; return everything cached so far."""
        needed = self.offset + _length(keys)
        if self.keys is None or needed > _length(self.keys):
            self._grow(keys, values, needed)
        _write(self.keys, self.offset, keys)
        _write(self.values, self.offset, values)
        self.offset = needed
        return _read(self.keys, 0, needed), _read(self.values, 0, needed)

    def reserve(self, n_tokens: int) -> None:
        """Make room for `n_tokens` in one allocation, so a long prefill never copies the cache as it grows."""
        if self.keys is not None and n_tokens > _length(self.keys):
            self._grow(self.keys, self.values, n_tokens)
            mx.eval(self.keys, self.values)  # the old buffers go now, before any chunk's scratch exists
        elif self.keys is None:
            self._reserved = n_tokens

    def _grow(self, keys, values, needed: int) -> None:
        needed = max(needed, self._reserved)
        self._reserved = 0
        capacity = ((needed + self.step - 1) // self.step) * self.step
        new_k, new_v = _alloc(keys, capacity), _alloc(values, capacity)
        if self.keys is not None and self.offset:
            _write(new_k, 0, _read(self.keys, 0, self.offset))
            _write(new_v, 0, _read(self.values, 0, self.offset))
        self.keys, self.values = new_k, new_v

    def make_mask(self, n_queries: int, window_size: Optional[int] = None, return_array: bool = False) -> Mask:
        """Mask for the next `n_queries` tokens against the cache after their update."""
        return window_mask(n_queries, self.offset, self.offset + n_queries, 0, window_size, return_array)

    def held(self) -> Optional[tuple[mx.array, mx.array]]:
        """Every cached position's keys and values, oldest first (None while empty)."""
        if self.keys is None or not self.offset:
            return None
        return _read(self.keys, 0, self.offset), _read(self.values, 0, self.offset)

    def size(self) -> int:
        return self.offset

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
        return [_read(self.keys, 0, self.offset), _read(self.values, 0, self.offset)]

    @state.setter
    def state(self, value):
        if not value:
            self.keys = self.values = None
            self.offset = 0
            return
        self.keys, self.values = value
        self.offset = _length(self.keys)

    @property
    def meta_state(self):
        return (str(self.step),)

    @meta_state.setter
    def meta_state(self, value):
        self.step = int(value[0])


class SlidingKVCache(_LayerCache):
    """Cache of a sliding-window layer: a ring holding the last `window` tokens.

    Position p lives in slot p % window once the ring is full. A single decoded token is written
    in place and attends to the whole ring (order does not matter without a mask); a multi-token
    chunk sees the ring as (at most) two runs of consecutive positions plus itself, never a copy.
    """

    def __init__(self, window: int, step: int = 256):
        super().__init__(step)
        self.window = window

    def _runs(self) -> list[Span]:
        """The ring's entries as spans of consecutive positions, oldest first (views, no copy)."""
        kept = min(self.offset, self.window)
        if not kept or self.keys is None:
            return []
        if self.offset <= self.window:
            return [Span(self.keys[:, :, :kept], self.values[:, :, :kept], 0, kept)]
        split = self.offset % self.window
        runs = [Span(self.keys[:, :, split:], self.values[:, :, split:], self.offset - self.window,
                     self.window - split)]
        if split:
            runs.append(Span(self.keys[:, :, :split], self.values[:, :, :split], self.offset - split, split))
        return runs

    def in_order(self):
        """(keys, values) of the cached positions, oldest first (at most `window` of them)."""
        runs = self._runs()
        if not runs:
            return None, None
        return (mx.concatenate([r.keys for r in runs], axis=2),
                mx.concatenate([r.values for r in runs], axis=2))

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        """Add [B, H, L, D] keys/values; return the keys/values the new queries attend to."""
        return self.update_and_view(keys, values).dense()

    def update_and_view(self, keys: mx.array, values: mx.array) -> KVView:
        """Add [B, H, L, D] keys/values; the view has the ring's runs and the new chunk.

        Its `dense()` is what `make_mask` describes: the ring in slot order for one token, else the
        kept positions and the chunk in temporal order.
        """
        n_new = keys.shape[2]
        if n_new == 1:
            ring_k, ring_v = self._update_one(keys, values)
            return KVView(self._runs(), dense=lambda: (ring_k, ring_v))
        start, runs = self.offset, self._runs()
        spans = runs + [Span(keys, values, start, n_new)]

        def dense():
            if not runs:
                return keys, values
            return (mx.concatenate([r.keys for r in runs] + [keys], axis=2),
                    mx.concatenate([r.values for r in runs] + [values], axis=2))

        self.offset += n_new
        kept = min(self.offset, self.window)
        if n_new >= kept:
            tail_k, tail_v = keys[:, :, n_new - kept:], values[:, :, n_new - kept:]
        else:  # the newest entries of the ring, then the chunk (at most a window's worth is copied)
            tail_k = mx.concatenate([r.keys for r in runs] + [keys], axis=2)[:, :, -kept:]
            tail_v = mx.concatenate([r.values for r in runs] + [values], axis=2)[:, :, -kept:]
        self._store_tail(tail_k, tail_v)
        return KVView(spans, dense=dense)

    def _update_one(self, keys, values):
        slot = self.offset % self.window
        if self.keys is None or (self.offset < self.window and self.offset >= _length(self.keys)):
            self._reserve(keys, values, self.offset + 1)
        _write(self.keys, slot, keys)
        _write(self.values, slot, values)
        self.offset += 1
        kept = min(self.offset, self.window)
        return _read(self.keys, 0, kept), _read(self.values, 0, kept)

    def _reserve(self, keys, values, needed: int) -> None:
        capacity = min(self.window, ((needed + self.step - 1) // self.step) * self.step)
        new_k, new_v = _alloc(keys, capacity), _alloc(values, capacity)
        if self.keys is not None and self.offset:
            used = min(self.offset, _length(self.keys))
            _write(new_k, 0, _read(self.keys, 0, used))
            _write(new_v, 0, _read(self.values, 0, used))
        self.keys, self.values = new_k, new_v

    def hold(self, keys: mx.array, values: mx.array, offset: int) -> None:
        """Become the ring after `offset` tokens, given the keys/values of its last min(offset, window)
        positions oldest first (a conversation's row taken out of a batch cache)."""
        kept = min(offset, self.window)
        if _length(keys) != kept or _length(values) != kept:
            raise ValueError(f"a ring after {offset} tokens holds {kept} positions, not {_length(keys)}")
        self.offset = offset
        self._store_tail(keys, values)

    def _store_tail(self, tail_k, tail_v) -> None:
        """Make the ring hold `tail_*`, the last min(offset, window) positions in temporal order."""
        kept = min(self.offset, self.window)
        if self.offset >= self.window:
            shift = self.offset % self.window
            roll = (lambda x: mx.roll(x, shift, axis=2)) if shift else (lambda x: x)
            self.keys, self.values = roll(tail_k), roll(tail_v)
            return
        self.keys = self.values = None
        self._reserve(tail_k, tail_v, kept)
        _write(self.keys, 0, tail_k)
        _write(self.values, 0, tail_v)

    def make_mask(self, n_queries: int, window_size: Optional[int] = None, return_array: bool = False) -> Mask:
        """Mask for the next `n_queries` tokens against what `update_and_fetch` will return."""
        window = window_size or self.window
        if n_queries == 1 and not return_array:
            return None  # the ring holds exactly the window: every cached key is visible
        kept = min(self.offset, self.window)
        return window_mask(n_queries, self.offset, kept + n_queries, self.offset - kept, window, return_array)

    def held(self) -> Optional[tuple[mx.array, mx.array]]:
        """The window's keys and values, oldest first (None while empty)."""
        runs = self._runs()
        if not runs:
            return None
        return (mx.concatenate([r.keys for r in runs], axis=2), mx.concatenate([r.values for r in runs], axis=2))

    def size(self) -> int:
        return min(self.offset, self.window)

    def is_trimmable(self) -> bool:
        # Tokens that fell out of the ring are gone; only an unwrapped ring can be rewound.
        return self.offset < self.window

    def checkpoint(self):
        """A restore point: new array handles on the ring (copied lazily on the next in-place write)."""
        handle = lambda x: x[...]  # noqa: E731
        if self.keys is None:
            return (None, None, self.offset)
        return (_map(handle, self.keys), _map(handle, self.values), self.offset)

    def restore(self, checkpoint) -> None:
        """Rewind (or jump) to a restore point, also after the ring has wrapped."""
        keys, values, offset = checkpoint
        handle = lambda x: x[...]  # noqa: E731
        self.keys = None if keys is None else _map(handle, keys)
        self.values = None if values is None else _map(handle, values)
        self.offset = offset

    @property
    def state(self):
        if self.keys is None:
            return []
        return [self.keys, self.values]

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


class CacheLayoutError(ValueError):
    """Saved cache arrays do not fit this model's caches (another model, layer count or cache kind)."""


def cache_arrays(cache: list) -> tuple[dict[str, mx.array], list[dict[str, Any]]]:
    """The arrays of every layer's cache by name, and a layout (JSON-able) to restore them with.

    A layer's `state` is a list whose entries are arrays, tuples of arrays (quantized data, scales,
    biases) or None; "parts" records each entry as 0, the tuple's length, or -1.
    """
    arrays, layout = {}, []
    for i, c in enumerate(cache):
        parts = []
        for j, value in enumerate(c.state):
            if value is None:
                parts.append(-1)
            elif isinstance(value, tuple):
                for k, part in enumerate(value):
                    arrays[f"{i}.{j}.{k}"] = part
                parts.append(len(value))
            else:
                arrays[f"{i}.{j}"] = value
                parts.append(0)
        layout.append({"class": type(c).__name__, "meta": list(c.meta_state), "parts": parts})
    return arrays, layout


def restore_cache_arrays(arrays: dict[str, mx.array], layout: list, cache: list) -> None:
    """Put arrays saved by `cache_arrays` back into `cache` (the same model's fresh caches).

    Raises CacheLayoutError when the layout does not describe these caches, or an array is missing.
    """
    if len(layout) != len(cache):
        raise CacheLayoutError("the saved cache has a different number of layers than this model")
    for i, (entry, c) in enumerate(zip(layout, cache)):
        if entry["class"] != type(c).__name__:
            raise CacheLayoutError(f"layer {i} cache kind {entry['class']} does not match {type(c).__name__}")
        try:
            state = [None if n < 0 else tuple(arrays[f"{i}.{j}.{k}"] for k in range(n)) if n else arrays[f"{i}.{j}"]
                     for j, n in enumerate(entry["parts"])]
        except KeyError as missing:
            raise CacheLayoutError(f"the saved cache lacks array {missing}") from None
        try:
            c.meta_state = entry["meta"]
            c.state = state
        except (ValueError, TypeError) as error:
            raise CacheLayoutError(f"layer {i} of the saved cache does not fit: {error}") from None
