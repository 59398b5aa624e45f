"""8-bit and 4-bit KV caches: same answers as 16-bit where it matters, far fewer bytes."""

from __future__ import annotations

import numpy as np
import pytest

import mlx.core as mx

from mlx_model import load_model
from tests.reference_models import TINY_VOCAB, WINDOW, build_gemma4

# head dims of 32/64 so the smallest quantization group (32) fits. The MoE variant is left out: on random
# weights a tiny perturbation flips its top-k routing, which says nothing about the cache.
WIDE_HEADS = dict(head_dim=32, global_head_dim=64)


@pytest.fixture(scope="module", params=["e2b", "31b"])
def model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    build_gemma4(request.param, path, **WIDE_HEADS)
    return load_model(path)


def _greedy(model, prompt, n, kv_bits):
    cache = model.make_cache(kv_bits=kv_bits, kv_group_size=32)
    logits = model(mx.array([prompt]), cache=cache, logits_to_keep=1)
    out = []
    for _ in range(n):
        token = int(mx.argmax(logits[0, -1]).item())
        out.append(token)
        logits = model(mx.array([[token]]), cache=cache)
    return out, cache


def test_8bit_kv_keeps_greedy_tokens_and_halves_bytes(model):
    prompt = np.random.default_rng(0).integers(3, TINY_VOCAB, 3 * WINDOW).tolist()
    full, full_cache = _greedy(model, prompt, 64, None)
    eight, eight_cache = _greedy(model, prompt, 64, 8)
    assert eight == full
    full_bytes = sum(c.nbytes for c in full_cache)
    assert sum(c.nbytes for c in eight_cache) <= 0.55 * full_bytes * 2  # float32 here: 16-bit would be half


def test_teacher_forced_top1_agreement(model):
    """Decode a fixed text token by token and compare top-1 predictions with the 16-bit cache.

    Random tiny models have many near-ties (top-2 margins of 0.01 where trained models have
    several units), so agreement is asserted where the 16-bit margin is not a tie (> 0.05) and the
    overall figure is printed.
    """
    text = np.random.default_rng(1).integers(3, TINY_VOCAB, 12 * WINDOW + 100).tolist()
    logits = {}
    for bits in (None, 8, 4):
        cache = model.make_cache(kv_bits=bits, kv_group_size=32)
        model(mx.array([text[:WINDOW]]), cache=cache)
        logits[bits] = np.concatenate([np.array(model(mx.array([[t]]), cache=cache)[0]) for t in text[WINDOW:]])
    reference = logits[None]
    top2 = np.sort(reference, axis=-1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > 0.05
    for bits, floor in ((8, 0.99), (4, 0.30)):  # 4-bit is reported; its floor only rules out a broken path
        agree = logits[bits].argmax(-1) == reference.argmax(-1)
        print(f"{bits}-bit KV top-1 agreement: {agree.mean():.3f} overall, {agree[decisive].mean():.3f} "
              f"where 16-bit is decisive ({decisive.sum()} of {len(agree)} positions)")
        assert agree[decisive].mean() >= floor
    assert (logits[8].argmax(-1) == reference.argmax(-1)).mean() >= 0.95


def test_quantized_prefill_chunks_match_single_pass(model):
    """The ring's multi-token path and the decode path agree under quantization too."""
    ids = np.random.default_rng(2).integers(3, TINY_VOCAB, 4 * WINDOW).tolist()
    one = model.make_cache(kv_bits=8, kv_group_size=32)
    whole = np.array(model(mx.array([ids]), cache=one)[:, -1])
    chunked = model.make_cache(kv_bits=8, kv_group_size=32)
    for start in range(0, len(ids), 5):
        last = model(mx.array([ids[start:start + 5]]), cache=chunked)
    np.testing.assert_allclose(np.array(last[:, -1]), whole, atol=1e-4)
