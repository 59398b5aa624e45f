"""Block (online-softmax) attention over the cache gives what plain attention gives, in float32.

The plain path is MLX's fused attention over whole key/value arrays with the cache's own mask; the
block path cuts queries into tiles and keys into blocks. Tiles are shrunk here so that a short
prompt crosses many of them, the sliding ring wraps, and quantized groups cross the exact window.
"""

from __future__ import annotations

import numpy as np
import pytest

import mlx.core as mx

from mlx_model import attention, load_model
from mlx_model.attention import KVView, attend, dense_attention, rotate, tiled_attention
from mlx_model.cache import KVCache, SlidingKVCache
from mlx_model.quantized_cache import QuantizedKVCache, QuantizedSlidingKVCache
from tests.reference_models import TINY_VOCAB, WINDOW, build_gemma4

TOL = 1e-5
B, HEADS, KV_HEADS, D = 1, 4, 2, 32


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 16 queries by 32 keys: every test prompt spans several of each."""
    monkeypatch.setattr(attention, "KEY_BLOCK", 32)
    monkeypatch.setattr(attention, "TILE_BYTES", 4 * B * HEADS * 16 * 32)


def _random(shape, seed):
    return mx.array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _qkv(n, seed, heads=HEADS):
    return (
        _random((B, heads, n, D), seed),
        _random((B, KV_HEADS, n, D), seed + 1),
        _random((B, KV_HEADS, n, D), seed + 2),
    )


def _plain(queries, keys, values, start, window=None, softcap=None):
    """Plain attention: queries at start.. over keys at 0.., causal (and windowed) array mask."""
    q_pos = mx.arange(start, start + queries.shape[2])[:, None]
    k_pos = mx.arange(keys.shape[2])[None]
    mask = k_pos <= q_pos
    if window is not None:
        mask = mask & (k_pos > q_pos - window)
    return dense_attention(queries, keys, values, 1 / np.sqrt(D), mask, softcap)


@pytest.mark.parametrize("softcap", [None, 20.0])
@pytest.mark.parametrize("window", [None, 24])
def test_tiled_matches_plain_without_cache(small_tiles, window, softcap):
    q, k, v = _qkv(150, 0)
    tiled = tiled_attention(
        q, KVView.of(k, v), scale=1 / np.sqrt(D), query_start=0, window=window, softcap=softcap
    )
    np.testing.assert_allclose(np.array(tiled), np.array(_plain(q, k, v, 0, window, softcap)), atol=TOL)


def _chunks(total, sizes):
    at, i = 0, 0
    while at < total:
        n = min(sizes[i % len(sizes)], total - at)
        yield at, at + n
        at, i = at + n, i + 1


@pytest.mark.parametrize("sliding", [False, True])
def test_cache_chunks_and_decode_match_plain(small_tiles, sliding):
    """Chunked prefill over a 16-bit cache (the ring wrapping several times), then decode."""
    window = 40
    q, k, v = _qkv(300, 3)
    cache = SlidingKVCache(window) if sliding else KVCache()
    for lo, hi in list(_chunks(280, [70, 33, 1, 64])) + [(i, i + 1) for i in range(280, 300)]:
        view = cache.update_and_view(k[:, :, lo:hi], v[:, :, lo:hi])
        mask = cache.make_mask(hi - lo, window if sliding else None)
        out = attend(
            q[:, :, lo:hi],
            view,
            scale=1 / np.sqrt(D),
            query_start=lo,
            window=window if sliding else None,
            mask=mask,
        )
        expected = _plain(q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi], lo, window if sliding else None)
        np.testing.assert_allclose(np.array(out), np.array(expected), atol=TOL, err_msg=f"chunk {lo}:{hi}")


def _quantized_reference(q, k, v, start, bits, group, recent, window=None):
    """What a quantized cache's queries read: key j is quantized for query i iff j < boundary(i + 1).

    Keys are quantized per channel along the tokens, values per token after a Hadamard rotation."""
    n = k.shape[2]
    usable = n // group * group
    kq, vq = np.array(k), np.array(v)
    if usable:
        kt = mx.quantize(k[:, :, :usable].swapaxes(-1, -2), group_size=group, bits=bits)
        kq[:, :, :usable] = np.array(mx.dequantize(*kt, group_size=group, bits=bits).swapaxes(-1, -2))
        vr = mx.quantize(rotate(v[:, :, :usable]), group_size=group, bits=bits)
        vq[:, :, :usable] = np.array(rotate(mx.dequantize(*vr, group_size=group, bits=bits)))
    boundary = attention.QuantBoundary(recent, group)
    rows = []
    for i in range(q.shape[2]):
        pos = start + i
        quantized = np.arange(n) < boundary.at(pos + 1)
        keys = np.where(quantized[:, None], kq, np.array(k))
        values = np.where(quantized[:, None], vq, np.array(v))
        rows.append(
            _plain(
                q[:, :, i : i + 1],
                mx.array(keys[:, :, : pos + 1]),
                mx.array(values[:, :, : pos + 1]),
                pos,
                window,
            )
        )
    return np.concatenate([np.array(r) for r in rows], axis=2)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("sliding", [False, True])
def test_quantized_cache_matches_reference(small_tiles, bits, sliding):
    """Prefill in chunks, then decode: each query reads exactly the keys decode would read."""
    group, recent, window, total, prompt = 32, 16, 100, 290, 260
    q, k, v = _qkv(total, 7)
    cache = (
        QuantizedSlidingKVCache(window, bits, group, recent)
        if sliding
        else QuantizedKVCache(bits, group, recent)
    )
    for lo, hi in list(_chunks(prompt, [90, 45, 1, 64])) + [(i, i + 1) for i in range(prompt, total)]:
        view = cache.update_and_view(k[:, :, lo:hi], v[:, :, lo:hi])
        out = attend(
            q[:, :, lo:hi],
            view,
            scale=1 / np.sqrt(D),
            query_start=lo,
            window=window if sliding else None,
            mask=cache.make_mask(hi - lo),
        )
        expected = _quantized_reference(
            q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi], lo, bits, group, recent, window if sliding else None
        )
        np.testing.assert_allclose(np.array(out), expected, atol=TOL, err_msg=f"chunk {lo}:{hi}")
    assert cache.quantized == (total - recent) // group * group


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2b")
    build_gemma4("e2b", path, head_dim=32, global_head_dim=64)
    return load_model(path)


@pytest.mark.parametrize("kv_bits", [None, 8])
def test_model_logits_same_whatever_the_tiles(tiny_model, monkeypatch, kv_bits):
    """A whole model: chunked prefill plus decode with tiny tiles equals one-tile attention."""
    ids = np.random.default_rng(4).integers(3, TINY_VOCAB, 30 * WINDOW).tolist()

    def run():
        cache = tiny_model.make_cache(kv_bits=kv_bits, kv_group_size=32)
        outs = [
            tiny_model(mx.array([ids[lo:hi]]), cache=cache) for lo, hi in _chunks(len(ids) - 4, [100, 37])
        ]
        outs += [tiny_model(mx.array([[t]]), cache=cache) for t in ids[-4:]]
        return np.concatenate([np.array(o[0]) for o in outs])

    whole = run()
    monkeypatch.setattr(attention, "KEY_BLOCK", 32)
    monkeypatch.setattr(attention, "TILE_BYTES", 4 * 8 * 16 * 32)
    np.testing.assert_allclose(run(), whole, atol=1e-4)
