"""Gemma 4's MTP drafter ("assistant"): a 4-layer decoder that proposes the target's next tokens.

Input: the target's scaled embedding of the last token, concatenated with the target's last hidden state
(then the drafter's own projected state, draft after draft), through `pre_projection`. Every layer attends,
as a query at the last token's position, to the keys and values of the target's last layer of its type
(sliding or full), which the target's caches already hold. Output: the projected state for the next draft
and the logits, either over the whole vocabulary (tied LM head) or, with `use_ordered_embeddings`, over the
tokens of the top-k vocabulary clusters chosen by a small centroid head (the rest never computed).
Module names equal the checkpoint's. HF = transformers/models/gemma4_assistant/modeling_gemma4_assistant.py
(5.23.0); `gemma4_unified_assistant` (the 12B's) is the same model over a `gemma4_unified_text` decoder.
"""

from __future__ import annotations

from typing import Optional, Union

import mlx.core as mx
import mlx.nn as nn

from .assistant_config import AssistantConfig
from .attention import KVView
from .config import FULL, SLIDING
from .language import DecoderLayer, _norm

KV = Union[KVView, tuple]  # a view of the target's cache, or its (keys, values) [B, kv_heads, n, head_dim]


def as_view(kv: KV) -> KVView:
    """The target's keys and values as the attention layers take them."""
    return kv if isinstance(kv, KVView) else KVView.of(*kv)


def kv_length(kv: KV) -> int:
    return as_view(kv).n_keys


class AssistantTextModel(nn.Module):
    """HF `model.`: the drafter's decoder (its `embed_tokens` is the LM head; inputs come projected)."""

    def __init__(self, config: AssistantConfig):
        super().__init__()
        text = config.text_config
        self.config = text
        self.embed_tokens = nn.Embedding(text.vocab_size, text.hidden_size)
        self.layers = [DecoderLayer(text, i) for i in range(text.num_hidden_layers)]
        self.norm = _norm(text, text.hidden_size)

    def masks(self, shared_kv: dict[str, KV]) -> dict:
        """HF:210-247 bidirectional masks over the target's KV, the sliding one flipped to look back: the
        query sees the last window+1 sliding entries (masking_utils.py:145 is inclusive) and every full
        one."""
        n = kv_length(shared_kv[SLIDING]) if SLIDING in shared_kv else 0
        window = self.config.sliding_window
        if not n or window is None or n <= window + 1:
            return {FULL: None, SLIDING: None}
        return {FULL: None, SLIDING: (mx.arange(n) >= n - window - 1)[None]}

    def __call__(self, h: mx.array, shared_kv: dict[str, KV], offset: int) -> mx.array:
        """Final hidden states for one query [B, 1, D] at position `offset` (HF's loop drafts one at a
        time)."""
        if h.shape[1] != 1:
            raise ValueError(f"the drafter reads one position at a time, not {h.shape[1]}")
        masks = self.masks(shared_kv)
        for layer in self.layers:
            h, _ = layer(h, masks[layer.layer_type], shared_kv=as_view(shared_kv[layer.layer_type]), offset=offset)
        return self.norm(h)


class MaskedEmbedder(nn.Module):
    """HF:42-87 the centroid head: score `num_centroids` clusters, keep the top k, and compute logits only
    for the tokens of those clusters (`token_ordering` lists the vocabulary cluster by cluster)."""

    def __init__(self, config: AssistantConfig):
        super().__init__()
        self.top_k = config.centroid_intermediate_top_k
        self.per_centroid = config.tokens_per_centroid
        self.num_centroids = config.num_centroids
        self.centroids = nn.Linear(config.text_config.hidden_size, config.num_centroids, bias=False)
        self.token_ordering = mx.zeros((config.text_config.vocab_size,), dtype=mx.int32)

    def __call__(self, h: mx.array, embed_tokens: nn.Module) -> tuple[mx.array, mx.array]:
        """(token ids, their logits), both [B, L, top_k * tokens_per_centroid], for hidden states
        [B, L, D]."""
        scores = self.centroids(h)
        # HF:62 torch.topk; which clusters win is what matters, not their order
        clusters = mx.argpartition(-scores, kth=self.top_k - 1, axis=-1)[..., : self.top_k]
        table = self.token_ordering.reshape(self.num_centroids, self.per_centroid)
        ids = table[clusters].reshape(*h.shape[:-1], -1)
        rows = embed_tokens(ids)  # the tied LM head's rows (dequantized when the table is quantized)
        logits = (rows @ h[..., None]).squeeze(-1)
        return ids, logits


