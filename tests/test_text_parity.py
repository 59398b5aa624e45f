"""Our text decoder against transformers on tiny random checkpoints of every variant (float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mlx.core as mx

from mlx_model import load_model
from tests.reference_models import TINY_VOCAB, VARIANTS, WINDOW, build_gemma3, build_gemma4, reference_logits

TOLERANCE = 1e-4
SEQ_LEN = 4 * WINDOW + 3  # well past 3x the sliding window, so the ring wraps several times
CASES = [*VARIANTS, "gemma3"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """variant -> (torch reference model, our model) built once per module."""
    built = {}
    for name in CASES:
        path = tmp_path_factory.mktemp(name)
        if name == "gemma3":
            ref = build_gemma3(path)
        else:
            # the multimodal (hub) layout for the E-series, the text-only layout for the others
            ref = build_gemma4(name, path, multimodal_layout=name.startswith("e"))
        built[name] = (ref, load_model(path))
    return built


def _tokens(seed: int, length: int = SEQ_LEN, batch: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, TINY_VOCAB, size=(batch, length))


@pytest.mark.parametrize("name", CASES)
def test_full_forward_matches_reference(checkpoints, name):
    ref, ours = checkpoints[name]
    ids = _tokens(1, batch=2)
    expected = reference_logits(ref, ids)
    got = np.array(ours(mx.array(ids)))
    assert got.shape == expected.shape == (2, SEQ_LEN, TINY_VOCAB)
    assert np.abs(got - expected).max() <= TOLERANCE
    # and against transformers' own float32 run, whose rounding alone is of the same order
    float32_reference = reference_logits(ref, ids, dtype=torch.float32)
    assert np.abs(got - float32_reference).max() <= 2 * TOLERANCE


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("chunks", [(13,), (5, 5, 7), (WINDOW + 3, 2 * WINDOW)])
def test_prefill_then_decode_through_cache_matches_reference(checkpoints, name, chunks):
    """Chunked prefill (crossing the window) then token-by-token decode equals one full forward."""
    ref, ours = checkpoints[name]
    ids = _tokens(2)
    expected = reference_logits(ref, ids)
    cache = ours.make_cache()
    pieces, pos = [], 0
    for size in chunks:
        pieces.append(np.array(ours(mx.array(ids[:, pos:pos + size]), cache=cache)))
        pos += size
    while pos < SEQ_LEN:
        pieces.append(np.array(ours(mx.array(ids[:, pos:pos + 1]), cache=cache)))
        pos += 1
    got = np.concatenate(pieces, axis=1)
    assert np.abs(got - expected).max() <= TOLERANCE


@pytest.mark.parametrize("name", CASES)
def test_last_position_logits_only(checkpoints, name):
    _, ours = checkpoints[name]
    ids = mx.array(_tokens(3))
    full = np.array(ours(ids))
    last = np.array(ours(ids, logits_to_keep=1))
    assert last.shape == (1, 1, TINY_VOCAB)
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_greedy_generation_matches_transformers_generate(checkpoints, name):
    ref, ours = checkpoints[name]
    prompt = _tokens(4, length=6)
    with torch.no_grad():
        expected = ref.generate(
            torch.tensor(prompt), max_new_tokens=32, min_new_tokens=32, do_sample=False,
            eos_token_id=None, pad_token_id=0,
        )[0, prompt.shape[1]:].tolist()
    cache = ours.make_cache()
    logits = ours(mx.array(prompt), cache=cache, logits_to_keep=1)
    got = []
    for _ in range(32):
        token = int(mx.argmax(logits[0, -1]).item())
        got.append(token)
        logits = ours(mx.array([[token]]), cache=cache)
    assert got == expected
