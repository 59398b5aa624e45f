"""Gemma 4 audio tower (the USM-style conformer of E2B/E4B), following transformers' gemma4.

Log-mel features [B, T, 128] -> subsampling conv projection (4x in time) -> conformer layers with
chunked local attention -> `output_proj`. Attribute names equal the checkpoint's weight names under
`model.audio_tower.`. HF = transformers/models/gemma4/modeling_gemma4.py (5.23.0).
"""

from __future__ import annotations

import math
from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from .config import AudioConfig
from .layers import ClippableLinear, RMSNorm

# Names of HF buffers that are not persistent (recomputed here); dropped if a checkpoint carries them.
_NON_PERSISTENT_SUFFIXES = ("rel_pos_enc.inv_timescales", "self_attn.softcap")

_ACTIVATIONS = {
    "silu": nn.silu, "swish": nn.silu, "gelu": nn.gelu, "gelu_pytorch_tanh": nn.gelu_approx, "relu": nn.relu,
}


def _clip_bound(dtype: mx.Dtype, gradient_clipping: float) -> float:
    # HF modeling_gemma4.py:445 clips at min(gradient_clipping, finfo(dtype).max)
    return min(gradient_clipping, mx.finfo(dtype).max)


class SubSampleConvProjectionLayer(nn.Module):
    """Conv2d 3x3 stride 2 (no bias) -> LayerNorm over channels (no bias) -> ReLU, channels-last (HF:362)."""

    def __init__(self, in_channels: int, out_channels: int, norm_eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(out_channels, eps=norm_eps, affine=True, bias=False)

    def __call__(self, x: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
        # x: [B, T, F, C]; padded frames are zeroed before the conv (HF:380)
        x = x * mask[:, :, None, None].astype(x.dtype)
        x = nn.relu(self.norm(self.conv(x.astype(self.conv.weight.dtype))))  # HF:383 runs in the conv's dtype
        return x, mask[:, ::2]


class SubSampleConvProjection(nn.Module):
    """Two conv layers (4x fewer frames, 128 mel bins -> 32) then a linear to hidden_size (HF:392)."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        c0, c1 = config.subsampling_conv_channels
        self.layer0 = SubSampleConvProjectionLayer(1, c0, config.rms_norm_eps)
        self.layer1 = SubSampleConvProjectionLayer(c0, c1, config.rms_norm_eps)
        # HF:407 sizes the projection as (c0 // 4) * c1, which presumes 128 mel bins
        self.input_proj_linear = nn.Linear((c0 // 4) * c1, config.hidden_size, bias=False)

    def __call__(self, features: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
        x, mask = self.layer0(features[..., None], mask)
        x, mask = self.layer1(x, mask)
        batch, frames = x.shape[:2]
        return self.input_proj_linear(x.reshape(batch, frames, -1)), mask


class FeedForward(nn.Module):
    """Macaron half-step FFN (HF:420): clip, RMSNorm, 4x MLP, clip, RMSNorm, * residual_weight, + residual."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        hidden = config.hidden_size
        self.ffw_layer_1 = ClippableLinear(hidden, hidden * 4, config.use_clipped_linears)
        self.ffw_layer_2 = ClippableLinear(hidden * 4, hidden, config.use_clipped_linears)
        # HF:427 these two norms keep the default eps 1e-6, not config.rms_norm_eps
        self.pre_layer_norm = RMSNorm(hidden)
        self.post_layer_norm = RMSNorm(hidden)
        self.act_fn = _ACTIVATIONS[config.hidden_act]
        self.gradient_clipping = config.gradient_clipping
        self.post_layer_scale = config.residual_weight

    def __call__(self, x: mx.array) -> mx.array:
        bound = _clip_bound(x.dtype, self.gradient_clipping)
        residual = x
        x = self.pre_layer_norm(mx.clip(x, -bound, bound))
        x = self.ffw_layer_2(self.act_fn(self.ffw_layer_1(x)))
        x = self.post_layer_norm(mx.clip(x, -bound, bound))
        return x * self.post_layer_scale + residual


class RelPositionalEncoding(nn.Module):
    """Sinusoidal embeddings of relative distances context//2 .. 0, laid out [sin..., cos...] (HF:224)."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.context_size = (
            config.attention_chunk_size + config.attention_context_left - 1 + config.attention_context_right
        )
        num_timescales = self.hidden_size // 2
        increment = math.log(10000.0) / max(num_timescales - 1, 1)
        self._inv_timescales = mx.exp(mx.arange(num_timescales, dtype=mx.float32) * -increment)

    def __call__(self, dtype: mx.Dtype) -> mx.array:
        positions = mx.arange(self.context_size // 2, -1, -1, dtype=mx.float32)[:, None]
        scaled = positions * self._inv_timescales[None, :]
        return mx.concatenate([mx.sin(scaled), mx.cos(scaled)], axis=-1).astype(dtype)


class Attention(nn.Module):
    """Chunked local self-attention with a Transformer-XL relative position term (HF:256).

    Queries are split into blocks of `chunk_size`; each block sees keys [start - left + 1, end + right).
    All blocks are computed at once (no loop over chunks).
    """

    def __init__(self, config: AudioConfig):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        self.q_scale = (self.head_dim**-0.5) / math.log(2)
        self.k_scale = math.log(1 + math.e) / math.log(2)
        self.chunk_size = config.attention_chunk_size
        self.max_past_horizon = config.attention_context_left - 1
        self.max_future_horizon = config.attention_context_right
        self.context_size = self.chunk_size + self.max_past_horizon + self.max_future_horizon
        self.softcap = config.attention_logit_cap
        self.invalid_logit = config.attention_invalid_logits_value

        clipped = config.use_clipped_linears
        self.q_proj = ClippableLinear(hidden, hidden, clipped)
        self.k_proj = ClippableLinear(hidden, hidden, clipped)
        self.v_proj = ClippableLinear(hidden, hidden, clipped)
        self.post = ClippableLinear(hidden, hidden, clipped)
        self.relative_k_proj = nn.Linear(hidden, hidden, bias=False)
        self.per_dim_scale = mx.zeros((self.head_dim,))

    def _blocks(self, x: mx.array, num_blocks: int) -> mx.array:
        """[B, T, N, D] -> [B, nb, chunk, N, D], zero-padded at the end."""
        b, t, n, d = x.shape
        x = mx.pad(x, [(0, 0), (0, num_blocks * self.chunk_size - t), (0, 0), (0, 0)])
        return x.reshape(b, num_blocks, self.chunk_size, n, d)

    def _block_context(self, x: mx.array, num_blocks: int) -> mx.array:
        """[B, T, N, D] -> overlapping windows [B, nb, context, N, D] strided by chunk (HF:288 unfold)."""
        b, t, n, d = x.shape
        right = self.max_future_horizon + self.chunk_size - 1
        x = mx.pad(x, [(0, 0), (self.max_past_horizon, right), (0, 0), (0, 0)])
        index = mx.arange(num_blocks)[:, None] * self.chunk_size + mx.arange(self.context_size)[None, :]
        return mx.take(x, index.reshape(-1), axis=1).reshape(b, num_blocks, self.context_size, n, d)

    def _rel_shift(self, x: mx.array) -> mx.array:
        """[B, N, nb, chunk, P] -> [B, N, nb, chunk, context]: row i moves right by i (HF:298)."""
        b, n, nb, c, p = x.shape
        x = mx.pad(x, [(0, 0)] * 4 + [(0, self.context_size + 1 - p)])
        x = x.reshape(b, n, nb, c * (self.context_size + 1))[..., : c * self.context_size]
        return x.reshape(b, n, nb, c, self.context_size)

    def __call__(self, x: mx.array, position_embeddings: mx.array, valid: mx.array) -> mx.array:
        """x [B, T, H]; valid [B, 1, nb, chunk, context] bool (True = may attend)."""
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        # HF:318 attention runs in float32 whatever the weights' dtype
        q = self.q_proj(x).astype(mx.float32).reshape(shape)
        k = self.k_proj(x).astype(mx.float32).reshape(shape)
        v = self.v_proj(x).astype(mx.float32).reshape(shape)
        q = q * self.q_scale * nn.softplus(self.per_dim_scale.astype(mx.float32))
        k = k * self.k_scale

        num_blocks = -(-t // self.chunk_size)
        q = self._blocks(q, num_blocks).transpose(0, 3, 1, 2, 4)  # [B, N, nb, C, D]
        k = self._block_context(k, num_blocks).transpose(0, 3, 1, 4, 2)  # [B, N, nb, D, ctx]
        v = self._block_context(v, num_blocks).transpose(0, 3, 1, 2, 4)  # [B, N, nb, ctx, D]

        rel_k = self.relative_k_proj(position_embeddings).astype(mx.float32)
        rel_k = rel_k.reshape(-1, self.num_heads, self.head_dim).transpose(1, 2, 0)  # [N, D, P]
        content = q @ k
        position = (q.reshape(b, self.num_heads, -1, self.head_dim) @ rel_k).reshape(
            b, self.num_heads, num_blocks, self.chunk_size, -1
        )
        logits = content + self._rel_shift(position)
        logits = mx.tanh(logits / self.softcap) * self.softcap
        # HF:345 masked_fill (a replacement, not an additive bias)
        logits = mx.where(valid, logits, mx.array(self.invalid_logit, dtype=logits.dtype))
        weights = mx.softmax(logits, axis=-1, precise=True)
        out = (weights @ v).transpose(0, 2, 3, 1, 4).reshape(b, num_blocks * self.chunk_size, -1)[:, :t]
        return self.post(out.astype(x.dtype))


class LightConv1d(nn.Module):
    """RMSNorm, Linear -> GLU, causal depthwise conv, clip, RMSNorm, SiLU, Linear, + residual (HF:483)."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        hidden = config.hidden_size
        self.linear_start = ClippableLinear(hidden, hidden * 2, config.use_clipped_linears)
        self.linear_end = ClippableLinear(hidden, hidden, config.use_clipped_linears)
        self.depthwise_conv1d = nn.Conv1d(
            hidden, hidden, kernel_size=config.conv_kernel_size, groups=hidden, bias=False
        )
        self.pre_layer_norm = RMSNorm(hidden, eps=config.rms_norm_eps)
        self.conv_norm = RMSNorm(hidden, eps=config.rms_norm_eps)
        self.act_fn = _ACTIVATIONS[config.hidden_act]
        self.gradient_clipping = config.gradient_clipping
        self.left_pad = config.conv_kernel_size - 1

    def __call__(self, x: mx.array) -> mx.array:
        residual = x
        x = self.linear_start(self.pre_layer_norm(x))
        half = x.shape[-1] // 2
        x = x[..., :half] * mx.sigmoid(x[..., half:])
        x = self.depthwise_conv1d(mx.pad(x, [(0, 0), (self.left_pad, 0), (0, 0)]))
        bound = _clip_bound(x.dtype, self.gradient_clipping)
        x = self.conv_norm(mx.clip(x, -bound, bound))
        return self.linear_end(self.act_fn(x)) + residual


class ConformerLayer(nn.Module):
    """FFN/2, local attention, light conv, FFN/2, clip, RMSNorm (HF:530)."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        hidden = config.hidden_size
        self.feed_forward1 = FeedForward(config)
        self.feed_forward2 = FeedForward(config)
        self.self_attn = Attention(config)
        self.lconv1d = LightConv1d(config)
        self.norm_pre_attn = RMSNorm(hidden)
        self.norm_post_attn = RMSNorm(hidden)
        self.norm_out = RMSNorm(hidden)
        self.gradient_clipping = config.gradient_clipping

    def __call__(self, x: mx.array, valid: mx.array, position_embeddings: mx.array) -> mx.array:
        # HF:556 the bound follows the norm weight's dtype
        bound = _clip_bound(self.norm_pre_attn.weight.dtype, self.gradient_clipping)
        x = self.feed_forward1(x)
        residual = x
        x = self.self_attn(self.norm_pre_attn(mx.clip(x, -bound, bound)), position_embeddings, valid)
        x = self.norm_post_attn(mx.clip(x, -bound, bound)) + residual
        x = self.feed_forward2(self.lconv1d(x))
        return self.norm_out(mx.clip(x, -bound, bound))


class AudioModel(nn.Module):
    """The audio tower: (features [B, T, 128], mask [B, T]) -> (hidden [B, T', out_dims], mask [B, T'])."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        self.config = config
        self.subsample_conv_projection = SubSampleConvProjection(config)
        self.rel_pos_enc = RelPositionalEncoding(config)
        self.layers = [ConformerLayer(config) for _ in range(config.num_hidden_layers)]
        self.output_proj = nn.Linear(config.hidden_size, config.output_proj_dims, bias=True)

    def _attention_validity(self, mask: mx.array) -> mx.array:
        """Blocked [B, 1, nb, chunk, context] bool: key is real audio and within the local window.

        HF:2030 builds it from a sliding window (left = context_left - 1, right = context_right) AND the key
        padding mask; queries and keys beyond T are invalid (HF:2001 pads with finfo.min).
        """
        cfg = self.config
        t = mask.shape[1]
        chunk = cfg.attention_chunk_size
        past = cfg.attention_context_left - 1
        context = chunk + past + cfg.attention_context_right
        num_blocks = -(-t // chunk)
        q_pos = (mx.arange(num_blocks)[:, None, None] * chunk + mx.arange(chunk)[None, :, None])
        k_pos = mx.arange(num_blocks)[:, None, None] * chunk - past + mx.arange(context)[None, None, :]
        distance = q_pos - k_pos
        in_window = ((distance >= 0) & (distance < past)) | (
            (distance < 0) & (-distance < cfg.attention_context_right)
        )
        in_range = (q_pos < t) & (k_pos >= 0) & (k_pos < t)
        key_real = mx.take(mask, mx.clip(k_pos, 0, max(t - 1, 0)).reshape(-1), axis=1)
        key_real = key_real.reshape(mask.shape[0], num_blocks, 1, context)
        return (in_window & in_range)[None] & key_real[:, None]

    def __call__(self, input_features: mx.array, input_features_mask: Optional[mx.array] = None):
        """Encode log-mel features; returns (hidden, mask) where mask marks soft tokens of real audio."""
        if input_features_mask is None:
            input_features_mask = mx.ones(input_features.shape[:2], dtype=mx.bool_)
        if input_features.shape[1] == 0:
            shape = (input_features.shape[0], 0, self.config.output_proj_dims)
            empty = mx.zeros(shape, dtype=input_features.dtype)
            return empty, input_features_mask.astype(mx.bool_)
        x, mask = self.subsample_conv_projection(input_features, input_features_mask.astype(mx.bool_))
        position_embeddings = self.rel_pos_enc(x.dtype)
        valid = self._attention_validity(mask)
        for layer in self.layers:
            x = layer(x, valid, position_embeddings)
        return self.output_proj(x), mask

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Move HF conv weights to MLX's channels-last layout; drop recomputed buffers.

        Pure and idempotent: a weight already in MLX layout (recognised by its shape) is kept as is.
        Keys may carry any prefix (e.g. `model.audio_tower.`).
        """
        out = {}
        for key, value in weights.items():
            if key.endswith(_NON_PERSISTENT_SUFFIXES):
                continue
            if "subsample_conv_projection" in key and key.endswith("conv.weight") and value.ndim == 4:
                # HF [out, in, kh, kw] -> MLX [out, kh, kw, in]; MLX layout has kh == kw == 3 at axes 1, 2
                if not (value.shape[1] == 3 and value.shape[2] == 3):
                    value = value.transpose(0, 2, 3, 1)
            elif key.endswith("depthwise_conv1d.weight") and value.ndim == 3:
                # HF [hidden, 1, kernel] -> MLX [hidden, kernel, 1]
                if value.shape[1] == 1:
                    value = value.transpose(0, 2, 1)
            out[key] = value
        return out
