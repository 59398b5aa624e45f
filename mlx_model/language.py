"""Gemma 4 text decoder (also runs Gemma 3 text checkpoints), following transformers' gemma4.

Every feature of the four variants: sliding/full layers with per-type head dims and KV heads,
default RoPE on sliding layers and proportional partial RoPE on full layers, q/k/v norms with
attention scale 1, `attention_k_eq_v`, `layer_scalar`, per-layer embeddings (PLE), KV sharing,
the double-wide MLP, the mixture of experts and the final logit softcap.
HF = transformers/models/gemma4/modeling_gemma4.py (5.23.0).
"""

from __future__ import annotations

import math
from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from .attention import KVView, attend
from .cache import KVCache, SlidingKVCache, window_mask
from .quantized_cache import RECENT_TOKENS, QuantizedKVCache, QuantizedSlidingKVCache
from .config import FULL, SLIDING, TextConfig
from .pipeline import remote_cache
from .layers import ExpertLinear, OffsetRMSNorm, RMSNorm, RotaryEmbedding, _sort_by_expert, gated_gelu

def all_sum(x: mx.array, group) -> mx.array:
    """The sum of the ranks' partial results under tensor parallelism (mlx_model/sharding.py), else x."""
    return x if group is None else mx.distributed.all_sum(x, group=group)


def _norm(config: TextConfig, dims: int) -> nn.Module:
    return OffsetRMSNorm(dims, config.rms_norm_eps) if config.is_gemma3 else RMSNorm(dims, config.rms_norm_eps)


class MLP(nn.Module):
    def __init__(self, config: TextConfig, layer_idx: int, width: Optional[int] = None):
        super().__init__()
        # HF:1059-1071: KV-shared layers of E2B use a double-wide MLP
        double = config.use_double_wide_mlp and layer_idx >= config.first_shared_layer
        width = width or config.intermediate_size * (2 if double else 1)
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, config.hidden_size, bias=False)
        self.group = None  # set by sharding: this rank holds a slice of the width, the ranks sum

    def __call__(self, x: mx.array) -> mx.array:
        return all_sum(self.down_proj(gated_gelu(self.gate_proj(x), self.up_proj(x))), self.group)


class Attention(nn.Module):
    def __init__(self, config: TextConfig, layer_idx: int):
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        self.is_sliding = self.layer_type == SLIDING
        self.head_dim = config.layer_head_dims[layer_idx]
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.layer_kv_heads[layer_idx]
        self.has_kv = layer_idx < config.first_shared_layer
        self.k_eq_v = config.attention_k_eq_v and not self.is_sliding
        self.attn_softcap = config.attn_logit_softcapping
        self.window = config.sliding_window if self.is_sliding else None
        # HF:1172 Gemma 4 scales by 1 (the q/k norms do the job); Gemma 3 by query_pre_attn_scalar^-0.5
        self.scale = config.query_pre_attn_scalar ** -0.5 if config.is_gemma3 else 1.0
        dim, bias = config.hidden_size, config.attention_bias

        self.q_proj = nn.Linear(dim, self.n_heads * self.head_dim, bias=bias)
        self.q_norm = _norm(config, self.head_dim)
        if self.has_kv:
            self.k_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=bias)
            if not self.k_eq_v:
                self.v_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=bias)
            self.k_norm = _norm(config, self.head_dim)
            self.use_v_norm = not config.is_gemma3
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, dim, bias=bias)
        self.rope = RotaryEmbedding(self.head_dim, config.rope_parameters[self.layer_type])
        self.group = None  # set by sharding: this rank holds some of the heads, the ranks sum o_proj

    def __call__(self, x: mx.array, mask, cache=None, shared_kv=None, offset: int = 0, custom_mask: bool = False):
        """Returns the output and the `KVView` this layer attended to, for KV-shared layers to reuse.

        `mask` is used where attention runs MLX's fused kernel (see `attention.attend`); a
        `custom_mask` (images that see all of themselves) always takes that path.
        """
        B, L, _ = x.shape
        queries = self.q_norm(self.q_proj(x).reshape(B, L, self.n_heads, self.head_dim))
        queries = self.rope(queries.transpose(0, 2, 1, 3), offset=offset)

        if shared_kv is not None:
            view = shared_kv
        else:
            raw_keys = self.k_proj(x).reshape(B, L, self.n_kv_heads, self.head_dim)
            # HF:1231 k_eq_v: values come from the raw key projection, before k_norm and RoPE
            values = raw_keys if self.k_eq_v else self.v_proj(x).reshape(B, L, self.n_kv_heads, self.head_dim)
            keys = self.rope(self.k_norm(raw_keys).transpose(0, 2, 1, 3), offset=offset)
            if self.use_v_norm:
                values = mx.fast.rms_norm(values, None, self.k_norm.eps)  # HF:1182 v_norm has no weight
            values = values.transpose(0, 2, 1, 3)
            view = _cache_view(cache, keys, values) if cache is not None else KVView.of(keys, values, offset)

        out = attend(queries, view, scale=self.scale, query_start=offset, window=self.window, mask=mask,
                     softcap=self.attn_softcap, custom_mask=custom_mask)
        out = out.transpose(0, 2, 1, 3).reshape(B, L, -1)
        return all_sum(self.o_proj(out), self.group), view


