"""Gemma 4 12B ("unified"): the Gemma 4 text decoder fed by two small embedders instead of towers.

Images go in as raw 48x48 RGB patches (6912 values each) through `VisionEmbedder` and a
`MultimodalEmbedder`; audio goes in as raw 40 ms frames of 16 kHz samples (640 values) through another
`MultimodalEmbedder`. Each patch or frame is one soft token. Module names equal the hub checkpoint's
(`model.vision_embedder.*`, `model.embed_vision.*`, `model.embed_audio.*`).
HF = transformers/models/gemma4_unified/modeling_gemma4_unified.py (5.23.0).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .config import ModelConfig, UnifiedAudioConfig, UnifiedVisionConfig
from .language import TextModel
from .multimodal_embedder import MultimodalEmbedder


# transformers' module names (conversion_mapping.py:388) -> the hub checkpoint's, which ours equal
_TRANSFORMERS_NAMES = (("model.embed_vision.multimodal_embedder.", "model.embed_vision."),
                       ("model.embed_vision.patch_", "model.vision_embedder.patch_"),
                       ("model.embed_vision.pos_", "model.vision_embedder.pos_"))


class VisionEmbedder(nn.Module):
    """HF:820 raw patches -> LayerNorm -> Linear -> LayerNorm -> + x/y position rows -> LayerNorm.

    The checkpoint's `model.vision_embedder`; `model.embed_vision` then projects into text space.
    """

    def __init__(self, config: UnifiedVisionConfig):
        super().__init__()
        dim = config.mm_embed_dim
        # torch's nn.LayerNorm defaults (eps 1e-5, weight and bias), as HF:837-845 builds them
        self.patch_ln1 = nn.LayerNorm(config.patch_dim, eps=1e-5)
        self.patch_dense = nn.Linear(config.patch_dim, dim, bias=True)
        self.patch_ln2 = nn.LayerNorm(dim, eps=1e-5)
        self.pos_embedding = mx.zeros((config.mm_posemb_size, 2, dim))  # [position, axis (x, y), dim]
        self.pos_norm = nn.LayerNorm(dim, eps=1e-5)

    def __call__(self, pixel_values: mx.array, position_ids: mx.array) -> mx.array:
        """[B, N, 6912] patches, [B, N, 2] (x, y) positions ((-1, -1) = padding) -> [B, N, mm_embed_dim]."""
        h = self.patch_ln2(self.patch_dense(self.patch_ln1(pixel_values.astype(self.patch_ln1.weight.dtype))))
        # HF:869-872 one table row per axis; padding positions add nothing
        valid = (position_ids != -1).astype(h.dtype)[..., None]
        clamped = mx.maximum(position_ids, 0)
        rows = self.pos_embedding[clamped[..., 0], 0] * valid[..., 0, :]
        rows = rows + self.pos_embedding[clamped[..., 1], 1] * valid[..., 1, :]
        return self.pos_norm(h + rows.astype(h.dtype))


class Gemma4UnifiedModel(nn.Module):
    """HF `Gemma4UnifiedModel`: the `model.` prefix of every weight."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        text = config.text_config
        self.language_model = TextModel(text)
        self.has_vision = config.vision_config is not None
        self.has_audio = config.audio_config is not None
        if self.has_vision:
            vision = UnifiedVisionConfig.from_dict(config.vision_config)
            self.vision_embedder = VisionEmbedder(vision)
            self.embed_vision = MultimodalEmbedder(vision.output_proj_dims, text.hidden_size,
                                                   vision.rms_norm_eps)
        if self.has_audio:
            audio = UnifiedAudioConfig.from_dict(config.audio_config)
            self.embed_audio = MultimodalEmbedder(audio.audio_embed_dim, text.hidden_size, audio.rms_norm_eps)

    def image_soft_tokens(self, pixel_values: mx.array, position_ids: mx.array) -> mx.array:
        """Soft tokens of images or video frames, padding patches dropped (HF:983): [n_tokens, hidden]."""
        hidden = self.embed_vision(self.vision_embedder(pixel_values, position_ids))
        keep = np.flatnonzero(np.all(np.array(position_ids) != -1, axis=-1).reshape(-1))
        return hidden.reshape(-1, hidden.shape[-1])[mx.array(keep)]

    def audio_soft_tokens(self, frames: mx.array, mask: mx.array) -> mx.array:
        """Soft tokens of raw audio frames [B, T, 640], padding dropped (HF:1145): [n_tokens, hidden]."""
        hidden = self.embed_audio(frames.astype(float_dtype(self.embed_audio.embedding_projection)))
        keep = np.flatnonzero(np.array(mask).reshape(-1))
        return hidden.reshape(-1, hidden.shape[-1])[mx.array(keep)]


def float_dtype(linear: nn.Module) -> mx.Dtype:
    """The float type a (possibly quantized: packed uint32 weight, float scales) linear computes in."""
    return getattr(linear, "scales", linear.weight).dtype


def hub_name(name: str) -> str:
    """A weight name as the hub checkpoint spells it (transformers' in-memory names renamed back)."""
    for prefix, hub in _TRANSFORMERS_NAMES:
        if name.startswith(prefix):
            return hub + name[len(prefix):]
    return name
