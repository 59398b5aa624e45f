"""Audio tower parity: our MLX AudioModel against transformers' Gemma4AudioModel (tiny, fp32, random).

Every parameter and persistent buffer is randomised (clip bounds that really clip, per_dim_scale, norm
weights not 1, output bias), and the config moves eps, residual weight, softcap and gradient clipping
away from their defaults, so a misplaced eps, clamp or scale shows up in the hidden states.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch
from transformers import Gemma4AudioConfig
from transformers.models.gemma4.modeling_gemma4 import Gemma4AudioModel

from mlx_model.audio import AudioModel
from mlx_model.audio_features import AudioFeatureExtractor, num_audio_soft_tokens
from mlx_model.config import AudioConfig, ModelConfigError

TOLERANCE = 1e-4
TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, subsampling_conv_channels=[128, 8],
    conv_kernel_size=5, output_proj_dims=24,
)
CONFIGS = {
    # non-default eps / residual weight / softcap / clipping, so each is exercised
    "clipped": dict(
        TINY, residual_weight=0.37, attention_logit_cap=5.0, rms_norm_eps=1e-3, gradient_clipping=1.0
    ),
    "unclipped": dict(TINY, use_clipped_linears=False),
}
# Batches of clips (samples at 16 kHz): 30 s (the longest clip, 750 tokens) beside a short one, odd
# lengths, and 161 samples, the shortest clip that yields a soft token. Kept small: the CPU is slow.
BATCHES = {
    "30s": ("clipped", [480_000, 5_000]),
    "mixed": ("clipped", [33_333, 16_000, 1_000, 161]),
    "unclipped": ("unclipped", [33_333, 5_000, 161]),
}


def _randomise(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("per_dim_scale"):
                param.copy_(torch.randn(param.shape, generator=gen))
            elif "norm" in name:
                param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=gen))
            elif param.ndim == 1:  # output_proj bias
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
            else:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen) / fan_in**0.5)
        for name, buffer in model.named_buffers():
            bound = float(torch.empty(()).uniform_(0.5, 1.5, generator=gen))
            if name.endswith(("input_min", "output_min")):
                buffer.fill_(-bound)
            elif name.endswith(("input_max", "output_max")):
                buffer.fill_(bound)


def _reference(config: dict, seed: int = 0) -> Gemma4AudioModel:
    torch.manual_seed(seed)
    hf_config = Gemma4AudioConfig(**config)
    hf_config._attn_implementation = "eager"
    model = Gemma4AudioModel(hf_config).eval()
    _randomise(model, seed)
    return model


def _ours(reference: Gemma4AudioModel) -> AudioModel:
    model = AudioModel(AudioConfig.from_dict(reference.config.to_dict()))
    weights = {k: mx.array(v.numpy()) for k, v in reference.state_dict().items()}
    model.load_weights(list(model.sanitize(weights).items()), strict=True)
    return model


def _features(lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel features of a chirp in noise, cut to each length."""
    rng = np.random.default_rng(0)
    t = np.arange(max(lengths)) / 16_000
    audio = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)
    audio = audio.astype(np.float32)
    return AudioFeatureExtractor()([audio[:n] for n in lengths])


@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_tower_matches_transformers_on_batched_clips(batch):
    config_name, lengths = BATCHES[batch]
    values, mask = _features(lengths)
    reference = _reference(CONFIGS[config_name])
    with torch.no_grad():
        expected = reference(torch.from_numpy(values), torch.from_numpy(mask))
    ref_hidden = expected.last_hidden_state.numpy()
    ref_mask = expected.attention_mask.numpy()

    hidden, out_mask = _ours(reference)(mx.array(values), mx.array(mask))
    hidden, out_mask = np.array(hidden), np.array(out_mask)

    assert hidden.shape == ref_hidden.shape
    assert hidden.shape == (len(lengths), num_audio_soft_tokens(max(lengths)), TINY["output_proj_dims"])
    np.testing.assert_array_equal(out_mask, ref_mask)
    diff = np.abs(hidden - ref_hidden)
    print(f"[{batch}] tower max|diff| all positions {diff.max():.2e}, real tokens {diff[ref_mask].max():.2e}")
    assert diff.max() <= TOLERANCE
    # the soft-token count the prompt needs equals the tower's mask, for every clip
    assert ref_mask.sum(axis=1).tolist() == [num_audio_soft_tokens(n) for n in lengths]


