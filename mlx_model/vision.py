"""Gemma 4 vision tower in MLX, following transformers 5.23 `Gemma4VisionModel`.

Patches [B, N, 768] + (x, y) positions [B, N, 2] -> patch embedding with learned 2-D position table ->
bidirectional encoder (4-norm sandwich, q/k/v norms, axial 2-D RoPE, scaling 1.0) -> 3x3 position pooling
* sqrt(H) -> optional standardize. Padding patches carry position (-1, -1); their outputs are dropped.
Attribute names equal the checkpoint's weight names under `model.vision_tower.`.
HF = transformers/models/gemma4/modeling_gemma4.py (5.23.0).
"""

from __future__ import annotations


import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .config import VisionConfig
from .layers import ClippableLinear, RMSNorm

_ACTIVATIONS = {"gelu_pytorch_tanh": nn.gelu_approx, "gelu": nn.gelu, "silu": nn.silu, "relu": nn.relu}
_CLIP_BUFFERS = ("input_min", "input_max", "output_min", "output_max")
# HF buffers that are recomputed, never loaded (persistent=False), dropped if a checkpoint carries them.
_NON_PERSISTENT = ("rotary_emb.inv_freq", "rotary_emb.original_inv_freq")


class MLP(nn.Module):
    """HF:696 gated MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        hidden, inner, clip = config.hidden_size, config.intermediate_size, config.use_clipped_linears
        self.gate_proj = ClippableLinear(hidden, inner, clip)
        self.up_proj = ClippableLinear(hidden, inner, clip)
        self.down_proj = ClippableLinear(inner, hidden, clip)
        self.act = _ACTIVATIONS[config.hidden_activation]

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def rope_cos_sin(position_ids: mx.array, head_dim: int, theta: float) -> tuple[mx.array, mx.array]:
    """Axial 2-D RoPE tables [2 (x, y), B, N, 1, head_dim/4] (HF:745: inv_freq over head_dim/2).

    Computed in float32 as HF does; padding positions (-1) give harmless values (they are masked out).
    """
    spatial = head_dim // 2
    inv_freq = 1.0 / (theta ** (mx.arange(0, spatial, 2, dtype=mx.float32) / spatial))
    angles = position_ids.astype(mx.float32)[..., None] * inv_freq  # [B, N, 2, head_dim/4]
    angles = mx.moveaxis(angles, 2, 0)[:, :, :, None, :]  # [2, B, N, 1, head_dim/4]
    return mx.cos(angles), mx.sin(angles)


def apply_axial_rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """HF:846 `apply_multidimensional_rope`: first half of head_dim rotated by x, second half by y,
    each half with rotate-half over itself. x: [B, N, heads, head_dim]."""
    dtype = x.dtype
    parts = []
    for axis, half in enumerate(mx.split(x, 2, axis=-1)):
        c, s = cos[axis].astype(dtype), sin[axis].astype(dtype)
        first, second = mx.split(half, 2, axis=-1)
        parts.append(mx.concatenate([first * c - second * s, second * c + first * s], axis=-1))
    return mx.concatenate(parts, axis=-1)


class Attention(nn.Module):
    """HF:902 bidirectional self-attention with q/k norms (weighted), v norm (unweighted), scaling 1.0."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden, clip = config.hidden_size, config.use_clipped_linears
        self.q_proj = ClippableLinear(hidden, self.num_heads * self.head_dim, clip)
        self.k_proj = ClippableLinear(hidden, self.num_kv_heads * self.head_dim, clip)
        self.v_proj = ClippableLinear(hidden, self.num_kv_heads * self.head_dim, clip)
        self.o_proj = ClippableLinear(self.num_heads * self.head_dim, hidden, clip)
        self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.v_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps, with_scale=False)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, mask: mx.array) -> mx.array:
        batch, length, _ = x.shape
        q = self.q_proj(x).reshape(batch, length, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(batch, length, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(batch, length, self.num_kv_heads, self.head_dim)
        q = apply_axial_rope(self.q_norm(q), cos, sin).transpose(0, 2, 1, 3)
        k = apply_axial_rope(self.k_norm(k), cos, sin).transpose(0, 2, 1, 3)
        v = self.v_norm(v).transpose(0, 2, 1, 3)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=mask)  # HF:920 scaling = 1.0
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(batch, length, -1))


class EncoderLayer(nn.Module):
    """HF:971: x + post_attn_norm(attn(input_norm(x))), then x + post_ff_norm(mlp(pre_ff_norm(x)))."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(hidden, eps=eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps=eps)
        self.pre_feedforward_layernorm = RMSNorm(hidden, eps=eps)
        self.post_feedforward_layernorm = RMSNorm(hidden, eps=eps)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, mask: mx.array) -> mx.array:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Encoder(nn.Module):
    """HF:1015 stack of encoder layers over all patches; padding patches are never attended to."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.layers = [EncoderLayer(config) for _ in range(config.num_hidden_layers)]

    def __call__(self, x: mx.array, position_ids: mx.array, valid: mx.array) -> mx.array:
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        mask = valid[:, None, None, :]  # HF:1040 bidirectional mask, keys restricted to real patches
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return x


