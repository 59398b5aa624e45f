"""Projection of vision / audio soft tokens into the text model's embedding space.

HF modeling_gemma4.py:2123 `Gemma4MultimodalEmbedder`: RMSNorm without weight, then a bias-free Linear.
Used as `model.embed_vision` and `model.embed_audio`; attribute names equal the checkpoint's.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .layers import RMSNorm


class MultimodalEmbedder(nn.Module):
    """Soft tokens [..., multimodal_hidden_size] -> text embeddings [..., text_hidden_size].

    The output is not multiplied by sqrt(text_hidden_size): soft tokens replace the placeholder
    embeddings as they are (HF:2400-2420).
    """

    def __init__(self, multimodal_hidden_size: int, text_hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.multimodal_hidden_size = multimodal_hidden_size
        self.text_hidden_size = text_hidden_size
        self.embedding_pre_projection_norm = RMSNorm(multimodal_hidden_size, eps=eps, with_scale=False)
        self.embedding_projection = nn.Linear(multimodal_hidden_size, text_hidden_size, bias=False)

    def __call__(self, soft_tokens: mx.array) -> mx.array:
        return self.embedding_projection(self.embedding_pre_projection_norm(soft_tokens))
