"""The whole Gemma model: text decoder plus (for Gemma 4) the vision and audio towers.

Module names equal the weight names of transformers' `Gemma4ForConditionalGeneration`
(`model.language_model.*`, `model.vision_tower.*`, ...) and, for Gemma 4 12B, of the hub's
`Gemma4UnifiedForConditionalGeneration` checkpoints (`model.vision_embedder.*`, mlx_model/unified.py),
so loading a hub checkpoint needs no renaming; `sanitize` maps the other layouts (text-only
`Gemma4ForCausalLM`, Gemma 3, transformers' in-memory names of the 12B) onto it.
Follows mlx-lm's model protocol: `__call__(inputs, cache=None)`, `layers`, `make_cache()`,
`sanitize`, `quant_predicate`.
"""

from __future__ import annotations

import re
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .config import FULL, ModelConfig
from .language import TextModel
from .layers import softcap

TEXT_ONLY_PREFIXES = ("model.layers.", "model.embed_tokens", "model.norm.", "model.per_layer_",
                      "model.embed_tokens_per_layer")


class MultimodalInputError(ValueError):
    """Attachments and placeholder tokens do not fit together; the message says how."""


class Gemma4Model(nn.Module):
    """HF `Gemma4Model`: the `model.` prefix of every weight."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        text = config.text_config
        self.language_model = TextModel(text)
        self.has_vision = config.vision_config is not None
        self.has_audio = config.audio_config is not None
        if self.has_vision:
            from .config import VisionConfig
            from .multimodal_embedder import MultimodalEmbedder
            from .vision import VisionModel

            vision = VisionConfig.from_dict(config.vision_config)
            self.vision_tower = VisionModel(vision)
            self.embed_vision = MultimodalEmbedder(vision.hidden_size, text.hidden_size, vision.rms_norm_eps)
        if self.has_audio:
            from .audio import AudioModel
            from .config import AudioConfig
            from .multimodal_embedder import MultimodalEmbedder

            audio = AudioConfig.from_dict(config.audio_config)
            self.audio_tower = AudioModel(audio)
            self.embed_audio = MultimodalEmbedder(audio.output_proj_dims, text.hidden_size, audio.rms_norm_eps)

    def image_soft_tokens(self, pixel_values: mx.array, position_ids: mx.array) -> mx.array:
        """Soft tokens of images (or video frames) in text space, padding dropped: [n_tokens, hidden]."""
        features = self.vision_tower(pixel_values, position_ids)
        if isinstance(features, (list, tuple)):
            features = mx.concatenate(list(features), axis=0)
        return self.embed_vision(features)

    def audio_soft_tokens(self, features: mx.array, mask: mx.array) -> mx.array:
        """Soft tokens of audio clips in text space, padding dropped (HF:2444): [n_tokens, hidden]."""
        hidden, valid = self.audio_tower(features, mask)
        hidden = self.embed_audio(hidden)
        keep = np.flatnonzero(np.array(valid).reshape(-1))
        return hidden.reshape(-1, hidden.shape[-1])[mx.array(keep)]


class Model(nn.Module):
    """Text (and, where the checkpoint has them, image/audio) to next-token logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.args = config.text_config  # mlx-lm reads model.args for some helpers
        self.model_type = config.model_type
        if config.is_unified:  # Gemma 4 12B: embedders instead of vision and audio towers
            from .unified import Gemma4UnifiedModel

            self.model = Gemma4UnifiedModel(config)
        else:
            self.model = Gemma4Model(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)

    @property
    def language_model(self) -> TextModel:
        return self.model.language_model

    def __call__(self, inputs: Optional[mx.array] = None, cache: Optional[list] = None,
                 input_embeddings: Optional[mx.array] = None, per_layer_inputs: Optional[mx.array] = None,
                 logits_to_keep: int = 0, mask_overrides: Optional[dict] = None,
                 pixel_values: Optional[mx.array] = None, image_position_ids: Optional[mx.array] = None,
                 pixel_values_videos: Optional[mx.array] = None, video_position_ids: Optional[mx.array] = None,
                 input_features: Optional[mx.array] = None, input_features_mask: Optional[mx.array] = None,
                 mm_token_type_ids: Optional[mx.array] = None) -> mx.array:
        """Logits [B, L, V] (or [B, logits_to_keep, V]) for token ids [B, L].

        Multimodal inputs use transformers' names; their soft tokens replace the placeholder tokens.
        `logits_to_keep=1` computes the LM head for the last position only, as prefill needs.
        """
        if any(x is not None for x in (pixel_values, pixel_values_videos, input_features)):
            input_embeddings, per_layer_inputs = self.embed_multimodal(inputs, **self.media_features(
                pixel_values, image_position_ids, pixel_values_videos, video_position_ids, input_features,
                input_features_mask))
        if mm_token_type_ids is not None and self.config.text_config.use_bidirectional_attention == "vision":
            mask_overrides = {**(mask_overrides or {}), "vision_blocks": vision_block_ids(mm_token_type_ids)}
        h = self.language_model(inputs if input_embeddings is None else None, cache=cache,
                                input_embeddings=input_embeddings, per_layer_inputs=per_layer_inputs,
                                mask_overrides=mask_overrides, hidden_to_keep=logits_to_keep)
        stage = self.language_model.stage
        if stage is not None and not stage.first:
            return h  # split by layers: this rank's part ends with sending its result on
        return self.logits(h)

    def media_features(self, pixel_values: Optional[mx.array] = None, image_position_ids: Optional[mx.array] = None,
                       pixel_values_videos: Optional[mx.array] = None, video_position_ids: Optional[mx.array] = None,
                       input_features: Optional[mx.array] = None, input_features_mask: Optional[mx.array] = None
                       ) -> dict[str, Optional[mx.array]]:
        """The towers' soft tokens for transformers' media inputs, as `embed_multimodal`'s keywords (None for a
        kind not given)."""
        return {"image_features": None if pixel_values is None else self.image_features(pixel_values,
                                                                                        image_position_ids),
                "video_features": None if pixel_values_videos is None
                else self.image_features(pixel_values_videos, video_position_ids),
                "audio_features": None if input_features is None
                else self.audio_features(input_features, input_features_mask)}

    def image_features(self, pixel_values: mx.array, position_ids: mx.array) -> mx.array:
        """Soft tokens of images (or video frames) in text space, padding dropped: [n_tokens, hidden]."""
        if not self.model.has_vision:
            raise MultimodalInputError("This model has no vision tower: it cannot look at images or videos.")
        return self.model.image_soft_tokens(pixel_values, position_ids)

    def audio_features(self, features: mx.array, mask: mx.array) -> mx.array:
        """Soft tokens of audio clips in text space, padding dropped (HF:2444): [n_tokens, hidden]."""
        if not self.model.has_audio:
            raise MultimodalInputError("This model has no audio tower: use an E2B, E4B or 12B model for "
                                       "audio.")
        return self.model.audio_soft_tokens(features, mask)

    def embed_multimodal(self, input_ids: mx.array, image_features: Optional[mx.array] = None,
                         video_features: Optional[mx.array] = None,
                         audio_features: Optional[mx.array] = None) -> tuple[mx.array, Optional[mx.array]]:
        """Text embeddings with soft tokens in place of the placeholders, and PLE's token half.

        Placeholders become pad for the text lookups (HF:2386-2393); soft tokens are not rescaled.
        """
        cfg, lm = self.config, self.language_model
        ids = np.array(input_ids)
        placeholder = {cfg.image_token_id: image_features, cfg.video_token_id: video_features,
                       cfg.audio_token_id: audio_features}
        text_ids = self.text_ids(input_ids)
        embeds = lm.embed(text_ids)
        per_layer = lm.per_layer_token_inputs(text_ids) if lm.ple_dim else None
        flat = embeds.reshape(-1, embeds.shape[-1])
        for token_id, features in placeholder.items():
            slots = np.flatnonzero(ids.reshape(-1) == token_id)
            n_features = 0 if features is None else features.shape[0]
            if len(slots) != n_features:
                raise MultimodalInputError(
                    f"the prompt has {len(slots)} placeholder tokens for id {token_id} but the attachments gave "
                    f"{n_features} soft tokens; build prompts with the model's processor"
                )
            if n_features:
                flat[mx.array(slots)] = features.astype(flat.dtype)
        return flat.reshape(embeds.shape), per_layer

    def text_ids(self, input_ids: mx.array) -> mx.array:
        """`input_ids` with the media placeholders turned into pad, as the text lookups see them (HF:2386)."""
        cfg = self.config
        ids = np.array(input_ids)
        is_mm = np.isin(ids, [cfg.image_token_id, cfg.video_token_id, cfg.audio_token_id])
        return mx.array(np.where(is_mm, cfg.text_config.pad_token_id or 0, ids))

    def logits(self, hidden: mx.array) -> mx.array:
        """LM head (tied to the embeddings unless the checkpoint says otherwise) and softcap."""
        if self.config.tie_word_embeddings:
            out = self.language_model.embed_tokens.as_linear(hidden)
        else:
            out = self.lm_head(hidden)
        return softcap(out, self.config.text_config.final_logit_softcapping)

    @property
    def layers(self):
        return self.language_model.layers

    def make_cache(self, kv_bits: Optional[int] = None, kv_group_size: int = 64) -> list:
        """Fresh per-layer caches for one conversation; `kv_bits` 8 or 4 quantizes keys and values."""
        return self.language_model.make_cache(kv_bits, kv_group_size)

    def shard(self, group: Optional[mx.distributed.Group] = None) -> dict:
        """Split the text decoder across `group`'s ranks (tensor parallel, mlx-lm's convention); towers stay
        whole. Returns the plan (module path -> Cut) of what this rank keeps (mlx_model/sharding.py)."""
        from .sharding import shard_model

        return shard_model(self, group or mx.distributed.init())

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Map a checkpoint's weights onto our module names. Pure, and idempotent."""
        text = self.config.text_config
        first_shared = text.first_shared_layer
        out = {}
        if self.config.is_unified:
            from .unified import hub_name
        for name, value in weights.items():
            name = _canonical_name(name)
            if name is None or ".rotary_emb." in name:
                continue
            if self.config.is_unified:
                name = hub_name(name)
            if self.config.tie_word_embeddings and name.startswith("lm_head."):
                continue
            if self.config.model_type == "gemma3" and not name.startswith(("model.language_model.", "lm_head.")):
                continue  # Gemma 3's vision tower and projector are not used
            shared = re.match(r"model\.language_model\.layers\.(\d+)\.self_attn\.(k_proj|v_proj|k_norm|v_norm)\.", name)
            if shared and int(shared.group(1)) >= first_shared:
                continue  # HF:1577 KV-shared layers carry unused projections
            if name.endswith((".experts.gate_up_proj", ".experts.down_proj")):
                name += ".weight"
            out[name] = value
        for tower in ("vision_tower", "audio_tower"):
            module = getattr(self.model, tower, None)
            if module is not None and hasattr(module, "sanitize"):
                prefix = f"model.{tower}."
                part = {k: v for k, v in out.items() if k.startswith(prefix)}
                out = {k: v for k, v in out.items() if not k.startswith(prefix)}
                out.update(module.sanitize(part))
        return out

    @property
    def quant_predicate(self):
        """mlx-lm's quantization hook: Gemma 4's mixed-precision recipe (mlx_model/quant_recipe.py).

        True: the requested bits; a dict: this module's bits; False: keep it in float.
        """
        from .quant_recipe import group_size_for, module_bits

        text, unified = self.config.text_config, self.config.is_unified

        def predicate(path: str, module: nn.Module, bits: int = 4, group_size: int = 64,
                      uniform: bool = False):
            if not hasattr(module, "to_quantized"):
                return False
            chosen = module_bits(path, bits, text.num_hidden_layers, uniform=uniform, unified=unified,
                                 values_from_keys=self.values_from_keys_layers)
            if chosen is None:
                return False
            if chosen == bits:
                return True
            group = group_size_for(chosen, bits, group_size, module.weight.shape[-1])
            return {"group_size": group, "bits": chosen}

        return predicate

    @property
    def values_from_keys_layers(self) -> frozenset[int]:
        """Layers whose k_proj also makes the values (HF:1231 attention_k_eq_v on full-attention layers)."""
        text = self.config.text_config
        return frozenset(i for i in range(text.first_shared_layer)
                         if text.attention_k_eq_v and text.layer_types[i] == FULL)


def vision_block_ids(mm_token_type_ids: mx.array) -> mx.array:
    """Index of the image/video block each token belongs to, -1 for other tokens (HF:2215)."""
    types = np.array(mm_token_type_ids)
    is_vision = (types == 1) | (types == 2)
    starts = is_vision & ~np.concatenate([np.zeros_like(is_vision[:, :1]), is_vision[:, :-1]], axis=1)
    groups = np.cumsum(starts, axis=1) - 1
    return mx.array(np.where(is_vision, groups, -1))


def _canonical_name(name: str) -> Optional[str]:
    """One checkpoint key in the `Gemma4ForConditionalGeneration` layout."""
    if name.startswith("language_model.model."):  # older Gemma 3 multimodal layout
        return "model.language_model." + name[len("language_model.model."):]
    if name.startswith("language_model.lm_head."):
        return name[len("language_model."):]
    if name.startswith(TEXT_ONLY_PREFIXES):  # Gemma4ForCausalLM / Gemma3ForCausalLM
        return "model.language_model." + name[len("model."):]
    return name
