"""Which modules to quantize (and how), and the quantization of one weight in row chunks.

Policy: Gemma 4's mixed-precision recipe (mlx_model/quant_recipe.py, through `Model.quant_predicate`):
every module that MLX can quantize (nn.Linear, nn.Embedding, our expert "switch" linears: anything
with `to_quantized`) at the requested bits, except the sensitive ones the recipe keeps at 8 bits (PLE,
router, embeddings/head, v_proj/down_proj in a third of the layers, the towers) or in float (the
towers' projections). `uniform=True`: every module at the requested bits, the router at 8.
Norms, scalars (layer_scalar, router scale, per-expert scale), position tables, convolutions and clip
bounds are plain parameters, not quantizable modules, so they stay in float. A module whose input
width is not a multiple of the group size stays in float too.

Method: MLX's affine format (w ~ scale * q + bias per group), but scale and bias are chosen to
minimise each group's squared error (a search over clipped ranges, then a least-squares refit)
instead of mlx.core.quantize's min/max rounding. Same files, same loader, 12-36% lower weight MSE
on Gemma 3 270M at 4 bits (7-30% at 8 bits) (see tests/test_convert_real.py for the model-level comparison).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import mlx.core as mx
import mlx.nn as nn

QuantSetting = Union[bool, dict]
# Elements quantized per call: bounds the float32 temporaries (a few x 64 MB) on huge tables such as PLE.
_CHUNK_ELEMENTS = 16 * 1024 * 1024
# Fractions of each group's [min, max] range tried by the search (1.0 = plain min/max). Clipping pays at
# 4 bits and below; at 8 bits it never won on Gemma 3 270M, so there the refit alone runs (half the time).
_RANGE_GRID = (1.0, 0.92, 0.84, 0.76)
_CLIP_SEARCH_MAX_BITS = 4
# Bit widths whose packing (MLX's little-endian bit stream) we write ourselves.
_PACKABLE_BITS = (2, 3, 4, 5, 6, 8)


@dataclass(frozen=True)
class QuantParams:
    """bits/group_size/mode for one module."""

    bits: int
    group_size: int
    mode: str = "affine"

    def as_config(self) -> dict[str, Any]:
        """The per-module entry of config.json's "quantization"."""
        return {"group_size": self.group_size, "bits": self.bits, "mode": self.mode}


class QuantPlan:
    """Per-module decisions, made once from the model skeleton before any weight is read."""

    def __init__(self, model: nn.Module, bits: int, group_size: int, mode: str = "affine",
                 uniform: bool = False):
        self.default = QuantParams(bits, group_size, mode)
        self.uniform = uniform
        self.modules: dict[str, QuantParams | None] = {}
        predicate = getattr(model, "quant_predicate", None)
        for path, module in model.named_modules():
            if not hasattr(module, "to_quantized") or not hasattr(module, "weight"):
                continue
            decision: Any = (predicate(path, module, bits=bits, group_size=group_size, uniform=uniform)
                             if predicate is not None else True)
            params = None
            if isinstance(decision, dict):
                params = QuantParams(int(decision.get("bits", bits)), int(decision.get("group_size", group_size)),
                                     str(decision.get("mode", mode)))
            elif decision:
                params = self.default
            if params is not None and module.weight.shape[-1] % params.group_size:
                params = None  # input width not divisible by the group: keep float
            self.modules[path] = params

    def bits_summary(self) -> dict[str, int]:
        """Number of quantized modules at each width ("float" for the ones kept in float)."""
        counts: dict[str, int] = {}
        for params in self.modules.values():
            key = "float" if params is None else f"{params.bits}-bit"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def for_weight(self, tensor_name: str) -> QuantParams | None:
        """Quantization of tensor `<module>.weight`, or None to keep it in float."""
        if not tensor_name.endswith(".weight"):
            return None
        return self.modules.get(tensor_name[: -len(".weight")])

    def config_entry(self) -> dict[str, Any]:
        """config.json "quantization": defaults plus every module that differs (False = kept float)."""
        entry: dict[str, Any] = self.default.as_config()
        for path, params in sorted(self.modules.items()):
            if params is None:
                entry[path] = False
            elif params != self.default:
                entry[path] = params.as_config()
        return entry

    def quantized_names(self, tensor_name: str) -> list[str]:
        """Output tensor names for a source weight (weight, scales, biases when quantized)."""
        params = self.for_weight(tensor_name)
        if params is None:
            return [tensor_name]
        module = tensor_name[: -len(".weight")]
        suffixes = ("weight", "scales", "biases") if params.mode == "affine" else ("weight", "scales")
        return [f"{module}.{suffix}" for suffix in suffixes]


