"""Gemma 4's 4-bit recipe (mlx_model/quant_recipe.py): the bits of every module kind, the files it writes,
their loading by our loader and by mlx-lm's, and the planner's size of them."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import mlx.core as mx

from convert import convert_checkpoint
from convert.__main__ import main as cli_main
from convert.hf_source import safetensors_layout
from convert.quantize import QuantPlan
from mlx_model import load_model
from mlx_model.config import TextConfig
from mlx_model.model import Model, ModelConfig
from mlx_model.planner import VARIANT_CONFIGS, weight_bytes
from mlx_model.quant_recipe import use_more_bits
from tests.reference_models import TINY_VOCAB, VARIANTS
from tests.test_convert_support import QUANT_FRIENDLY, build_multimodal_checkpoint, build_text_checkpoint

LAYER = re.compile(r"\.layers\.(\d+)\.")


def _plan(config: dict, **options) -> dict[str, int | None]:
    """module path -> bits (None: float) of a QuantPlan on the skeleton of `config`."""
    plan = QuantPlan(Model(ModelConfig.from_dict(config)), options.pop("bits", 4), 32, **options)
    return {path: (params.bits if params else None) for path, params in plan.modules.items()}


def _multimodal_config() -> dict:
    from transformers import Gemma4AudioConfig, Gemma4Config, Gemma4VisionConfig

    vision = Gemma4VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=2, head_dim=32, position_embedding_size=64)
    audio = Gemma4AudioConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                              subsampling_conv_channels=[128, 8], output_proj_dims=64)
    text = {**VARIANTS["e2b"], **QUANT_FRIENDLY, "num_hidden_layers": 16, "num_kv_shared_layers": 4,
            "layer_types": (["sliding_attention"] * 3 + ["full_attention"]) * 4}
    return Gemma4Config(text_config=text, vision_config=vision.to_dict(), audio_config=audio.to_dict()).to_dict()


def test_use_more_bits_picks_ollamas_layers():
    # llama.cpp / Ollama useMoreBits: first and last eighth, and every third layer between
    assert [i for i in range(16) if use_more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]
    assert [i for i in range(35) if use_more_bits(i, 35)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31,
                                                              32, 33, 34]


def test_recipe_bits_of_every_module_kind():
    """E2B-like (PLE, KV sharing, towers), 26B-like (router, experts) and 31B-like (k_eq_v) skeletons."""
    bits = _plan(_multimodal_config())
    lm = "model.language_model."
    assert bits[f"{lm}embed_tokens_per_layer"] == 8 and bits[f"{lm}per_layer_model_projection"] == 8
    assert bits[f"{lm}embed_tokens"] == 8
    for path, value in bits.items():
        layer = LAYER.search(path)
        if path.startswith("model.vision_tower.") or path.startswith("model.audio_tower."):
            assert value == 8, path  # towers never below 8 bits
        elif path.startswith(("model.embed_vision.", "model.embed_audio.")):
            assert value is None, path  # their projections into text space stay float
        elif path.endswith(("self_attn.v_proj", "mlp.down_proj")) and path.startswith(lm):
            assert value == (8 if use_more_bits(int(layer.group(1)), 16) else 4), path
        elif path.startswith(f"{lm}layers."):
            assert value == 4, path  # q/k/o, gate/up, per-layer gates
    assert sum(p.endswith("v_proj") for p in bits if p.startswith(lm)) == 12  # KV-shared layers have none
    moe = _plan({**VARIANTS["26b"], **QUANT_FRIENDLY, "model_type": "gemma4_text"})
    for i in range(6):
        more = 8 if use_more_bits(i, 6) else 4
        assert moe[f"{lm}layers.{i}.router.proj"] == 8
        assert moe[f"{lm}layers.{i}.experts.down_proj"] == more and moe[f"{lm}layers.{i}.mlp.down_proj"] == more
        assert moe[f"{lm}layers.{i}.experts.gate_up_proj"] == 4
    k_eq_v = _plan({**VARIANTS["31b"], **QUANT_FRIENDLY, "model_type": "gemma4_text"})
    config = TextConfig.from_dict({**VARIANTS["31b"], **QUANT_FRIENDLY})
    for i in range(6):
        full = config.layer_types[i] == "full_attention"
        assert (f"{lm}layers.{i}.self_attn.v_proj" in k_eq_v) == (not full)
        values = f"{lm}layers.{i}.self_attn.{'k_proj' if full else 'v_proj'}"  # k_proj makes the values there
        assert k_eq_v[values] == (8 if use_more_bits(i, 6) else 4), values


def test_uniform_and_8_bit():
    bits = _plan(_multimodal_config(), uniform=True)
    assert {v for p, v in bits.items() if not p.endswith("router.proj")} == {4}
    assert _plan({**VARIANTS["26b"], **QUANT_FRIENDLY, "model_type": "gemma4_text"},
                 uniform=True)["model.language_model.layers.0.router.proj"] == 8
    eight = _plan(_multimodal_config(), bits=8)
    assert {v for p, v in eight.items() if not p.startswith(("model.embed_vision.", "model.embed_audio."))} == {8}


@pytest.fixture(scope="module")
def recipe_multimodal(tmp_path_factory):
    """A tiny E2B-like checkpoint with towers converted with the recipe (4-bit, group 32, float32)."""
    root = tmp_path_factory.mktemp("recipe")
    build_multimodal_checkpoint(root / "src")
    config = json.loads((root / "src" / "config.json").read_text())
    # mlx-lm 0.32 reads these where the hub's configs carry them; transformers 5.23 writes per_layer_config
    config["vocab_size"] = TINY_VOCAB
    config["text_config"]["global_head_dim"] = QUANT_FRIENDLY["global_head_dim"]
    (root / "src" / "config.json").write_text(json.dumps(config))
    return root / "src", convert_checkpoint(root / "src", root / "q", bits=4, group_size=32, dtype="float32")


def test_recipe_is_recorded_and_loads_with_ours_and_mlx_lm(recipe_multimodal):
    from mlx_lm.utils import load_model as mlx_lm_load_model

    _, out = recipe_multimodal
    config = json.loads((out / "config.json").read_text())
    quantization = config["quantization"]
    assert (quantization["bits"], quantization["group_size"]) == (4, 32)
    assert quantization["model.language_model.embed_tokens_per_layer"]["bits"] == 8
    assert quantization["model.embed_vision.embedding_projection"] is False
    assert config["gemma4_mac"]["recipe"] == "gemma4"
    ours = load_model(out)
    assert ours.language_model.embed_tokens_per_layer.bits == 8
    assert ours.language_model.layers[0].self_attn.v_proj.bits == 8
    assert ours.language_model.layers[1].self_attn.v_proj.bits == 4
    assert ours.model.vision_tower.encoder.layers[0].mlp.down_proj.linear.bits == 8
    assert not hasattr(ours.model.embed_vision.embedding_projection, "scales")
    theirs, _ = mlx_lm_load_model(out)  # mlx-lm's own gemma4 model, its loader (bits inferred per module)
    assert theirs.language_model.model.layers[1].self_attn.v_proj.bits == 4
    ids = mx.array(np.random.default_rng(0).integers(3, TINY_VOCAB, (2, 48)))
    difference = np.abs(np.array(ours(ids)) - np.array(theirs(ids))).max()
    assert difference < 1e-4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_planner_weight_bytes_equal_the_files(variant, tmp_path):
    """The planner's text weight bytes are exactly the tensor bytes the converter writes (bfloat16)."""
    build_text_checkpoint(variant, tmp_path / "src", overrides=QUANT_FRIENDLY)
    config = TextConfig.from_dict({**VARIANTS[variant], **QUANT_FRIENDLY})
    for uniform in (False, True):
        out = convert_checkpoint(tmp_path / "src", tmp_path / f"q{uniform}", bits=4, group_size=64,
                                 uniform=uniform, skip_quality_check=True)
        written = 0
        for shard in out.glob("*.safetensors"):
            header, _ = safetensors_layout(shard)
            written += sum(entry["data_offsets"][1] - entry["data_offsets"][0] for entry in header.values())
        assert weight_bytes(config, 4, 64, uniform=uniform) == written


