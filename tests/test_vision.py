"""Vision tower parity: our MLX VisionModel + MultimodalEmbedder against transformers' Gemma4VisionModel +
Gemma4MultimodalEmbedder (tiny, fp32, random).

Every parameter and buffer is randomised (norm weights not 1, clip bounds that really clip, std_bias /
std_scale, the position table), and images of different sizes are batched with padding, so a misplaced
norm, clamp, RoPE axis, pooling index or padding mask shows up in the soft tokens.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch
from transformers import Gemma4TextConfig, Gemma4VisionConfig
from transformers.models.gemma4.modeling_gemma4 import Gemma4MultimodalEmbedder, Gemma4VisionModel

from mlx_model.config import ModelConfigError, VisionConfig
from mlx_model.image_processor import ImageProcessor
from mlx_model.multimodal_embedder import MultimodalEmbedder
from mlx_model.vision import VisionModel, pooling_plan

TOLERANCE = 1e-4
TEXT_HIDDEN = 40
TINY = dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, head_dim=8,
    position_embedding_size=256,
)
CONFIGS = {
    # GQA, clipped linears, standardize, non-default eps and theta: every optional path on
    "clipped": dict(TINY, num_key_value_heads=2, use_clipped_linears=True, standardize=True,
                    rms_norm_eps=1e-5, rope_parameters={"rope_theta": 50.0, "rope_type": "axial"}),
    "plain": dict(TINY, num_key_value_heads=4, hidden_activation="gelu_pytorch_tanh"),
}
# (height, width) of the batched images; 336x480 fills the 70-token budget exactly (no padding)
IMAGE_SIZES = [(300, 400), (100, 900), (64, 64), (1000, 90), (336, 480)]


def _randomise(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(torch.randn(param.shape, generator=gen) / max(1, param.shape[-1]) ** 0.5)
        for name, buffer in model.named_buffers():
            if name.endswith(("input_min", "output_min")):
                buffer.fill_(-float(torch.empty(()).uniform_(0.5, 1.5, generator=gen)))
            elif name.endswith(("input_max", "output_max")):
                buffer.fill_(float(torch.empty(()).uniform_(0.5, 1.5, generator=gen)))
            elif name.endswith("std_bias"):
                buffer.copy_(torch.randn(buffer.shape, generator=gen))
            elif name.endswith("std_scale"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=gen))


def _reference(config: dict, seed: int = 0) -> tuple[Gemma4VisionModel, Gemma4MultimodalEmbedder]:
    torch.manual_seed(seed)
    hf_config = Gemma4VisionConfig(**config)
    tower = Gemma4VisionModel(hf_config).eval()
    text_config = Gemma4TextConfig(hidden_size=TEXT_HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                                   head_dim=8, layer_types=["full_attention"])
    embedder = Gemma4MultimodalEmbedder(hf_config, text_config).eval()
    _randomise(tower, seed)
    _randomise(embedder, seed + 1)
    return tower, embedder


def _ours(tower: Gemma4VisionModel, embedder: Gemma4MultimodalEmbedder
          ) -> tuple[VisionModel, MultimodalEmbedder]:
    model = VisionModel(VisionConfig.from_dict(tower.config.to_dict()))
    weights = {k: mx.array(v.numpy()) for k, v in tower.state_dict().items()}
    model.load_weights(list(model.sanitize(weights).items()), strict=True)
    ours_embedder = MultimodalEmbedder(tower.config.hidden_size, TEXT_HIDDEN, eps=tower.config.rms_norm_eps)
    embedder_weights = [(k, mx.array(v.numpy())) for k, v in embedder.state_dict().items()]
    ours_embedder.load_weights(embedder_weights, strict=True)
    return model, ours_embedder


def _images(sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("config_name,budget", [("clipped", 70), ("plain", 140)])
def test_tower_and_embedder_match_transformers_on_padded_batch(config_name, budget):
    processor = ImageProcessor(max_soft_tokens=budget)
    pixel_values, position_ids, counts = processor.preprocess(_images(IMAGE_SIZES))
    if budget == 70:
        assert (position_ids[-1] >= 0).all()  # 336x480 fills the budget: a batch row without padding
    tower, embedder = _reference(CONFIGS[config_name])
    with torch.no_grad():
        soft = tower(torch.from_numpy(pixel_values), torch.from_numpy(position_ids.astype(np.int64)))
        expected_soft = soft.last_hidden_state.numpy()
        expected = embedder(soft.last_hidden_state).numpy()

    our_tower, our_embedder = _ours(tower, embedder)
    per_image = our_tower(mx.array(pixel_values), mx.array(position_ids))
    assert [x.shape[0] for x in per_image] == counts  # padding dropped, one array per image
    ours_soft = np.concatenate([np.array(x) for x in per_image])
    embedded = np.array(our_embedder(mx.concatenate(per_image)))

    assert embedded.shape == expected.shape == (sum(counts), TEXT_HIDDEN)
    soft_diff = np.abs(ours_soft - expected_soft).max()
    diff = np.abs(embedded - expected).max()
    print(f"[{config_name}/{budget}] embed_vision(tower) max|diff| {diff:.2e}; "
          f"tower max|diff| {soft_diff:.2e} (|soft| up to {np.abs(expected_soft).max():.1f})")
    assert diff <= TOLERANCE
    assert soft_diff <= 1e-5 * np.abs(expected_soft).max()


def test_weight_names_equal_transformers_state_dict():
    tower, _ = _reference(CONFIGS["clipped"])
    ours = VisionModel(VisionConfig.from_dict(tower.config.to_dict()))
    from mlx.utils import tree_flatten

    our_names = {name for name, _ in tree_flatten(ours.parameters())}
    hf_names = set(tower.state_dict())
    assert our_names == hf_names - {"encoder.rotary_emb.inv_freq", "encoder.rotary_emb.original_inv_freq"}


def test_sanitize_is_pure_and_idempotent():
    config = VisionConfig.from_dict(dict(TINY, num_key_value_heads=2, use_clipped_linears=False))
    model = VisionModel(config)
    weights = {
        "encoder.layers.0.self_attn.q_proj.linear.weight": mx.zeros((32, 32)),
        "encoder.layers.0.self_attn.q_proj.input_min": mx.array([-1.0]),  # not used without clipped linears
        "encoder.rotary_emb.inv_freq": mx.zeros((2,)),
    }
    before = dict(weights)
    once = model.sanitize(weights)
    assert weights == before
    assert set(once) == {"encoder.layers.0.self_attn.q_proj.linear.weight"}
    assert model.sanitize(once).keys() == once.keys()

    clipped = VisionModel(VisionConfig.from_dict(dict(TINY, num_key_value_heads=2, use_clipped_linears=True)))
    out = clipped.sanitize({"x.q_proj.input_min": mx.array([-2.0])})
    assert out["x.q_proj.input_min"].shape == ()
    assert clipped.sanitize(out)["x.q_proj.input_min"].shape == ()


def test_config_from_hub_dict_drops_unknown_keys_and_checks_values():
    config = VisionConfig.from_dict({**Gemma4VisionConfig().to_dict(), "some_future_key": 1})
    assert config.hidden_size == 768 and config.rope_theta == 100.0
    assert config.position_embedding_size == 10240
    assert VisionConfig.from_dict({"rope_theta": 10.0}).rope_theta == 10.0
    with pytest.raises(ModelConfigError, match="head_dim"):
        VisionConfig.from_dict({"head_dim": 6})
    with pytest.raises(ModelConfigError, match="hidden_activation"):
        VisionConfig.from_dict({"hidden_activation": "swiglu"})


def test_pooling_plan_rejects_patches_that_do_not_fit_the_budget():
    positions = np.full((1, 630, 2), -1, dtype=np.int32)
    with pytest.raises(ValueError, match="pad the patches"):
        pooling_plan(positions[:, :600], 3, 66)
    positions[0, 0] = (300, 300)  # a patch far outside a 70-token grid
    with pytest.raises(ValueError, match="do not fit"):
        pooling_plan(positions, 3, 70)