def row_chunks(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """[start, stop) ranges over the first axis, each about _CHUNK_ELEMENTS elements."""
    if len(shape) < 2:
        return [(0, shape[0] if shape else 1)]
    per_row = 1
    for size in shape[1:]:
        per_row *= size
    step = max(1, _CHUNK_ELEMENTS // per_row)
    return [(start, min(shape[0], start + step)) for start in range(0, shape[0], step)]


def _pack(codes: mx.array, bits: int) -> mx.array:
    """uint32 codes [..., C] -> MLX's packed layout [..., C * bits / 32]: a little-endian bit stream per row
    (element j at bit j*bits; with 3, 5 or 6 bits an element may straddle two words)."""
    if 32 % bits == 0:
        per_word = 32 // bits
        codes = codes.reshape(*codes.shape[:-1], -1, per_word)
        shifts = mx.arange(per_word, dtype=mx.uint32) * bits
        return mx.sum(mx.left_shift(codes, shifts), axis=-1).astype(mx.uint32)
    blocks = codes.reshape(*codes.shape[:-1], -1, 32)  # 32 codes fill exactly `bits` words
    words: list = [None] * bits
    for j in range(32):
        word, offset = divmod(j * bits, 32)
        code = blocks[..., j]
        low = mx.left_shift(code, mx.array(offset, dtype=mx.uint32))  # uint32: the bits past 32 drop off
        words[word] = low if words[word] is None else mx.bitwise_or(words[word], low)
        if offset + bits > 32:
            high = mx.right_shift(code, mx.array(32 - offset, dtype=mx.uint32))
            words[word + 1] = high if words[word + 1] is None else mx.bitwise_or(words[word + 1], high)
    return mx.stack(words, axis=-1).reshape(*codes.shape[:-1], -1)


def _group_error(groups: mx.array, scale: mx.array, bias: mx.array, levels: int) -> mx.array:
    codes = mx.clip(mx.round((groups - bias) / scale), 0, levels)
    return mx.sum(mx.square(codes * scale + bias - groups), axis=-1, keepdims=True)


def mse_affine_quantize(weight: mx.array, group_size: int, bits: int, out_dtype: mx.Dtype) -> list[mx.array]:
    """Affine quantization with per-group scale/bias minimising the squared error; MLX's packed format."""
    shape = weight.shape
    levels = 2 ** bits - 1
    groups = weight.astype(mx.float32).reshape(-1, shape[-1] // group_size, group_size)
    low, high = mx.min(groups, axis=-1, keepdims=True), mx.max(groups, axis=-1, keepdims=True)
    best_error = best_scale = best_bias = None
    for fraction in _RANGE_GRID if bits <= _CLIP_SEARCH_MAX_BITS else _RANGE_GRID[:1]:
        scale = mx.maximum((high - low) * fraction, 1e-8) / levels
        bias = low * fraction
        error = _group_error(groups, scale, bias, levels)
        if best_error is None:
            best_error, best_scale, best_bias = error, scale, bias
        else:
            better = error < best_error
            best_error = mx.where(better, error, best_error)
            best_scale = mx.where(better, scale, best_scale)
            best_bias = mx.where(better, bias, best_bias)
        mx.eval(best_error, best_scale, best_bias)
    scale, bias, error = best_scale, best_bias, best_error
    for _ in range(2):  # least-squares refit of scale and bias for the chosen codes, kept where it helps
        codes = mx.clip(mx.round((groups - bias) / scale), 0, levels)
        code_mean, weight_mean = mx.mean(codes, -1, keepdims=True), mx.mean(groups, -1, keepdims=True)
        variance = mx.mean(mx.square(codes - code_mean), -1, keepdims=True)
        covariance = mx.mean((codes - code_mean) * (groups - weight_mean), -1, keepdims=True)
        fitted = covariance / mx.maximum(variance, 1e-12)
        usable = (variance > 1e-12) & (fitted > 0)
        new_scale = mx.where(usable, fitted, scale)
        new_bias = mx.where(usable, weight_mean - new_scale * code_mean, bias)
        new_error = _group_error(groups, new_scale, new_bias, levels)
        better = new_error < error
        scale, bias = mx.where(better, new_scale, scale), mx.where(better, new_bias, bias)
        error = mx.minimum(new_error, error)
        mx.eval(scale, bias, error)
    # codes from the scale/bias as stored (rounded to out_dtype), so dequantization sees what we optimised
    scale, bias = scale.astype(out_dtype), bias.astype(out_dtype)
    codes = mx.clip(mx.round((groups - bias.astype(mx.float32)) / scale.astype(mx.float32)), 0, levels)
    packed = _pack(codes.astype(mx.uint32).reshape(shape), bits)
    parts = [packed, scale.reshape(*shape[:-1], -1), bias.reshape(*shape[:-1], -1)]
    mx.eval(parts)
    return parts


def quantize_chunk(weight: mx.array, params: QuantParams, out_dtype: mx.Dtype) -> list[mx.array]:
    """Quantize a float chunk (evaluated); scales and biases in out_dtype."""
    if params.mode == "affine" and params.bits in _PACKABLE_BITS:
        return mse_affine_quantize(weight, params.group_size, params.bits, out_dtype)
    parts = mx.quantize(weight.astype(mx.float32), group_size=params.group_size, bits=params.bits, mode=params.mode)
    parts = [parts[0]] + [p.astype(out_dtype) for p in parts[1:]]
    mx.eval(parts)
    return parts


def join_chunks(chunks: list[list[mx.array]]) -> list[mx.array]:
    """Concatenate per-chunk parts (weight, scales, biases) along rows, freeing each chunk's part once joined."""
    if len(chunks) == 1:
        return chunks[0]
    joined = []
    for i in range(len(chunks[0])):
        joined.append(mx.concatenate([chunk[i] for chunk in chunks], axis=0))
        mx.eval(joined[-1])
        for chunk in chunks:
            chunk[i] = None  # the joined copy is the only one now
        mx.clear_cache()
    return joined


def quantize_weight(weight: mx.array, params: QuantParams, out_dtype: mx.Dtype) -> list[mx.array]:
    """Quantize a whole weight row-chunk by row-chunk (identical to one call: groups run along the last axis)."""
    return join_chunks([quantize_chunk(weight[a:b], params, out_dtype) for a, b in row_chunks(tuple(weight.shape))])