class PatchEmbedder(nn.Module):
    """HF:584 `input_proj(2 * (pixels - 0.5))` + x/y rows of `position_embedding_table` (zero for padding)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.input_proj = nn.Linear(3 * config.patch_size**2, config.hidden_size, bias=False)
        self.position_embedding_table = mx.zeros((2, config.position_embedding_size, config.hidden_size))

    def __call__(self, pixel_values: mx.array, position_ids: mx.array, padding: mx.array) -> mx.array:
        dtype = self.position_embedding_table.dtype  # HF:621 pixels cast to the weights' dtype
        hidden = self.input_proj((2 * (pixel_values.astype(mx.float32) - 0.5)).astype(dtype))
        clamped = mx.maximum(position_ids, 0)  # HF:610 padding (-1) looks up row 0, zeroed below
        table = self.position_embedding_table
        positions = table[0][clamped[..., 0]] + table[1][clamped[..., 1]]
        positions = mx.where(padding[..., None], mx.zeros((), dtype=positions.dtype), positions)
        return hidden + positions.astype(hidden.dtype)


class Pooler(nn.Module):
    """HF:629 average of each k x k block of patches (by position), times sqrt(hidden) in float32."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.root_hidden_size = config.hidden_size**0.5
        self.kernel = config.pooling_kernel_size

    def __call__(self, hidden: mx.array, kernel_index: mx.array, padding: mx.array,
                 output_length: int) -> mx.array:
        """[B, N, H] -> [B, output_length, H] float32; `kernel_index` [B, N] from `pooling_plan`."""
        dtype = hidden.dtype
        hidden = mx.where(padding[..., None], mx.zeros((), dtype=dtype), hidden)
        if hidden.shape[1] != output_length:
            batch, _, dims = hidden.shape
            rows = mx.broadcast_to(mx.arange(batch)[:, None], kernel_index.shape)
            pooled = mx.zeros((batch, output_length, dims), dtype=mx.float32)
            pooled = pooled.at[rows, kernel_index].add(hidden.astype(mx.float32) / (self.kernel**2))
            hidden = pooled.astype(dtype)  # HF:667 pooled back in the working dtype before scaling
        return hidden.astype(mx.float32) * self.root_hidden_size


def pooling_plan(position_ids: np.ndarray, kernel: int, output_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Kernel index of every patch [B, N] and which pooled outputs are real [B, L] (HF:647-667).

    Padding is clamped to (0, 0) like HF, so it falls into kernel 0 with a zero hidden state.
    """
    batch, length, _ = position_ids.shape
    if (length // output_length) != kernel**2 or length % output_length:
        raise ValueError(
            f"cannot pool {length} patches to {output_length} soft tokens with a {kernel}x{kernel} kernel; "
            f"pad the patches to max_soft_tokens * {kernel**2}"
        )
    clamped = np.maximum(position_ids, 0).astype(np.int64)
    max_x = clamped[..., 0].max(axis=-1, keepdims=True) + 1
    index = clamped[..., 0] // kernel + (max_x // kernel) * (clamped[..., 1] // kernel)
    if index.max(initial=0) >= output_length:
        raise ValueError("patch positions do not fit the soft-token budget; use the Gemma 4 image processor")
    valid = np.zeros((batch, output_length), dtype=bool)
    np.put_along_axis(valid, index, True, axis=1)
    return index.astype(np.int32), valid


class VisionModel(nn.Module):
    """HF:2055 `Gemma4VisionModel`: patches -> soft tokens (before `embed_vision`)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.patch_embedder = PatchEmbedder(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)
        if config.standardize:
            self.std_bias = mx.zeros((config.hidden_size,))
            self.std_scale = mx.ones((config.hidden_size,))

    def __call__(self, pixel_values: mx.array, position_ids: mx.array) -> list[mx.array]:
        """Soft tokens per image: a list of B arrays [n_i, hidden] in the encoder's dtype, padding dropped.

        pixel_values [B, N, 3*p*p] in [0, 1]; position_ids [B, N, 2] (x, y) with (-1, -1) for padding;
        N must be max_soft_tokens * pooling_kernel_size**2 (the image processor's padding).
        """
        positions_np = np.asarray(position_ids)
        pixel_values = mx.array(pixel_values) if not isinstance(pixel_values, mx.array) else pixel_values
        kernel = self.config.pooling_kernel_size
        output_length = pixel_values.shape[-2] // kernel**2
        kernel_index, pooled_valid = pooling_plan(positions_np, kernel, output_length)
        padding_np = (positions_np == -1).all(axis=-1)
        positions, padding = mx.array(positions_np.astype(np.int32)), mx.array(padding_np)

        embeds = self.patch_embedder(pixel_values, positions, padding)
        hidden = self.encoder(embeds, positions, ~padding)
        pooled = self.pooler(hidden, mx.array(kernel_index), padding, output_length)
        if self.config.standardize:  # HF:2114 in float32, then back to the working dtype
            pooled = (pooled - self.std_bias.astype(mx.float32)) * self.std_scale.astype(mx.float32)
        pooled = pooled.astype(embeds.dtype)
        return [pooled[b][mx.array(np.flatnonzero(pooled_valid[b]))] for b in range(pooled.shape[0])]

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Keys under `model.vision_tower.` (or bare): drop recomputed buffers and unused clip bounds, make
        clip bounds scalars. Pure and idempotent."""
        out = {}
        for name, value in weights.items():
            if name.endswith(_NON_PERSISTENT):
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf in _CLIP_BUFFERS:
                if not self.config.use_clipped_linears:
                    continue  # HF:186 only clipped linears own these buffers
                value = value.reshape(())
            out[name] = value
        return out