def test_published_variants_sizes():
    """The recipe costs E2B/E4B most (their PLE table is 2.3 / 2.8 B parameters at 8 bits)."""
    sizes = {name: weight_bytes(TextConfig.from_dict(c), 4) / 1024 ** 3 for name, c in VARIANT_CONFIGS.items()}
    uniform = {name: weight_bytes(TextConfig.from_dict(c), 4, uniform=True) / 1024 ** 3
               for name, c in VARIANT_CONFIGS.items()}
    assert all(sizes[name] > uniform[name] for name in sizes)
    assert sizes["31B"] / uniform["31B"] < 1.2 and sizes["E2B"] / uniform["E2B"] > 1.4
    from gemma4_mac.model_manager import HUB_MODELS, TOWER_GIB

    for model in HUB_MODELS:
        name = model.repo_id.split("gemma-4-")[1].removesuffix("-it")
        assert model.size_4bit == pytest.approx(sizes[name] + TOWER_GIB[name], abs=0.05), model.repo_id


def test_command_line_uniform_and_skip(tmp_path):
    build_text_checkpoint("31b", tmp_path / "src", overrides=QUANT_FRIENDLY)
    assert cli_main([str(tmp_path / "src"), str(tmp_path / "u"), "--uniform", "--skip-quality-check"]) == 0
    config = json.loads((tmp_path / "u" / "config.json").read_text())
    assert config["gemma4_mac"]["recipe"] == "uniform"
    assert not any(isinstance(v, dict) for k, v in config["quantization"].items() if k.startswith("model."))
    assert not (tmp_path / "u" / "quality.json").exists()
    assert cli_main([str(tmp_path / "src"), str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "quality.json").read_text())["passed"] is True


