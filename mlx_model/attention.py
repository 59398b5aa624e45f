"""Attention over a KV cache in tiles with an online softmax, so prefill scratch stays small.

A layer's cache hands attention a `KVView`: spans of keys and values at consecutive positions, plain
or quantized (keys per channel, values per token, as KIVI stores them). Queries are cut into tiles and
each tile visits only the key blocks it can see: causal, inside the sliding window, and, for a quantized
cache, the one copy of each key (exact or quantized) that query reads. A running max and sum (the online
softmax of FlashAttention) combine the blocks, so no chunk-by-context score matrix and no full-size mask
ever exist, and a quantized cache is dequantized one block at a time. Decode and small prompts over a
16-bit cache take MLX's fused kernel with the cache's own mask, as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import mlx.core as mx

TILE_BYTES = 32 << 20  # float32 scores of one tile, whatever the chunk and the context
KEY_BLOCK = 1024  # keys per tile: a multiple of every KV quantization group
DECODE_QUERIES = 8  # this many queries or fewer read quantized spans without dequantizing them
EXACT, QUANTIZED = "exact", "quantized"


@dataclass(frozen=True)
class QuantBoundary:
    """Which keys a query reads quantized: those before `at(i + 1)` for the query at position i.

    A quantized cache keeps its newest `recent` tokens (and the unfinished group before them) exact and
    quantizes whole groups of `group` tokens behind them; prefill reproduces what decode would read.
    """

    recent: int
    group: int

    def at(self, n_tokens: int) -> int:
        """Tokens quantized once the cache holds `n_tokens`."""
        return max(0, n_tokens - self.recent) // self.group * self.group

    def array_at(self, n_tokens: mx.array) -> mx.array:
        return mx.maximum(n_tokens - self.recent, 0) // self.group * self.group


@dataclass(frozen=True)
class QuantSpec:
    """How a quantized span is stored: keys per channel in groups of `group` tokens, values per token
    in groups of `group` dims (MLX affine quantization)."""

    bits: int
    group: int


@dataclass
class Span:
    """Keys and values at positions start .. start+length-1.

    Plain: [B, H, n, D] arrays. Quantized (`quant`): keys are (data, scales, biases) of the transposed
    keys [B, H, D, n] quantized along the tokens, values those of [B, H, n, D] along the dims. `role`
    says which queries read it under a QuantBoundary (None: all of them).
    """

    keys: Any
    values: Any
    start: int
    length: int
    quant: Optional[QuantSpec] = None
    role: Optional[str] = None
    # quantized spans of a growing store: the whole (keys, values) store, position start + i at index i.
    # Few queries read it unsliced and slice their scores instead: a slice of the packed keys along the
    # tokens is strided, and the quantized matmul would copy it whole at every decode step.
    store: Optional[tuple] = field(default=None, repr=False)

    @property
    def end(self) -> int:
        return self.start + self.length

    def scores(self, q: mx.array, a: int, b: int, packed: bool) -> mx.array:
        """q [B, Hkv, rep, Lq, D] against keys a..b-1 of the span: [B, Hkv, rep, Lq, b-a]."""
        if self.quant is None:
            return q @ mx.expand_dims(self.keys[:, :, a:b], 2).swapaxes(-1, -2)
        bits, group = self.quant.bits, self.quant.group
        per_word = 32 // bits
        data, scales, biases = self.keys
        parts = (
            data[..., a // per_word : b // per_word],
            scales[..., a // group : b // group],
            biases[..., a // group : b // group],
        )
        if packed and self.store is not None:  # the whole store, unsliced (see `store`)
            whole = tuple(mx.expand_dims(x, 2) for x in self.store[0])
            return _per_kv_head(mx.quantized_matmul, q, whole, group, bits)[..., a:b]
        if packed:  # a few queries: the quantized matmul reads the packed keys directly
            parts = tuple(mx.expand_dims(x, 2) for x in parts)
            return _per_kv_head(mx.quantized_matmul, q, parts, group, bits)
        keys_t = mx.dequantize(*parts, group_size=group, bits=bits)
        return q @ mx.expand_dims(keys_t, 2).astype(q.dtype)

    def weighted(self, p: mx.array, a: int, b: int, packed: bool) -> mx.array:
        """Probabilities [B, Hkv, rep, Lq, b-a] times values a..b-1: [B, Hkv, rep, Lq, D]."""
        if self.quant is None:
            values = self.values[:, :, a:b]
            return p.astype(values.dtype) @ mx.expand_dims(values, 2)
        bits, group = self.quant.bits, self.quant.group
        parts = tuple(x[:, :, a:b] for x in self.values)
        dtype = parts[1].dtype
        if packed and self.store is not None:  # zero weight on every other stored position
            whole = tuple(mx.expand_dims(x, 2) for x in self.store[1])
            p = mx.pad(p.astype(dtype), [(0, 0)] * (p.ndim - 1) + [(a, whole[1].shape[3] - b)])
            return _per_kv_head(mx.quantized_matmul, p, whole, group, bits)
        if packed:
            parts = tuple(mx.expand_dims(x, 2) for x in parts)
            return _per_kv_head(mx.quantized_matmul, p.astype(dtype), parts, group, bits)
        values = mx.dequantize(*parts, group_size=group, bits=bits)
        return p.astype(dtype) @ mx.expand_dims(values, 2)

    def dense(self) -> tuple[mx.array, mx.array]:
        """The span's keys and values as [B, H, n, D] arrays (dequantized)."""
        if self.quant is None:
            return self.keys, self.values
        bits, group = self.quant.bits, self.quant.group
        keys = mx.dequantize(*self.keys, group_size=group, bits=bits).swapaxes(-1, -2)
        return keys, mx.dequantize(*self.values, group_size=group, bits=bits)