def test_embed_audio_matches_transformers():
    from transformers import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4MultimodalEmbedder

    from mlx_model.multimodal_embedder import MultimodalEmbedder

    values, mask = _features([20_000, 7_000])
    reference = _reference(CONFIGS["clipped"], seed=1)
    text_config = Gemma4TextConfig(
        hidden_size=40, num_hidden_layers=1, num_attention_heads=2, head_dim=8, layer_types=["full_attention"]
    )
    torch.manual_seed(1)
    embedder = Gemma4MultimodalEmbedder(reference.config, text_config).eval()
    with torch.no_grad():
        hidden = reference(torch.from_numpy(values), torch.from_numpy(mask))
        # HF modeling_gemma4.py:2450 keeps only the soft tokens of real audio
        expected = embedder(hidden.last_hidden_state)[hidden.attention_mask].numpy()

    ours = _ours(reference)
    # embed_audio's norm eps is the audio config's rms_norm_eps (HF:2134), 1e-3 here
    our_embedder = MultimodalEmbedder(
        reference.config.output_proj_dims, text_config.hidden_size, eps=reference.config.rms_norm_eps
    )
    embedder_weights = [(k, mx.array(v.numpy())) for k, v in embedder.state_dict().items()]
    our_embedder.load_weights(embedder_weights, strict=True)
    tower_out, out_mask = ours(mx.array(values), mx.array(mask))
    embedded = np.array(our_embedder(tower_out))[np.array(out_mask)]
    diff = np.abs(embedded - expected).max()
    print(f"embed_audio max|diff| {diff:.2e}")
    assert embedded.shape == expected.shape and diff <= TOLERANCE


def test_weight_names_equal_checkpoint_names_and_sanitize_is_idempotent():
    reference = _reference(CONFIGS["clipped"])
    model = AudioModel(AudioConfig.from_dict(reference.config.to_dict()))
    ours = {k for k, _ in _flatten(model.parameters())}
    assert ours == set(reference.state_dict().keys())

    prefixed = {f"model.audio_tower.{k}": mx.array(v.numpy()) for k, v in reference.state_dict().items()}
    prefixed["model.audio_tower.rel_pos_enc.inv_timescales"] = mx.zeros((1, 1, 16))
    once = model.sanitize(prefixed)
    twice = model.sanitize(once)
    assert "model.audio_tower.rel_pos_enc.inv_timescales" not in once
    assert once.keys() == twice.keys()
    for key in once:
        assert np.array_equal(np.array(once[key]), np.array(twice[key])), key
    conv0 = once["model.audio_tower.subsample_conv_projection.layer0.conv.weight"]
    assert conv0.shape == (128, 3, 3, 1)
    assert once["model.audio_tower.layers.0.lconv1d.depthwise_conv1d.weight"].shape == (32, 5, 1)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}{key}.")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _flatten(value, f"{prefix}{index}.")
    else:
        yield prefix[:-1], tree


def test_config_from_hub_dict_drops_unknown_keys_and_rejects_bad_values():
    config = AudioConfig.from_dict({"hidden_size": 1024, "_name_or_path": "x", "dtype": "bfloat16",
                                    "subsampling_conv_channels": [128, 32], "sscp_conv_eps": 1e-3})
    assert config.hidden_size == 1024 and config.subsampling_conv_channels == [128, 32]
    assert config.attention_chunk_size == 12 and config.attention_context_left == 13
    with pytest.raises(ModelConfigError, match="num_attention_heads"):
        AudioConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ModelConfigError, match="hidden_act"):
        AudioConfig(hidden_act="mish")


def test_empty_input_gives_no_tokens():
    model = AudioModel(AudioConfig(**TINY))
    hidden, mask = model(mx.zeros((2, 0, 128)), mx.zeros((2, 0), dtype=mx.bool_))
    assert hidden.shape == (2, 0, TINY["output_proj_dims"]) and mask.shape == (2, 0)
