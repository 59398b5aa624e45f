"""The converter on tiny random Gemma 4 checkpoints built with transformers: lossless float conversion
(HF folders and llama.cpp-style GGUF files), quantization quality against mlx-lm's, streaming output,
and every failure leaving nothing behind."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from safetensors.numpy import load_file

import mlx.core as mx

from convert import (CheckpointIndexError, ConversionCancelled, DestinationExistsError, MissingTensorError,
                     ShapeMismatchError, SourceNotFoundError, UnexpectedTensorError, UnsupportedSourceError,
                     WriteError, convert_checkpoint)
from convert.__main__ import main as cli_main
from mlx_model import load_model
from tests.reference_models import TINY_VOCAB, VARIANTS, reference_logits
from tests.test_convert_support import (CHAT_TEMPLATE, QUANT_FRIENDLY, build_multimodal_checkpoint,
                                        build_text_checkpoint, dequantized_parameters, mlx_lm_quantized, quality,
                                        torch_logits_with, write_gemma4_gguf)

PARITY_TOLERANCE = 1e-4  # our model vs transformers in float64 (tests/test_text_parity.py)
# 4,096 positions: fewer make the MoE comparison at 8 bits a coin toss (expert choices flip on near-ties)
IDS = np.random.default_rng(7).integers(3, TINY_VOCAB, size=(16, 256))


def _tensors(folder) -> dict[str, np.ndarray]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def _nothing_left(parent, name: str) -> bool:
    """No DST and no hidden work folder beside it."""
    return not (parent / name).exists() and not [p for p in parent.iterdir() if p.name.startswith(f".{name}")]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """variant -> (torch reference, sharded source folder, float32 conversion) built once."""
    built = {}
    for variant in VARIANTS:
        root = tmp_path_factory.mktemp(variant)
        reference = build_text_checkpoint(variant, root / "src", overrides=QUANT_FRIENDLY, max_shard_size="150KB")
        (root / "src" / "tokenizer_config.json").write_text("{}")
        (root / "src" / "chat_template.jinja").write_text(CHAT_TEMPLATE)
        converted = convert_checkpoint(root / "src", root / "float32", quantize=False, dtype="float32")
        built[variant] = (reference, root / "src", converted)
    return built


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float_conversion_is_lossless(checkpoints, variant):
    reference, source, converted = checkpoints[variant]
    assert len(list(source.glob("*.safetensors"))) > 1  # the source really is sharded
    source_model = load_model(source)  # the source folder as our loader reads it (sanitized, float32)
    ours = load_model(converted)
    expected = _parameters(source_model)
    got = _tensors(converted)
    assert sorted(got) == sorted(expected)
    for name, value in got.items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    ids = mx.array(IDS[:2, :40])
    logits = np.array(ours(ids))
    assert np.abs(logits - np.array(source_model(ids))).max() == 0.0
    assert np.abs(logits - reference_logits(reference, IDS[:2, :40])).max() <= PARITY_TOLERANCE
    assert (converted / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert (converted / "tokenizer_config.json").exists()
    assert "quantization" not in json.loads((converted / "config.json").read_text())


def _parameters(model) -> dict[str, np.ndarray]:
    from mlx.utils import tree_flatten

    return {name: np.array(value) for name, value in tree_flatten(model.parameters())}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gguf_conversion_equals_folder_conversion(checkpoints, variant, tmp_path):
    """A GGUF written the way llama.cpp writes Gemma 4 converts to the very same tensors and model."""
    reference, _, converted = checkpoints[variant]
    gguf_path = write_gemma4_gguf(reference, tmp_path / "tiny.gguf")
    out = convert_checkpoint(gguf_path, tmp_path / "from-gguf", quantize=False, dtype="float32")
    from_folder, from_gguf = _tensors(converted), _tensors(out)
    assert sorted(from_gguf) == sorted(from_folder)
    for name in from_folder:
        np.testing.assert_array_equal(from_gguf[name], from_folder[name], err_msg=name)
    ids = mx.array(IDS[:2, :40])
    assert np.abs(np.array(load_model(out)(ids)) - np.array(load_model(converted)(ids))).max() == 0.0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    transformers_own = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf", tokenizer_type="gemma")
    for text in ("ab cd", "  xyz\n\nq", "<bos>ab<eos>"):
        assert tokenizer(text)["input_ids"] == transformers_own(text)["input_ids"], text
    assert tokenizer.decode(tokenizer("ab cd")["input_ids"], skip_special_tokens=True) == "ab cd"
    assert (out / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gemma4_text" and config["eos_token_id"] == [1, 106, 50]


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_quality_at_least_mlx_lm(checkpoints, bits, tmp_path):
    """Mean KL to the float model is lower than with mlx-lm's quantization of the same weights in every
    variant; top-1 agreement (noisy on random tiny models) is at least mlx-lm's on average.

    The weights are compared through the transformers reference carrying each dequantized weight set
    (fast CPU kernels); a short run checks that our MLX model on the quantized files gives the same logits."""
    rows, ours_top1, theirs_top1 = [], [], []
    for variant, (reference, source, converted) in checkpoints.items():
        expected = torch_logits_with(reference, _parameters(load_model(converted)), IDS)
        out = convert_checkpoint(source, tmp_path / f"{variant}-{bits}", bits=bits, group_size=64, dtype="float32")
        quantized = load_model(out)
        ours_params = dequantized_parameters(quantized)
        ours = quality(expected, torch_logits_with(reference, ours_params, IDS))
        theirs_params = dequantized_parameters(mlx_lm_quantized(converted, bits, 64))
        theirs = quality(expected, torch_logits_with(reference, theirs_params, IDS))
        rows.append(f"{variant} {bits}-bit g64: ours KL {ours['kl']:.5f} top-1 {ours['top1']:.4f} | "
                    f"mlx-lm KL {theirs['kl']:.5f} top-1 {theirs['top1']:.4f}")
        ours_top1.append(ours["top1"])
        theirs_top1.append(theirs["top1"])
        assert ours["kl"] <= theirs["kl"], rows[-1]
        short = IDS[:1, :24]
        mlx_logits = np.array(quantized(mx.array(short)))
        assert np.abs(mlx_logits - torch_logits_with(reference, ours_params, short)).max() <= PARITY_TOLERANCE
    print("\n" + "\n".join(rows))
    assert np.mean(ours_top1) >= np.mean(theirs_top1), rows


def test_quantization_config_rebuilds_the_same_modules(checkpoints, tmp_path):
    _, source, _ = checkpoints["26b"]
    out = convert_checkpoint(source, tmp_path / "q", bits=4, group_size=32, dtype="float32")
    config = json.loads((out / "config.json").read_text())["quantization"]
    assert (config["bits"], config["group_size"], config["mode"]) == (4, 32, "affine")
    routers = {k: v for k, v in config.items() if k.endswith("router.proj")}
    assert routers and all(v["bits"] == 8 for v in routers.values())
    tensors = _tensors(out)
    for name in ("embed_tokens", "layers.0.experts.gate_up_proj", "layers.0.experts.down_proj",
                 "layers.0.self_attn.q_proj", "layers.0.mlp.down_proj"):
        assert f"model.language_model.{name}.scales" in tensors, name
    for name in ("layers.0.router.scale", "layers.0.router.per_expert_scale", "layers.0.layer_scalar",
                 "layers.0.input_layernorm.weight", "norm.weight"):
        full = f"model.language_model.{name}"
        assert tensors[full].dtype == np.float32 and f"{full.rsplit('.', 1)[0]}.scales" not in tensors
    model = load_model(out)  # loads with exactly these modules quantized, router at 8 bits
    router = model.language_model.layers[0].router.proj
    assert (router.bits, router.group_size) == (8, 64)


MULTIMODAL_COMPANIONS = {"tokenizer.json": "{}", "tokenizer_config.json": "{}", "chat_template.jinja": CHAT_TEMPLATE,
                         "processor_config.json": "{}", "preprocessor_config.json": "{}",
                         "special_tokens_map.json": "{}"}


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory):
    """(source folder, float32 conversion) of a tiny E2B-like checkpoint with vision and audio towers."""
    root = tmp_path_factory.mktemp("multimodal")
    build_multimodal_checkpoint(root / "src")
    for name, text in MULTIMODAL_COMPANIONS.items():
        (root / "src" / name).write_text(text)
    return root / "src", convert_checkpoint(root / "src", root / "float", quantize=False, dtype="float32")


def _multimodal_logits(model) -> np.ndarray:
    """Logits over a prompt with two images and an audio clip between random text tokens."""
    from mlx_model.audio_features import AudioFeatureExtractor
    from mlx_model.image_processor import ImageProcessor

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in ((96, 128, 3), (160, 112, 3))]
    pixel_values, position_ids, counts = ImageProcessor(max_soft_tokens=70).preprocess(images)
    clip = (0.3 * np.sin(np.arange(16_000) * 0.05) + 0.05 * rng.standard_normal(16_000)).astype(np.float32)
    features, mask = AudioFeatureExtractor()([clip])
    audio_tokens = model.audio_features(mx.array(features), mx.array(mask)).shape[0]
    config, text = model.config, lambda n: [int(i) for i in rng.integers(3, TINY_VOCAB, n)]
    ids = ([2] + text(20) + [config.image_token_id] * sum(counts) + text(300)
           + [config.audio_token_id] * audio_tokens + text(600))
    logits = model(mx.array([ids]), pixel_values=mx.array(pixel_values), image_position_ids=mx.array(position_ids),
                   input_features=mx.array(features), input_features_mask=mx.array(mask))
    return np.array(logits.astype(mx.float32))


def test_multimodal_float_conversion_is_lossless_and_keeps_companion_files(multimodal):
    source, float_out = multimodal
    source_model = load_model(source)
    expected = _parameters(source_model)
    got = _tensors(float_out)
    assert sorted(got) == sorted(expected)
    for name, value in got.items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    for name in MULTIMODAL_COMPANIONS:
        assert (float_out / name).read_text() == MULTIMODAL_COMPANIONS[name]
    # images and audio through the towers: the converted model gives the source's logits
    assert np.abs(_multimodal_logits(load_model(float_out)) - _multimodal_logits(source_model)).max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 8])
def test_multimodal_quantization_keeps_float_parts_and_beats_mlx_lm(multimodal, bits, tmp_path):
    """Towers quantized, their convolutions/positions/clip bounds kept float; KL and top-1 against the float
    model on an image+audio prompt at least as good as mlx-lm's quantization of the same weights."""
    _, float_out = multimodal
    out = convert_checkpoint(float_out, tmp_path / f"q{bits}", bits=bits, group_size=32, dtype="float32")
    tensors = _tensors(out)
    quantized = {k[: -len(".scales")] for k in tensors if k.endswith(".scales")}
    assert "model.vision_tower.encoder.layers.0.self_attn.q_proj.linear" in quantized
    assert "model.audio_tower.layers.0.feed_forward1.ffw_layer_1.linear" in quantized
    assert "model.language_model.embed_tokens_per_layer" in quantized  # the big PLE table
    kept_float = ["model.vision_tower.patch_embedder.position_embedding_table",
                  "model.audio_tower.layers.0.lconv1d.depthwise_conv1d.weight",
                  "model.audio_tower.layers.0.feed_forward1.ffw_layer_1.input_max",
                  "model.audio_tower.layers.0.self_attn.per_dim_scale"]
    for name in kept_float:
        assert tensors[name].dtype == np.float32, name
    for name in MULTIMODAL_COMPANIONS:
        assert (out / name).exists()
    expected = _multimodal_logits(load_model(float_out))
    ours = quality(expected, _multimodal_logits(load_model(out)))
    theirs = quality(expected, _multimodal_logits(mlx_lm_quantized(float_out, bits, 32)))
    row = (f"multimodal e2b {bits}-bit g32: ours KL {ours['kl']:.5f} top-1 {ours['top1']:.4f} | "
           f"mlx-lm KL {theirs['kl']:.5f} top-1 {theirs['top1']:.4f}")
    print("\n" + row)
    assert ours["kl"] <= theirs["kl"] and ours["top1"] >= theirs["top1"], row