def _per_kv_head(matmul, x: mx.array, packed: tuple, group: int, bits: int) -> mx.array:
    """x [B, Hkv, rep, L, K] times one packed [B, Hkv, 1, K, N] matrix per KV head, the rep query heads
    sharing it read as more rows of one product: broadcast over rep, MLX would copy the matrix rep times."""
    B, H, rep, L, K = x.shape
    out = matmul(x.reshape(B, H, 1, rep * L, K), *packed, transpose=False, group_size=group, bits=bits)
    return out.reshape(B, H, rep, L, -1)


@dataclass
class KVView:
    """What a layer attends to: spans in temporal order, plus the arrays MLX's fused kernel takes.

    `dense` (16-bit caches) gives the (keys, values) the cache's `make_mask` describes. `rotated`:
    values are stored times a normalized Hadamard matrix, so the output is rotated back.
    """

    spans: list
    boundary: Optional[QuantBoundary] = None
    rotated: bool = False
    dense: Optional[Callable[[], tuple[mx.array, mx.array]]] = field(default=None, repr=False)

    @classmethod
    def of(cls, keys: mx.array, values: mx.array, start: int = 0) -> "KVView":
        """Plain keys and values of consecutive positions from `start` (no cache)."""
        return cls([Span(keys, values, start, keys.shape[2])], dense=lambda: (keys, values))

    @property
    def n_keys(self) -> int:
        return sum(s.length for s in self.spans)

    @property
    def quantized(self) -> bool:
        return any(s.quant is not None for s in self.spans)

    def materialize(self, first: int, end: int) -> tuple[mx.array, mx.array]:
        """Keys and values for positions first..end-1 in order, values rotated back: the exact copy of
        each key where the cache still has one, else the quantized one; zeros for positions it lacks
        (the caller's mask hides them). For custom masks only; attention never needs it."""
        exact_from = min((s.start for s in self.spans if s.role == EXACT), default=end)
        keys = values = None
        for span in self.spans:
            lo, hi = max(span.start, first), min(span.end, end, exact_from if span.role == QUANTIZED else end)
            if hi <= lo:
                continue
            k, v = span.dense()
            if keys is None:
                keys = mx.zeros((*k.shape[:2], end - first, k.shape[3]), k.dtype)
                values = mx.zeros((*v.shape[:2], end - first, v.shape[3]), v.dtype)
            keys[:, :, lo - first : hi - first] = k[:, :, lo - span.start : hi - span.start]
            values[:, :, lo - first : hi - first] = v[:, :, lo - span.start : hi - span.start]
        return keys, (rotate(values) if self.rotated else values)


def rotate(x: mx.array) -> mx.array:
    """x times the normalized Hadamard matrix along the last axis (its own inverse)."""
    return mx.hadamard_transform(x, scale=1.0 / math.sqrt(x.shape[-1]))


