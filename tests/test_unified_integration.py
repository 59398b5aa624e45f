"""Gemma 4 12B across the app: config.json keys, weight names, the converter (4-bit recipe, GGUF text), the
planner's rows, the model manager's list, the server's abilities and the document cache."""

from __future__ import annotations

import copy
import io
import json
from argparse import Namespace
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from convert.pipeline import convert_checkpoint
from mlx_model import load, load_model
from mlx_model.config import (ModelConfig, ModelConfigError, TextConfig, UnifiedAudioConfig,
                               UnifiedVisionConfig)
from tests.assets import gemma4_vocab_dir
from tests.unified_reference import TEXT, WINDOW, build_unified

TOLERANCE = 1e-4
# google/gemma-4-12B-it's config.json: its multimodal parts (the text part is the planner's 12B row)
HUB_VISION = {"mm_embed_dim": 3840, "mm_posemb_size": 1120, "model_patch_size": 48,
              "model_type": "gemma4_unified_vision", "num_soft_tokens": 280, "output_proj_dims": 3840,
              "patch_size": 16, "pooling_kernel_size": 3, "rms_norm_eps": 1e-6}
HUB_AUDIO = {"model_type": "gemma4_unified_audio", "audio_embed_dim": 640, "hidden_size": 640,
             "output_proj_dims": 640}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A tiny multimodal unified checkpoint (small vocabulary: the embedders are what is tested here)."""
    folder = tmp_path_factory.mktemp("unified-small")
    reference = build_unified(folder, seed=8, tokenizer_dir=gemma4_vocab_dir(), vocab_size=512)
    return reference, folder


def test_published_config_parses_and_bad_values_name_their_key():
    from mlx_model.planner import VARIANT_CONFIGS

    config = ModelConfig.from_dict({"model_type": "gemma4_unified", "text_config": VARIANT_CONFIGS["12B"],
                                    "vision_config": HUB_VISION, "audio_config": HUB_AUDIO})
    text = config.text_config
    assert config.is_unified and text.blocks_on_every_layer and text.use_bidirectional_attention == "vision"
    assert text.hidden_size_per_layer_input == 0 and text.sliding_window == 1024
    assert text.layer_types.count("full_attention") == 8 and text.layer_kv_heads[5] == 1
    assert text.layer_head_dims[5] == 512 and text.layer_head_dims[0] == 256
    assert UnifiedVisionConfig.from_dict(HUB_VISION).patch_dim == 6912
    assert UnifiedAudioConfig.from_dict({"hidden_size": 640}).audio_embed_dim == 640
    # defaults of a unified text config that lacks the keys (configuration_gemma4_unified.py)
    bare = TextConfig.from_dict({"model_type": "gemma4_unified_text"})
    assert bare.hidden_size_per_layer_input == 0 and bare.max_position_embeddings == 262_144
    with pytest.raises(ModelConfigError, match="model_patch_size"):
        UnifiedVisionConfig.from_dict({**HUB_VISION, "model_patch_size": 32})
    with pytest.raises(ModelConfigError, match="output_proj_dims"):
        UnifiedVisionConfig.from_dict({**HUB_VISION, "output_proj_dims": 1024})
    with pytest.raises(ModelConfigError, match="audio_config.audio_embed_dim"):
        ModelConfig.from_dict({"model_type": "gemma4_unified", "text_config": TEXT, "audio_config": {
            "audio_embed_dim": "640"}})


def test_planner_counts_the_12b_exactly_and_prints_its_rows(tmp_path):
    from gemma4_mac.cli import run_plan
    from mlx_model.planner import VARIANT_CONFIGS, count_text_weights, kv_bytes, kv_bytes_per_token

    config = TextConfig.from_dict(VARIANT_CONFIGS["12B"])
    count = count_text_weights(config)
    vision, audio = UnifiedVisionConfig.from_dict(HUB_VISION), UnifiedAudioConfig.from_dict(HUB_AUDIO)
    d = vision.mm_embed_dim
    embedders = (2 * vision.patch_dim + vision.patch_dim * d + d + 2 * d + vision.mm_posemb_size * 2 * d
                 + 2 * d + d * config.hidden_size + audio.audio_embed_dim * config.hidden_size)
    assert count.quantizable + count.router + count.floats + embedders == 11_959_730_224  # the hub's count
    assert kv_bytes_per_token(config) == 8 * 1 * 512 * 2 * 2  # 8 full layers, 1 KV head, K and V in bf16

    # the counts equal what our model allocates, for a tiny text-only unified checkpoint
    build_unified(tmp_path, seed=1, text_only=True, vocab_size=512)
    model = load_model(tmp_path)
    counted = count_text_weights(model.config.text_config)
    assert counted.quantizable + counted.router + counted.floats == sum(v.size for _, v in
                                                                        tree_flatten(model.parameters()))
    cache = model.make_cache()
    model(mx.array(np.random.default_rng(0).integers(3, 512, (1, 3 * WINDOW + 5))), cache=cache)
    mx.eval([c.state for c in cache])
    assert sum(c.nbytes for c in cache) == kv_bytes(model.config.text_config, 3 * WINDOW + 5, float_bytes=4)

    out = io.StringIO()
    assert run_plan(Namespace(context=None, model=None, macs=1), out) == 0
    rows = [line for line in out.getvalue().splitlines() if line.startswith("12B")]
    assert len(rows) == 4 * 3 + 2  # 4 contexts x 3 KV precisions, and the Mac-size table at 16 and 8 bits
    cells = rows[-2].split()  # variant, KV bits, KV per token, weights, then 8, 16, ... GB
    assert cells[2] == "16.0KiB" and cells[4] == "-" and cells[5] != "-"  # not on 8 GB; on 16 GB with context


def test_model_manager_lists_the_12b_and_keeps_its_recommendations():
    from gemma4_mac.model_manager import GIB, HUB_MODELS, recommended_model

    entry = next(m for m in HUB_MODELS if m.repo_id == "google/gemma-4-12B-it")
    assert 7 <= entry.size_4bit <= 8 and "audio" in entry.label and "images" in entry.label
    assert [recommended_model(n * GIB).repo_id for n in (16, 32, 64)] == [
        "google/gemma-4-E2B-it", "google/gemma-4-E4B-it", "google/gemma-4-26B-A4B-it"]


def test_sanitize_takes_transformers_names_and_is_idempotent(small):
    _, folder = small
    model = load_model(folder)
    from safetensors.numpy import load_file

    hub = {k: mx.array(v) for k, v in load_file(str(folder / "model.safetensors")).items()}
    assert "model.vision_embedder.patch_dense.weight" in hub
    assert "model.embed_vision.embedding_projection.weight" in hub
    in_memory = {k.replace("model.vision_embedder.", "model.embed_vision.")
                  .replace("model.embed_vision.embedding_projection",
                           "model.embed_vision.multimodal_embedder.embedding_projection"): v
                 for k, v in hub.items()}
    once = model.sanitize(in_memory)
    assert sorted(once) == sorted(model.sanitize(hub)) == sorted(model.sanitize(once))
    assert sorted(once) == sorted(name for name, _ in tree_flatten(model.parameters()))


def test_converted_4bit_model_keeps_the_embedders_close_to_the_float_ones(small, tmp_path):
    """Our converter's 4-bit recipe: embedders at 8 bits; their soft tokens stay near the float model's."""
    _, folder = small
    from convert.quality import QualityThresholds

    # random weights sit far from trained ones: the gate's figures are checked, its default limits are not
    converted = convert_checkpoint(folder, tmp_path / "q4", bits=4, quality_thresholds=QualityThresholds(max_kl=3))
    quality = json.loads((converted / "quality.json").read_text())
    assert quality["passed"] and sorted(quality["inputs"]) == ["audio", "image", "text"]  # 12B's own inputs
    quantization = json.loads((converted / "config.json").read_text())["quantization"]
    assert quantization["model.vision_embedder.patch_dense"]["bits"] == 8
    assert quantization["model.embed_audio.embedding_projection"]["bits"] == 8
    exact, quantized = load_model(folder), load_model(converted)
    rng = np.random.default_rng(0)
    pixels = mx.array(rng.uniform(0, 1, (1, 70, 6912)).astype(np.float32))
    grid = np.full((1, 70, 2), -1, np.int32)
    grid[0, :60] = np.stack(np.meshgrid(np.arange(10), np.arange(6)), -1).reshape(-1, 2)
    frames = mx.array(rng.uniform(-0.5, 0.5, (1, 30, 640)).astype(np.float32))
    mask = mx.array(np.arange(30)[None] < 25)
    for kind, args in (("image", (pixels, mx.array(grid))), ("audio", (frames, mask))):
        reference = np.array(getattr(exact, f"{kind}_features")(*args))
        ours = np.array(getattr(quantized, f"{kind}_features")(*args).astype(mx.float32))
        assert ours.shape == reference.shape == ((60 if kind == "image" else 25), TEXT["hidden_size"])
        relative = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
        print(kind, f"relative error {relative:.4f}")
        assert relative < 0.05, (kind, relative)


def test_12b_text_gguf_converts_as_gemma4_text(tmp_path):
    """llama.cpp writes the 12B's text as architecture `gemma4` (conversion/gemma.py Gemma4UnifiedModel) and
    its embedders to a separate mmproj file (projectors gemma4uv / gemma4ua), which this converter does not
    read: a 12B GGUF converts text-only, like every Gemma 4 GGUF."""
    from tests.test_convert_support import write_gemma4_gguf

    reference = build_unified(tmp_path / "hf", seed=6, text_only=True, vocab_size=512)
    config = {**reference.config.to_dict(), "enable_moe_block": False, "hidden_size_per_layer_input": 0}
    as_gemma4 = SimpleNamespace(config=SimpleNamespace(to_dict=lambda: config),
                                state_dict=reference.state_dict)
    gguf_path = write_gemma4_gguf(as_gemma4, tmp_path / "tiny-12b.gguf")
    folder = convert_checkpoint(gguf_path, tmp_path / "from-gguf", quantize=False, dtype="float32")
    model = load_model(folder)
    assert model.config.model_type == "gemma4_text" and model.config.text_config.attention_k_eq_v
    ids = np.random.default_rng(2).integers(3, 512, size=(1, 3 * WINDOW + 1))
    with torch.no_grad():
        expected = copy.deepcopy(reference).double()(torch.tensor(ids)).logits[0].numpy()
    assert np.abs(np.array(model(mx.array(ids)))[0] - expected).max() <= TOLERANCE


def test_server_abilities_come_from_the_model(small, tmp_path):
    from gemma4_mac.server.service import model_accepts

    _, folder = small
    model = load_model(folder)
    assert model_accepts(model, "vision") and model_accepts(model, "audio")
    build_unified(tmp_path, seed=3, text_only=True, vocab_size=512)
    text_only = load_model(tmp_path)
    assert not model_accepts(text_only, "vision") and not model_accepts(text_only, "audio")


def test_document_cache_saves_and_restores_a_prompt_with_an_image(tmp_path, monkeypatch):
    """A long prefix (an image among it) saved by one session is read back by a fresh one: same logits."""
    from PIL import Image

    from gemma4_mac import document_cache
    from gemma4_mac.document_cache import DocumentCacheStore
    from gemma4_mac.generate import prepare_prompt
    from gemma4_mac.session import ChatSession

    monkeypatch.setattr(document_cache, "MIN_TOKENS_TO_SAVE", 32)
    build_unified(tmp_path / "m", seed=9, tokenizer_dir=gemma4_vocab_dir())
    model, processor = load(tmp_path / "m")
    processor.image_token_budget = 70
    picture = np.random.default_rng(4).integers(0, 255, (96, 144, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "a.png")
    prepared = prepare_prompt(processor, [{"role": "user", "content": [
        {"type": "image", "path": str(tmp_path / "a.png")}, {"type": "text", "text": "Describe it."}]}])
    store = DocumentCacheStore(tmp_path / "caches")
    first, reused = ChatSession(model).read_prompt(prepared, document_cache=store, model_id="tiny-12b")
    assert reused == 0 and store.lookup("tiny-12b", prepared.keys) is not None
    second = ChatSession(model)
    again, reused = second.read_prompt(prepared, document_cache=store, model_id="tiny-12b")
    assert reused >= prepared.media[0].end  # the image came from disk, not from the embedder
    np.testing.assert_allclose(np.array(again), np.array(first), atol=1e-5)
