"""The logit softcap's rational tanh (mlx_model/layers.py) stays within float32 precision of tanh."""

from __future__ import annotations

import numpy as np

import mlx.core as mx

from mlx_model.layers import fast_tanh, softcap


def test_fast_tanh_is_within_float32_precision_everywhere():
    y = np.linspace(-40, 40, 400_001, dtype=np.float32)
    got = np.array(fast_tanh(mx.array(y)))
    assert np.abs(got - np.tanh(y.astype(np.float64))).max() < 3.5e-7
    assert np.abs(got).max() <= 1.0 and np.all(np.diff(got) >= -7e-7)  # bounded; monotone within the error
    extremes = np.array(fast_tanh(mx.array([-1e30, -9.5, 0.0, 1e-30, 9.5, 1e30], dtype=mx.float32)))
    np.testing.assert_array_equal(extremes, np.array([-1.0, -1.0, 0.0, 1e-30, 1.0, 1.0], dtype=np.float32))


def test_softcap_matches_tanh_in_every_dtype():
    logits = mx.random.normal((2, 3, 4096), key=mx.random.key(0)) * 50
    reference = np.tanh(np.array(logits, dtype=np.float64) / 30.0) * 30.0
    assert np.abs(np.array(softcap(logits, 30.0)) - reference).max() < 1.2e-5
    for dtype in (mx.bfloat16, mx.float16):
        capped = softcap(logits.astype(dtype), 30.0)
        assert capped.dtype == dtype
        exact = np.tanh(np.array(logits.astype(dtype).astype(mx.float32), dtype=np.float64) / 30.0) * 30.0
        ulp = 0.125 if dtype == mx.bfloat16 else 0.016  # half a unit in the last place near 30
        assert np.abs(np.array(capped.astype(mx.float32)) - exact).max() <= ulp
    assert softcap(logits, None) is logits