def _cache_view(cache, keys: mx.array, values: mx.array) -> KVView:
    """Add keys/values to a layer's cache and return what the layer attends to."""
    if hasattr(cache, "update_and_view"):
        return cache.update_and_view(keys, values)
    # mlx-lm's batch caches (gemma4_mac/batch.py, one token per row per step) return dense keys and values
    keys, values = cache.update_and_fetch(keys, values)
    return KVView.of(keys, values)


class Router(nn.Module):
    """MoE router (HF:1302): sees the un-normed residual; softmax, top-k, renormalise, per-expert scale."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.top_k = config.top_k_experts
        self.eps = config.rms_norm_eps
        self.root_size = config.hidden_size ** -0.5
        self.proj = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.scale = mx.ones((config.hidden_size,))
        self.per_expert_scale = mx.ones((config.num_experts,))

    def __call__(self, x: mx.array):
        h = mx.fast.rms_norm(x, None, self.eps) * self.scale * self.root_size
        scores = self.proj(h).astype(mx.float32)
        indices = mx.stop_gradient(mx.argpartition(-scores, kth=self.top_k - 1, axis=-1)[..., : self.top_k])
        # softmax over all experts then renormalising the top k == softmax over the top-k logits
        weights = mx.softmax(mx.take_along_axis(scores, indices, axis=-1), axis=-1)
        weights = weights * self.per_expert_scale[indices].astype(mx.float32)
        return indices, weights


class Experts(nn.Module):
    """Expert bank (HF:1263): `gate_up_proj` [E, 2I, H] and `down_proj` [E, H, I], run with gather_mm."""

    def __init__(self, config: TextConfig):
        super().__init__()
        hidden, inner, n = config.hidden_size, config.moe_intermediate_size, config.num_experts
        self.gate_up_proj = ExpertLinear(hidden, 2 * inner, n)
        self.down_proj = ExpertLinear(inner, hidden, n)
        # expert parallelism (mlx_model/sharding.py): this rank holds experts first_expert..+local_experts
        self.first_expert, self.local_experts = 0, None

    def __call__(self, x: mx.array, indices: mx.array, weights: mx.array) -> mx.array:
        if self.local_experts is not None:
            # routes to other ranks' experts count 0 here (their rank adds them); index 0 keeps gather_mm in
            # range
            local = indices - self.first_expert
            mine = (local >= 0) & (local < self.local_experts)
            indices, weights = mx.where(mine, local, 0), mx.where(mine, weights, 0.0)
        x = mx.expand_dims(x, (-2, -3))  # [..., 1, 1, H]
        sort = indices.size >= 64  # sorting by expert pays off once many tokens are routed
        if sort:
            x, flat_idx, inverse = _sort_by_expert(x, indices)
            idx = flat_idx
        else:
            idx = indices
        gate, up = mx.split(self.gate_up_proj(x, idx, sorted_indices=sort), 2, axis=-1)
        y = self.down_proj(gated_gelu(gate, up), idx, sorted_indices=sort)
        if sort:
            y = mx.unflatten(y[inverse], 0, indices.shape)
        y = y.squeeze(-2)  # [..., k, H]
        return (y * mx.expand_dims(weights, -1).astype(y.dtype)).sum(axis=-2)


class DecoderLayer(nn.Module):
    def __init__(self, config: TextConfig, layer_idx: int):
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config, layer_idx)
        hidden = config.hidden_size
        self.input_layernorm = _norm(config, hidden)
        self.post_attention_layernorm = _norm(config, hidden)
        self.pre_feedforward_layernorm = _norm(config, hidden)
        self.post_feedforward_layernorm = _norm(config, hidden)
        self.enable_moe = config.enable_moe_block
        if self.enable_moe:
            self.router = Router(config)
            self.experts = Experts(config)
            self.post_feedforward_layernorm_1 = _norm(config, hidden)
            self.pre_feedforward_layernorm_2 = _norm(config, hidden)
            self.post_feedforward_layernorm_2 = _norm(config, hidden)
        self.has_ple = bool(config.hidden_size_per_layer_input)
        if self.has_ple:
            self.per_layer_input_gate = nn.Linear(hidden, config.hidden_size_per_layer_input, bias=False)
            self.per_layer_projection = nn.Linear(config.hidden_size_per_layer_input, hidden, bias=False)
            self.post_per_layer_input_norm = _norm(config, hidden)
        self.has_layer_scalar = not config.is_gemma3
        if self.has_layer_scalar:
            self.layer_scalar = mx.ones((1,))
        self.group = None  # set by sharding: sums the MoE block's two partial results and the PLE projection

    def __call__(self, x, mask, cache=None, per_layer_input=None, shared_kv=None, offset: int = 0,
                 custom_mask: bool = False):
        h, kv = self.self_attn(self.input_layernorm(x), mask, cache, shared_kv, offset, custom_mask)
        x = x + self.post_attention_layernorm(h)

        h = self.mlp(self.pre_feedforward_layernorm(x))
        if self.enable_moe:
            indices, weights = self.router(x)  # HF:1404 router takes the residual before the norm
            h2 = self.experts(self.pre_feedforward_layernorm_2(x), indices, weights)
            if self.group is not None:  # both halves are partial sums when sharded: one collective for both
                h, h2 = all_sum(mx.stack([h, h2]), self.group)
            h = self.post_feedforward_layernorm_1(h) + self.post_feedforward_layernorm_2(h2)
        x = x + self.post_feedforward_layernorm(h)

        if self.has_ple:
            gate = gated_gelu(self.per_layer_input_gate(x), per_layer_input)
            x = x + self.post_per_layer_input_norm(all_sum(self.per_layer_projection(gate), self.group))
        if self.has_layer_scalar:
            x = x * self.layer_scalar  # HF:1424 scales the whole residual stream
        return x, kv


class TextModel(nn.Module):
    """The decoder stack; attribute names equal HF's `model.language_model.*` weights."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = [DecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        self.norm = _norm(config, config.hidden_size)
        self.kv_sources = config.kv_source_layers()
        self.ple_dim = config.hidden_size_per_layer_input or 0
        if self.ple_dim:
            total = config.num_hidden_layers * self.ple_dim
            self.embed_tokens_per_layer = nn.Embedding(config.vocab_size_per_layer_input, total)
            self.per_layer_model_projection = nn.Linear(config.hidden_size, total, bias=False)
            self.per_layer_projection_norm = _norm(config, self.ple_dim)
        # under sharding each rank holds ple_local of the ple_dim columns of every layer's input
        self.ple_local, self.ple_group = self.ple_dim, None
        # split by layers (mlx_model/pipeline.py): this rank runs layers stage.start..stop, PLE slots for them
        self.stage = None
        self.ple_layers = config.num_hidden_layers

    @property
    def span(self) -> range:
        """The layers this rank runs (all of them unless the model is split by layers)."""
        return range(len(self.layers)) if self.stage is None else range(self.stage.start, self.stage.stop)

    def embed(self, input_ids: mx.array) -> mx.array:
        """Scaled token embeddings; the scale is rounded to the weight dtype first (HF:1438)."""
        h = self.embed_tokens(input_ids)
        return h * mx.array(math.sqrt(self.config.hidden_size), dtype=h.dtype)

    def per_layer_token_inputs(self, input_ids: mx.array) -> mx.array:
        """The token-identity half of PLE, [B, L, layers, ple_dim] (HF:1713)."""
        h = self.embed_tokens_per_layer(input_ids)
        h = h * mx.array(math.sqrt(self.ple_dim), dtype=h.dtype)
        return h.reshape(*input_ids.shape, self.ple_layers, self.ple_local)

    def project_per_layer_inputs(self, embeds: mx.array, token_inputs: Optional[mx.array]) -> mx.array:
        """Combine the context projection of the embeddings with the token half (HF:1760-1792)."""
        proj = self.per_layer_model_projection(embeds) * (self.config.hidden_size ** -0.5)
        proj = proj.reshape(*embeds.shape[:-1], self.ple_layers, self.ple_local)
        if self.ple_group is None:
            proj = self.per_layer_projection_norm(proj)
        else:  # the norm's mean of squares runs over all ranks' columns
            squares = all_sum(mx.square(proj.astype(mx.float32)).sum(axis=-1, keepdims=True), self.ple_group)
            norm = self.per_layer_projection_norm
            proj = (proj * mx.rsqrt(squares / self.ple_dim + norm.eps)).astype(proj.dtype) * norm.weight
        if token_inputs is None:
            return proj
        return (proj + token_inputs) * (2.0 ** -0.5)

    def make_masks(self, n_queries: int, cache: list, overrides: Optional[dict] = None) -> tuple[dict, set]:
        """One mask per layer type, from the first cache of that type (or a plain causal one), and the
        layer types whose mask is custom (given, or images seeing themselves): attention must use it.

        `overrides["vision_blocks"]` ([B, L] block ids, -1 outside images) makes each image attend to all
        of itself. Gemma 4: only sliding layers, inside the window: window AND (causal OR same block);
        full layers stay causal (HF:2150-2230). Gemma 4 12B: every layer, (window AND causal) OR same
        block (`TextConfig.blocks_on_every_layer`).
        """
        overrides = dict(overrides or {})
        blocks = overrides.pop("vision_blocks", None)
        masks = dict(overrides)
        for i in self.span:
            layer, c = self.layers[i], cache[i]
            kind = layer.layer_type
            if kind in masks:
                continue
            window = self.config.sliding_window if kind == SLIDING else None
            if c is not None:
                masks[kind] = c.make_mask(n_queries, window_size=window)
            elif n_queries == 1:
                masks[kind] = None
            elif window is not None and n_queries > window:
                masks[kind] = window_mask(n_queries, 0, n_queries, 0, window, return_array=True)
            else:
                masks[kind] = "causal"
        custom = set(overrides)
        if blocks is not None and blocks.shape[1] > 1 and bool((blocks >= 0).any()):  # one token sees itself
            kinds = (SLIDING, FULL) if self.config.blocks_on_every_layer else (SLIDING,)
            for kind in kinds:
                if kind in masks and kind not in overrides:
                    masks[kind] = self._block_mask(kind, blocks, cache)
                    custom.add(kind)
        return masks, custom

    def _block_mask(self, kind: str, blocks: mx.array, cache: list) -> mx.array:
        """The layer type's causal (or window) mask OR same image block, over the keys its cache returns."""
        n = blocks.shape[1]
        layer_cache = next((cache[i] for i in self.span
                            if cache[i] is not None and self.layers[i].layer_type == kind), None)
        offset = layer_cache.offset if layer_cache is not None else 0
        window = self.config.sliding_window if kind == SLIDING else None
        kept = offset if window is None else min(offset, window)
        base = window_mask(n, offset, kept + n, offset - kept, window, return_array=True)
        same = (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0)
        if window is not None and not self.config.blocks_on_every_layer:
            q_pos = mx.arange(offset, offset + n)[:, None]
            k_pos = mx.arange(offset, offset + n)[None, :]
            same = same & (k_pos > q_pos - window)
        if kept:
            same = mx.concatenate([mx.zeros((*same.shape[:2], kept), dtype=mx.bool_), same], axis=2)
        return (base[None] | same)[:, None]

    def __call__(self, inputs: Optional[mx.array] = None, cache: Optional[list] = None,
                 input_embeddings: Optional[mx.array] = None, per_layer_inputs: Optional[mx.array] = None,
                 mask_overrides: Optional[dict] = None, hidden_to_keep: int = 0) -> mx.array:
        """Hidden states after the final norm, [B, L, hidden] (the last `hidden_to_keep` positions only when
        given).

        `input_embeddings` are already scaled (soft tokens merged in); `per_layer_inputs` is PLE's
        token half, needed with `input_embeddings` since ids cannot be recovered from soft tokens.
        Split by layers, a rank after the first takes its input from the rank before and returns the
        send of its result (mlx_model/pipeline.py).
        """
        stage, span = self.stage, self.span
        if stage is None or stage.first:
            h = self.embed(inputs) if input_embeddings is None else input_embeddings
            embeds = h
        else:
            shape = inputs.shape if inputs is not None else input_embeddings.shape[:2]
            h, embeds = stage.receive(*shape, self.config.hidden_size)
        if self.ple_dim:
            if per_layer_inputs is None:
                if inputs is None:
                    raise ValueError("PLE models need input_ids or per_layer_inputs alongside input_embeddings.")
                per_layer_inputs = self.per_layer_token_inputs(inputs)
            per_layer_inputs = self.project_per_layer_inputs(embeds, per_layer_inputs)

        n_layers, n_queries = len(self.layers), h.shape[1]
        cache = list(cache or []) + [None] * (n_layers - len(cache or []))
        offset = next((cache[i].offset for i in span if cache[i] is not None), 0)
        masks, custom = self.make_masks(n_queries, cache, mask_overrides)
        kvs: list = [None] * n_layers
        for i in span:
            layer, c = self.layers[i], cache[i]
            source = self.kv_sources[i]
            shared = kvs[source] if source != i else None
            ple = per_layer_inputs[:, :, i - span.start, :] if self.ple_dim else None
            kind = layer.layer_type
            h, kvs[i] = layer(h, masks[kind], c, ple, shared, offset, kind in custom)
        if stage is not None:
            for i, c in enumerate(cache):
                if c is not None and i not in span:
                    c.skip(n_queries)
            h = stage.hand_on(h, embeds, hidden_to_keep)
            if not stage.first:
                return h
        elif hidden_to_keep:
            h = h[:, -hidden_to_keep:]
        return self.norm(h)

    def make_cache(self, kv_bits: Optional[int] = None, kv_group_size: int = 64) -> list:
        """One cache per layer that owns keys/values (KV-shared layers get none); 16, 8 or 4-bit.

        8 and 4-bit caches quantize keys per channel and rotated values per token in groups of
        `kv_group_size`, keeping the newest tokens exact (`quantized_cache.py`); a window no longer
        than that exact part is simply kept at 16 bits.
        """
        window, owners = self.config.sliding_window, self.config.layer_types[: self.config.first_shared_layer]
        if not kv_bits:
            caches = [SlidingKVCache(window) if t == SLIDING else KVCache() for t in owners]
        else:
            sliding = (lambda: QuantizedSlidingKVCache(window, kv_bits, kv_group_size)) \
                if window > RECENT_TOKENS else (lambda: SlidingKVCache(window))
            caches = [sliding() if t == SLIDING else QuantizedKVCache(kv_bits, kv_group_size) for t in owners]
        if self.stage is not None:  # the other ranks' layers: their position only
            caches = [c if i in self.span else remote_cache(owners[i], window) for i, c in enumerate(caches)]
        return caches