def can_rotate(head_dim: int) -> bool:
    """Whether MLX's Hadamard transform takes this size (m * 2^k with m in 1, 12, 20, 28)."""
    for m in (1, 12, 20, 28):
        if head_dim % m == 0 and (head_dim // m) & (head_dim // m - 1) == 0:
            return True
    return False


Mask = Union[None, str, mx.array]


def attend(
    queries: mx.array,
    view: KVView,
    *,
    scale: float,
    query_start: int,
    window: Optional[int],
    mask: Mask,
    softcap: Optional[float] = None,
    custom_mask: bool = False,
) -> mx.array:
    """Attention of queries [B, H, L, D] at positions query_start.. over `view`: [B, H, L, D].

    `mask` describes `view.dense()`'s keys (or `materialize` from the cache's first kept position) and
    is used only on the dense path: always for a `custom_mask` (images attending to themselves), else
    for 16-bit caches when one tile holds every score.
    """
    n_queries = queries.shape[2]
    if custom_mask or (view.dense is not None and _fits_one_tile(queries, view.n_keys)):
        if view.dense is not None:
            keys, values = view.dense()
        else:
            first = query_start + n_queries - _mask_keys(mask, n_queries)
            keys, values = view.materialize(first, query_start + n_queries)
        return dense_attention(queries, keys, values, scale, mask, softcap)
    return tiled_attention(
        queries, view, scale=scale, query_start=query_start, window=window, softcap=softcap
    )


def _mask_keys(mask: Mask, n_queries: int) -> int:
    if isinstance(mask, mx.array):
        return mask.shape[-1]
    raise ValueError("a custom mask over a quantized cache must be an array")


def _fits_one_tile(queries: mx.array, n_keys: int) -> bool:
    B, H, L, _ = queries.shape
    return L == 1 or B * H * L * n_keys * 4 <= TILE_BYTES


def dense_attention(queries, keys, values, scale: float, mask: Mask, softcap: Optional[float] = None):
    """MLX's fused attention (or a plain softcapped one) over whole key and value arrays."""
    if not softcap:
        return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)
    n_rep = queries.shape[1] // keys.shape[1]
    if n_rep > 1:
        keys, values = mx.repeat(keys, n_rep, axis=1), mx.repeat(values, n_rep, axis=1)
    scores = (queries * scale) @ keys.swapaxes(-1, -2)
    scores = mx.tanh(scores / softcap) * softcap
    if isinstance(mask, str):  # bottom-right aligned causal
        n_q, n_k = scores.shape[-2:]
        mask = mx.arange(n_k)[None] <= (mx.arange(n_q)[:, None] + n_k - n_q)
    if mask is not None:
        scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
    return mx.softmax(scores.astype(mx.float32), axis=-1).astype(queries.dtype) @ values


