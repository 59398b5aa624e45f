"""Tiny random Gemma 4 12B ("gemma4_unified") checkpoints built with transformers, the reference.

Shaped like the real 12B (configuration values from google/gemma-4-12B-it's config.json: k_eq_v full
layers with one KV head, 5 sliding : 1 full, embedders for 48-pixel patches and 640-sample audio
frames), scaled down. Every parameter is randomised (tests/reference_models.randomize_), LayerNorm
biases included, so a missed scale, norm or bias shows up as a logit difference.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from tests.reference_models import randomize_

WINDOW = 8
VOCAB = 262_144  # the real vocabulary, so the real tokenizer and chat template work

TEXT = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=4,
    num_key_value_heads=2, num_global_key_value_heads=1, attention_k_eq_v=True, head_dim=16,
    global_head_dim=32,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2, sliding_window=WINDOW,
    final_logit_softcapping=30.0, rms_norm_eps=1e-6, max_position_embeddings=4096, pad_token_id=0,
    bos_token_id=2, eos_token_id=[1, 106], use_bidirectional_attention="vision",
)
VISION = dict(patch_size=16, pooling_kernel_size=3, mm_embed_dim=32, mm_posemb_size=1120, output_proj_dims=32)
AUDIO = dict(audio_embed_dim=640)


def build_unified(out_dir: Path, *, seed: int = 0, text_only: bool = False, tokenizer_dir: Path | None = None,
                  **text_overrides):
    """A random tiny gemma4_unified checkpoint in `out_dir`; returns the float32 torch model (eval mode).

    `tokenizer_dir`'s files (the real Gemma 4 tokenizer) are copied beside it with an empty
    processor_config.json (the published processor defaults), making it a complete model folder.
    """
    from transformers import (Gemma4UnifiedAudioConfig, Gemma4UnifiedConfig, Gemma4UnifiedForCausalLM,
                              Gemma4UnifiedForConditionalGeneration, Gemma4UnifiedTextConfig,
                              Gemma4UnifiedVisionConfig)

    torch.manual_seed(seed)
    text = Gemma4UnifiedTextConfig(**{**TEXT, **text_overrides})
    if text_only:
        model = Gemma4UnifiedForCausalLM(text)
    else:
        config = Gemma4UnifiedConfig(text_config=text.to_dict(),
                                     vision_config=Gemma4UnifiedVisionConfig(**VISION).to_dict(),
                                     audio_config=Gemma4UnifiedAudioConfig(**AUDIO).to_dict())
        model = Gemma4UnifiedForConditionalGeneration(config)
    model = model.float().eval()
    randomize_(model, seed)
    with torch.no_grad():  # LayerNorm biases and the position table: nonzero and of a sensible scale
        for name, tensor in model.state_dict(keep_vars=True).items():
            if "embed_vision" in name and name.endswith(".bias"):
                tensor.copy_(0.1 * torch.randn(tensor.shape))
            elif name.endswith("pos_embedding"):
                tensor.copy_(0.5 * torch.randn(tensor.shape))
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer_dir is not None:
        for file in Path(tokenizer_dir).iterdir():
            if file.is_file():
                shutil.copy(file, Path(out_dir) / file.name)
        (Path(out_dir) / "processor_config.json").write_text(json.dumps({}))
    return model


def reference_forward(model, tokens, *, media=(), dtype=torch.float64, last: int = 0,
                      token_types: bool = True) -> np.ndarray:
    """transformers' logits [L, V] (the `last` positions only, when given) for one prompt, the media blocks
    fed as their processor inputs.

    `media` are our MediaBlocks (kind, start, length, inputs); with `token_types`, mm_token_type_ids mark
    every block, so images and frames attend bidirectionally as transformers' forward makes them.
    """
    import copy

    ref = copy.deepcopy(model).to(dtype)
    kwargs = {}
    images = [b for b in media if b.kind == "image"]
    frames = [b for b in media if b.kind == "video"]
    audio = [b for b in media if b.kind == "audio"]
    if images:
        kwargs["pixel_values"] = torch.tensor(np.concatenate([b.inputs[0] for b in images]), dtype=dtype)
        kwargs["image_position_ids"] = torch.tensor(np.concatenate([b.inputs[1] for b in images])).long()
    if frames:
        kwargs["pixel_values_videos"] = torch.tensor(np.concatenate([b.inputs[0] for b in frames]),
                                                     dtype=dtype)
        kwargs["video_position_ids"] = torch.tensor(np.concatenate([b.inputs[1] for b in frames])).long()
        kwargs["num_frames_per_video"] = torch.tensor([len(frames)])
    if audio:
        width = max(b.inputs[0].shape[1] for b in audio)
        feats = np.zeros((len(audio), width, audio[0].inputs[0].shape[2]), np.float32)
        masks = np.zeros((len(audio), width), bool)
        for i, b in enumerate(audio):
            feats[i, : b.inputs[0].shape[1]] = b.inputs[0][0]
            masks[i, : b.inputs[1].shape[1]] = b.inputs[1][0]
        kwargs["input_features"] = torch.tensor(feats, dtype=dtype)
        kwargs["input_features_mask"] = torch.tensor(masks)
    types = np.zeros(len(tokens), np.int64)
    for b in media:
        types[b.start:b.end] = {"image": 1, "video": 2, "audio": 3}[b.kind]
    if token_types:
        kwargs["mm_token_type_ids"] = torch.tensor(types[None])
    with torch.no_grad():
        out = ref(input_ids=torch.tensor([list(tokens)]), logits_to_keep=last, **kwargs)
    return out.logits[0].double().numpy()