def test_output_is_sharded_with_a_consistent_index(checkpoints, tmp_path):
    _, source, _ = checkpoints["e2b"]
    out = convert_checkpoint(source, tmp_path / "sharded", quantize=False, dtype="float32",
                             max_shard_bytes=200_000)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(shards) > 1 and sorted(set(index.values())) == shards
    assert all(name in load_file(str(out / file)) for name, file in index.items())
    load_model(out)


def test_progress_reports_every_stage_in_order(checkpoints, tmp_path):
    _, source, _ = checkpoints["31b"]
    reports = []
    convert_checkpoint(source, tmp_path / "out", progress=reports.append)
    stages = [r.stage for r in reports]
    assert stages[0] == "convert" and stages[-1] == "done" and "finalize" in stages
    fractions = [r.fraction for r in reports if r.stage == "convert"]
    assert fractions == sorted(fractions) and fractions[-1] > 0.9
    assert all(0.0 <= r.fraction <= 1.0 for r in reports)


# --- failures: each names the file or tensor, and nothing is left behind ---------------------------

def test_destination_exists_needs_force(checkpoints, tmp_path):
    _, source, _ = checkpoints["31b"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")
    with pytest.raises(DestinationExistsError, match="--force"):
        convert_checkpoint(source, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").exists()
    convert_checkpoint(source, tmp_path / "out", force=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _copy_source(source, target):
    import shutil

    shutil.copytree(source, target)
    return target


def test_index_naming_a_missing_shard(checkpoints, tmp_path):
    source = _copy_source(checkpoints["31b"][1], tmp_path / "src")
    victim = sorted(source.glob("*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointIndexError, match=victim.name):
        convert_checkpoint(source, tmp_path / "out")
    assert _nothing_left(tmp_path, "out")


def test_truncated_shard_is_named(checkpoints, tmp_path):
    source = _copy_source(checkpoints["31b"][1], tmp_path / "src")
    victim = sorted(source.glob("*.safetensors"))[0]
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(CheckpointIndexError, match=f"{victim.name} is truncated"):
        convert_checkpoint(source, tmp_path / "out")


def test_index_disagreeing_with_shards(checkpoints, tmp_path):
    source = _copy_source(checkpoints["31b"][1], tmp_path / "src")
    index_path = source / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = "model.norm.weight"
    index["weight_map"][name] = next(f for f in sorted(set(index["weight_map"].values()))
                                     if f != index["weight_map"][name])
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointIndexError, match="model.norm.weight|places"):
        convert_checkpoint(source, tmp_path / "out")


def _rewrite_shard_holding(source, tensor: str, change):
    from safetensors.numpy import save_file

    index_path = source / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = source / index["weight_map"][tensor]
    tensors = load_file(str(shard))
    change(tensors)
    save_file(tensors, str(shard))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k in tensors or v != shard.name}
    index["weight_map"].update({k: shard.name for k in tensors})
    index_path.write_text(json.dumps(index))
    return shard


def test_missing_tensor_is_named(checkpoints, tmp_path):
    source = _copy_source(checkpoints["31b"][1], tmp_path / "src")
    name = "model.layers.2.mlp.up_proj.weight"
    _rewrite_shard_holding(source, name, lambda t: t.pop(name))
    with pytest.raises(MissingTensorError, match="model.language_model.layers.2.mlp.up_proj.weight"):
        convert_checkpoint(source, tmp_path / "out")
    assert _nothing_left(tmp_path, "out")


def test_unexpected_tensor_is_named_with_its_file(checkpoints, tmp_path):
    source = _copy_source(checkpoints["31b"][1], tmp_path / "src")
    name = "model.norm.weight"
    shard = _rewrite_shard_holding(source, name, lambda t: t.update({"model.mystery.weight": np.ones(3, np.float32)}))
    with pytest.raises(UnexpectedTensorError, match=rf"model\.mystery\.weight \(in {shard.name}\)"):
        convert_checkpoint(source, tmp_path / "out")
    assert _nothing_left(tmp_path, "out")


def test_shape_mismatch_is_named(checkpoints, tmp_path):
    source = _copy_source(checkpoints["31b"][1], tmp_path / "src")
    name = "model.layers.1.self_attn.o_proj.weight"
    shard = _rewrite_shard_holding(source, name, lambda t: t.update({name: t[name][:, :-8].copy()}))
    with pytest.raises(ShapeMismatchError, match=rf"{shard.name}: tensor model.language_model.layers.1.self_attn.o_proj"):
        convert_checkpoint(source, tmp_path / "out")
    assert _nothing_left(tmp_path, "out")


def test_cancel_leaves_nothing(checkpoints, tmp_path):
    _, source, _ = checkpoints["26b"]
    cancel = threading.Event()
    seen = []

    def progress(report):
        seen.append(report)
        if report.stage == "convert" and len(seen) > 5:
            cancel.set()

    with pytest.raises(ConversionCancelled):
        convert_checkpoint(source, tmp_path / "out", progress=progress, cancel=cancel)
    assert _nothing_left(tmp_path, "out") and list(tmp_path.iterdir()) == []


def test_write_failure_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    import convert.writer

    _, source, _ = checkpoints["e4b"]
    calls = []

    def failing_save(path, arrays, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return mx.save_safetensors(path, arrays, metadata=metadata)

    monkeypatch.setattr(convert.writer, "mx", _ProxyMx(failing_save))
    with pytest.raises(WriteError, match="No space left"):
        convert_checkpoint(source, tmp_path / "out", quantize=False, max_shard_bytes=100_000)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


class _ProxyMx:
    """mlx.core with save_safetensors replaced."""

    def __init__(self, save):
        self.save_safetensors = save

    def __getattr__(self, name):
        return getattr(mx, name)


def test_bad_sources_are_explained(tmp_path):
    with pytest.raises(SourceNotFoundError, match="does not exist"):
        convert_checkpoint(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedSourceError, match="neither a GGUF"):
        convert_checkpoint(tmp_path / "notes.txt", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnsupportedSourceError, match="no config.json"):
        convert_checkpoint(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "llama" / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(UnsupportedSourceError, match="llama"):
        convert_checkpoint(tmp_path / "llama", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_command_line(checkpoints, tmp_path, capsys):
    _, source, _ = checkpoints["31b"]
    assert cli_main([str(source), str(tmp_path / "out"), "--bits", "8", "--group-size", "32"]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization"]["bits"] == 8 and config["quantization"]["group_size"] == 32
    assert cli_main([str(source), str(tmp_path / "out")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli_main([str(source), str(tmp_path / "out"), "--no-quantize", "--dtype", "float16", "--force"]) == 0
    assert load_file(str(tmp_path / "out" / "model.safetensors"))["model.language_model.norm.weight"].dtype == np.float16