class Drafter(nn.Module):
    """HF `Gemma4AssistantForCausalLM` (and `Gemma4UnifiedAssistantForCausalLM`)."""

    def __init__(self, config: AssistantConfig):
        super().__init__()
        self.config = config
        hidden, backbone = config.text_config.hidden_size, config.backbone_hidden_size
        self.model = AssistantTextModel(config)
        self.pre_projection = nn.Linear(2 * backbone, hidden, bias=False)
        self.post_projection = nn.Linear(hidden, backbone, bias=False)
        if config.use_ordered_embeddings:
            self.masked_embedding = MaskedEmbedder(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(hidden, config.text_config.vocab_size, bias=False)

    def step(self, inputs: mx.array, shared_kv: dict[str, KV], offset: int):
        """One draft step. `inputs` [B, 1, 2*backbone] = target embedding of the token ++ the state before it;
        returns (projected state [B, 1, backbone], candidate ids or None, logits).

        Candidate ids are None when logits cover the whole vocabulary; otherwise logits are those ids' (the
        centroid head), [B, 1, top_k * tokens_per_centroid]. No softcap: HF:186-189 applies none.
        """
        h = self.model(self.pre_projection(inputs), shared_kv, offset)
        state = self.post_projection(h)
        if self.config.use_ordered_embeddings:
            ids, logits = self.masked_embedding(h, self._head_rows())
            return state, ids, logits
        head = self.lm_head if not self.config.tie_word_embeddings else self.model.embed_tokens.as_linear
        return state, None, head(h)

    def __call__(self, inputs: mx.array, shared_kv: dict[str, KV], offset: int) -> tuple[mx.array, mx.array]:
        """(projected state, logits over the whole vocabulary) as HF returns them: tokens outside the chosen
        clusters get the smallest computed logit minus one (HF:70)."""
        state, ids, logits = self.step(inputs, shared_kv, offset)
        if ids is None:
            return state, logits
        fill = logits.min() - 1.0
        full = mx.full((*logits.shape[:-1], self.config.text_config.vocab_size), fill, dtype=logits.dtype)
        full = mx.put_along_axis(full, ids, logits, axis=-1)
        return state, full

    def _head_rows(self) -> nn.Module:
        return self.lm_head if not self.config.tie_word_embeddings else self.model.embed_tokens

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Checkpoint names onto ours (they are equal): the tied head is dropped, the token order made int32.
        Pure and idempotent."""
        out = {}
        for name, value in weights.items():
            if name.startswith("lm_head.") and self.config.tie_word_embeddings:
                continue
            if ".rotary_emb." in name:
                continue
            if name == "masked_embedding.token_ordering" and value.dtype != mx.int32:
                value = value.astype(mx.int32)  # HF stores int64; ids fit in 32 bits
            out[name] = value
        return out

    @property
    def quant_predicate(self):
        """Every linear and the embedding table at the requested bits (the token order is not a module); takes
        the converter's keywords as `Model.quant_predicate` does."""

        def predicate(path: str, module: nn.Module, bits: int = 4, group_size: int = 64, uniform: bool = False):
            return hasattr(module, "to_quantized")

        return predicate


def draft_inputs(token_embedding: mx.array, state: mx.array) -> mx.array:
    """HF candidate_generator.py:1333: [target embedding of the token, the state before it] on the last
    axis."""
    return mx.concatenate([token_embedding, state.astype(token_embedding.dtype)], axis=-1)


def optional_attach(model: nn.Module, drafter: Optional[Drafter]) -> None:
    """Keep `drafter` beside `model` as a plain attribute (outside its parameter tree), or forget it."""
    model.draft_model = DrafterHandle(drafter) if drafter is not None else None


def attached_drafter(model) -> Optional[Drafter]:
    """The drafter `optional_attach` put beside `model`, or None."""
    handle = getattr(model, "draft_model", None)
    return handle.drafter if isinstance(handle, DrafterHandle) else None


class DrafterHandle:
    """A plain object holding the drafter: as an attribute of the target it stays out of the target's
    parameters (mlx.nn.Module files arrays, lists and dicts, and modules are dicts, into the tree)."""

    def __init__(self, drafter: Drafter):
        self.drafter = drafter