def query_tile(batch_heads: int, n_queries: int, key_block: Optional[int] = None) -> int:
    """Queries per tile so that one tile's float32 scores stay within TILE_BYTES."""
    rows = max(16, TILE_BYTES // (4 * batch_heads * (key_block or KEY_BLOCK)))
    return min(n_queries, 1 << (rows.bit_length() - 1))


def tiled_attention(
    queries: mx.array,
    view: KVView,
    *,
    scale: float,
    query_start: int,
    window: Optional[int],
    softcap: Optional[float] = None,
) -> mx.array:
    """Exact attention over `view`, tile by tile (see the module docstring)."""
    B, n_heads, L, D = queries.shape
    n_kv = _kv_heads(view.spans[0])
    q = (queries * scale).reshape(B, n_kv, n_heads // n_kv, L, D)
    step = query_tile(B * n_heads, L)
    outputs, previous = [], None
    for lo in range(0, L, step):
        hi = min(L, lo + step)
        rows = q[..., lo:hi, :]
        if previous is not None:
            rows = mx.depends(rows, previous)  # the next tile starts once this one is done: one at a time
        previous = _tile_rows(rows, view, query_start + lo, query_start + hi - 1, window, softcap)
        outputs.append(previous)
    out = outputs[0] if len(outputs) == 1 else mx.concatenate(outputs, axis=-2)
    out = out.reshape(B, n_heads, L, -1)
    if view.rotated:
        out = rotate(out)
    return out.astype(queries.dtype)


def _kv_heads(span: Span) -> int:
    return (span.keys[0] if isinstance(span.keys, tuple) else span.keys).shape[1]


def _tile_rows(
    q: mx.array, view: KVView, q_lo: int, q_hi: int, window: Optional[int], softcap: Optional[float]
) -> mx.array:
    """Output rows for queries at positions q_lo..q_hi over every visible key block of the view."""
    packed = q.shape[-2] <= DECODE_QUERIES
    boundary = view.boundary
    state = None
    for span in view.spans:
        first, end = span.start, min(span.end, q_hi + 1)
        if window is not None:
            first = max(first, q_lo - window + 1)
        if boundary is not None and span.role == QUANTIZED:
            end = min(end, boundary.at(q_hi + 1))
        elif boundary is not None and span.role == EXACT:
            first = max(first, boundary.at(q_lo + 1))
        if first >= end:
            continue
        align = span.quant.group if span.quant is not None else 1
        a = (first - span.start) // align * align
        block = span.length if packed else KEY_BLOCK
        while span.start + a < end:
            b = min(span.length, a + block, -(-(end - span.start) // align) * align)
            mask = _tile_mask(q_lo, q_hi, span.start + a, span.start + b - 1, window, span.role, boundary)
            if mask is not False:
                # the next block waits for this one's sum and output: its scores are freed first
                rows = q if state is None else mx.depends(q, [state[1], state[2]])
                state = _online_step(
                    state,
                    span.scores(rows, a, b, packed),
                    mask,
                    lambda p, a=a, b=b: span.weighted(p, a, b, packed),
                    softcap,
                )
            a = b
    m, total, out = state
    return out / total


def _tile_mask(
    q_lo: int,
    q_hi: int,
    k_lo: int,
    k_hi: int,
    window: Optional[int],
    role: Optional[str],
    boundary: Optional[QuantBoundary],
):
    """False when no query of the tile sees a key of the block, None when all see all, else a mask."""
    if k_lo > q_hi:
        return False
    causal = k_hi > q_lo
    wide = False
    if window is not None:
        if k_hi <= q_lo - window:
            return False
        wide = k_lo <= q_hi - window
    split = False
    if boundary is not None and role == QUANTIZED:
        if k_lo >= boundary.at(q_hi + 1):
            return False
        split = k_hi >= boundary.at(q_lo + 1)
    elif boundary is not None and role == EXACT:
        if k_hi < boundary.at(q_lo + 1):
            return False
        split = k_lo < boundary.at(q_hi + 1)
    if not (causal or wide or split):
        return None
    q_pos = mx.arange(q_lo, q_hi + 1)[:, None]
    k_pos = mx.arange(k_lo, k_hi + 1)[None]
    mask = mx.ones((q_hi - q_lo + 1, k_hi - k_lo + 1), dtype=mx.bool_)
    if causal:
        mask = mask & (k_pos <= q_pos)
    if wide:
        mask = mask & (k_pos > q_pos - window)
    if split:
        limit = boundary.array_at(q_pos + 1)
        mask = mask & ((k_pos < limit) if role == QUANTIZED else (k_pos >= limit))
    return mask


@mx.compile
def _probabilities(scores: mx.array, row_max: mx.array) -> mx.array:
    return mx.exp(scores.astype(mx.float32) - row_max)


@mx.compile
def _rescale(m_old: mx.array, m_new: mx.array) -> mx.array:
    return mx.exp(m_old - m_new)


@mx.compile
def _accumulate(old: mx.array, alpha: mx.array, new: mx.array) -> mx.array:
    return old * alpha + new.astype(mx.float32)


def _online_step(state, scores: mx.array, mask, weighted, softcap: Optional[float]):
    """Fold one block of scores into the running (max, sum, unnormalized output), all float32."""
    if softcap:
        scores = mx.tanh(scores / softcap) * softcap
    if mask is not None:
        # a finite floor: a row that sees nothing yet gets weights that the first real key zeroes
        scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
    block_max = scores.max(axis=-1, keepdims=True).astype(mx.float32)
    if state is None:
        p = _probabilities(scores, block_max)
        return block_max, p.sum(axis=-1, keepdims=True), weighted(p).astype(mx.float32)
    m_old, total, out = state
    m_new = mx.maximum(m_old, block_max)
    alpha = _rescale(m_old, m_new)
    p = _probabilities(scores, m_new)
    return (
        m_new,
        _accumulate(total, alpha, p.sum(axis=-1, keepdims=True)),
        _accumulate(out, alpha, weighted(p)),
    )