def test_big_quantized_tables_are_written_chunk_by_chunk(tmp_path, monkeypatch):
    """A quantized tensor too big to wait in memory goes to a shard of its own, row chunk by row chunk: the
    same tensors as the buffered path (here every row-read quantized tensor is streamed)."""
    import convert.quantize
    import convert.sink

    build_text_checkpoint("e2b", tmp_path / "src", overrides=QUANT_FRIENDLY)
    buffered = convert_checkpoint(tmp_path / "src", tmp_path / "buffered", dtype="bfloat16", skip_quality_check=True)
    monkeypatch.setattr(convert.sink, "_STREAMED_OUTPUT_BYTES", 0)
    monkeypatch.setattr(convert.quantize, "_CHUNK_ELEMENTS", 4096)  # several chunks per table
    streamed = convert_checkpoint(tmp_path / "src", tmp_path / "streamed", dtype="bfloat16", skip_quality_check=True)
    tensors = [{}, {}]
    for target, folder in zip(tensors, (buffered, streamed)):
        for shard in folder.glob("*.safetensors"):
            target.update(mx.load(str(shard)))
    assert sorted(tensors[0]) == sorted(tensors[1])
    for name, value in tensors[0].items():
        assert value.dtype == tensors[1][name].dtype and mx.array_equal(value, tensors[1][name]).item(), name
    assert len(list(streamed.glob("*.safetensors"))) > len(list(buffered.glob("*.safetensors")))
    ids = mx.array(np.random.default_rng(1).integers(3, TINY_VOCAB, (1, 24)))
    assert mx.array_equal(load_model(streamed)(ids), load_model(buffered)(ids)).item()
