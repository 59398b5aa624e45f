"""Small building blocks shared by the towers: norms, rotary embedding, expert linears."""

from __future__ import annotations

from functools import partial

import math
from typing import Optional

import mlx.core as mx
import mlx.nn as nn


class RMSNorm(nn.Module):
    """Gemma 4 RMSNorm: `x * (mean(x^2) + eps)^-0.5 * weight`, the weight used as is.

    HF modeling_gemma4.py:204 (no `1 + w`); `with_scale=False` has no weight at all.
    """

    def __init__(self, dims: int, eps: float = 1e-6, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        self.with_scale = with_scale
        if with_scale:
            self.weight = mx.ones((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, self.weight if self.with_scale else None, self.eps)


class OffsetRMSNorm(nn.Module):
    """Gemma 3 RMSNorm: the weight is stored as an offset from one (HF modeling_gemma3.py:148)."""

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = mx.zeros((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, 1.0 + self.weight.astype(mx.float32), self.eps).astype(x.dtype)


def rope_inverse_frequencies(head_dim: int, params: dict) -> mx.array:
    """Inverse frequencies exactly as transformers computes them for one layer type.

    Supports "default", "linear" (factor) and Gemma 4's "proportional" partial RoPE
    (modeling_rope_utils.py:240-267: the non-rotated tail has frequency 0).
    """
    rope_type = params.get("rope_type", "default")
    base = float(params.get("rope_theta", 10000.0))
    factor = float(params.get("factor", 1.0)) if rope_type in ("linear", "proportional") else 1.0
    if rope_type == "proportional":
        rotated = int(float(params.get("partial_rotary_factor", 1.0)) * head_dim // 2)
    elif rope_type in ("default", "linear"):
        rotated = head_dim // 2
    else:
        raise ValueError(
            f"RoPE type {rope_type!r} is not supported; expected default, linear or proportional."
        )
    exponents = mx.arange(0, 2 * rotated, 2, dtype=mx.float32) / head_dim
    inv_freq = 1.0 / (base**exponents)
    if rotated < head_dim // 2:
        inv_freq = mx.concatenate([inv_freq, mx.zeros((head_dim // 2 - rotated,), dtype=mx.float32)])
    return inv_freq / factor


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE over the whole head dim with explicit frequencies.

    `mx.fast.rope` takes wavelengths (1/inv_freq); a zero inverse frequency becomes an infinite
    wavelength, i.e. the identity on that pair of dims.
    """

    def __init__(self, head_dim: int, params: dict):
        super().__init__()
        self.head_dim = head_dim
        inv_freq = rope_inverse_frequencies(head_dim, params)
        self._wavelengths = mx.where(inv_freq > 0, 1.0 / mx.maximum(inv_freq, 1e-30), mx.inf)

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        return mx.fast.rope(
            x,
            self.head_dim,
            traditional=False,
            base=None,
            scale=1.0,
            offset=offset,
            freqs=self._wavelengths,
        )


def _sort_by_expert(x: mx.array, indices: mx.array):
    """Group token copies by expert so gather_mm reads each expert's weight once."""
    k = indices.shape[-1]
    flat = indices.flatten()
    order = mx.argsort(flat)
    inverse = mx.argsort(order)
    return x.flatten(0, -3)[order // k], flat[order], inverse


class ExpertLinear(nn.Module):
    """A bank of per-expert linears [E, out, in] applied with `mx.gather_mm` (no loop over experts)."""

    def __init__(self, input_dims: int, output_dims: int, num_experts: int):
        super().__init__()
        scale = math.sqrt(1.0 / input_dims)
        self.weight = mx.random.uniform(-scale, scale, (num_experts, output_dims, input_dims))

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        return mx.gather_mm(
            x, self.weight.swapaxes(-1, -2), rhs_indices=indices, sorted_indices=sorted_indices
        )

    def to_quantized(self, group_size: int = 64, bits: int = 4, mode: str = "affine"):
        """Quantized copy, so `nn.quantize` treats expert banks like any linear."""
        return QuantizedExpertLinear.from_expert_linear(self, group_size, bits, mode)


class QuantizedExpertLinear(nn.Module):
    """Quantized expert bank applied with `mx.gather_qmm`."""

    def __init__(self, input_dims: int, output_dims: int, num_experts: int,
                 group_size: int = 64, bits: int = 4, mode: str = "affine"):
        super().__init__()
        self.group_size, self.bits, self.mode = group_size, bits, mode
        weight = mx.zeros((num_experts, output_dims, input_dims))
        self.weight, self.scales, *biases = mx.quantize(weight, group_size, bits, mode=mode)
        self.biases = biases[0] if biases else None
        self.freeze()

    @classmethod
    def from_expert_linear(cls, layer: ExpertLinear, group_size: int, bits: int, mode: str):
        num_experts, output_dims, input_dims = layer.weight.shape
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        q.group_size, q.bits, q.mode = group_size, bits, mode
        q.weight, q.scales, *biases = mx.quantize(layer.weight, group_size, bits, mode=mode)
        q.biases = biases[0] if biases else None
        q.freeze()
        return q

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        return mx.gather_qmm(
            x, self.weight, self.scales, self.biases, rhs_indices=indices, transpose=True,
            group_size=self.group_size, bits=self.bits, mode=self.mode, sorted_indices=sorted_indices,
        )


@partial(mx.compile, shapeless=True)
def gated_gelu(gate: mx.array, x: mx.array) -> mx.array:
    """`gelu_pytorch_tanh(gate) * x`, Gemma's MLP activation, as one fused kernel (every MLP and the PLE gate
    run it once per token)."""
    return nn.gelu_approx(gate) * x


# tanh(y) ~ y * P(y^2) / Q(y^2) for |y| <= 9, where tanh is 1 to float32 precision beyond: our own
# least-squares fit (scripts/fit_tanh.py), within 3.2e-7 of tanh in float32. A dozen fused multiply-adds
# run 5-6x faster than the CPU's tanh over a 262,144-entry logit row, the largest elementwise op of a step.
_TANH_P = (9.999999934781888e-01, 1.308409017137544e-01, 3.104045193054048e-03, 1.115522585889429e-05,
           -2.022886677299843e-08, 5.279655914480056e-11, -8.492976550497407e-14)
_TANH_Q = (1.0, 4.641741730804574e-01, 2.449553400497658e-02, 2.546274028939030e-04)
_TANH_LIMIT = 9.0


def _polynomial(coefficients: tuple, s: mx.array) -> mx.array:
    value = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        value = value * s + c
    return value


def fast_tanh(y: mx.array) -> mx.array:
    """tanh of a float32 array by the rational approximation above (|error| <= 3.2e-7)."""
    y = mx.clip(y, -_TANH_LIMIT, _TANH_LIMIT)
    s = y * y
    return mx.clip(y * _polynomial(_TANH_P, s) / _polynomial(_TANH_Q, s), -1.0, 1.0)


@partial(mx.compile, shapeless=True)
def _softcap(x: mx.array, cap: mx.array) -> mx.array:
    # in float32 whatever the logits' dtype: the polynomial needs the precision (HF:1927 final_logit_softcapping)
    return (fast_tanh(x.astype(mx.float32) / cap) * cap).astype(x.dtype)


def softcap(x: mx.array, cap: Optional[float]) -> mx.array:
    """`tanh(x / cap) * cap` as one fused kernel, or x unchanged when no cap is set."""
    if not cap:
        return x
    return _softcap(x, mx.array(cap, dtype=mx.float32))


class ClippableLinear(nn.Module):
    """Bias-free linear whose input and output are clamped to bounds stored in the checkpoint (HF:175).

    Used by the vision and the audio towers alike (`Gemma4ClippableLinear`)."""

    def __init__(self, input_dims: int, output_dims: int, use_clipped_linears: bool = True):
        super().__init__()
        self.use_clipped_linears = use_clipped_linears
        self.linear = nn.Linear(input_dims, output_dims, bias=False)
        if use_clipped_linears:
            self.input_min = mx.array(-math.inf)
            self.input_max = mx.array(math.inf)
            self.output_min = mx.array(-math.inf)
            self.output_max = mx.array(math.inf)

    def __call__(self, x: mx.array) -> mx.array:
        if self.use_clipped_linears:
            x = mx.clip(x, self.input_min.astype(x.dtype), self.input_max.astype(x.dtype))
        x = self.linear(x)
        if self.use_clipped_linears:
            x = mx.clip(x, self.output_min.astype(x.dtype), self.output_max.astype(x.dtype))
        return x
