"""The quality gate (convert/quality.py) on tiny random checkpoints: refusing a broken conversion and leaving
nothing behind, quality.json written and shown, and the layer-by-layer measurement equal to running the
whole models (text, image and audio inputs; KV sharing, PLE, towers; GGUF and folder sources).

Random weights give near-uniform predictions (no "decisive" positions), so these tests set the KL threshold
explicitly; the defaults were set on the real Gemma 3 270M (scripts/bench_quant_quality.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mlx.core as mx

from convert import convert_checkpoint
from convert.quality import QualityGateError, QualityThresholds, gate_rows, measure
from convert.streamed import float_skeleton, read_config
from convert.weights import FolderWeights
from gemma4_mac.model_manager import describe
from mlx_model import load_model
from tests.test_convert_support import (QUANT_FRIENDLY, build_multimodal_checkpoint, build_text_checkpoint,
                                        write_gemma4_gguf)

STRICT = QualityThresholds(max_kl=0.25)  # tiny random models: 4-bit recipe ~0.05-0.09, 2-bit ~0.5-0.6


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    build_multimodal_checkpoint(root / "src")
    return root


def _nothing_left(parent, name: str) -> bool:
    return not (parent / name).exists() and not [p for p in parent.iterdir() if p.name.startswith(f".{name}")]


def test_broken_conversion_is_refused_and_nothing_is_left(multimodal, tmp_path):
    with pytest.raises(QualityGateError, match="8 bits") as refused:
        convert_checkpoint(multimodal / "src", tmp_path / "broken", bits=2, uniform=True, group_size=32,
                           dtype="float32", quality_thresholds=STRICT)
    assert _nothing_left(tmp_path, "broken") and list(tmp_path.iterdir()) == []
    report = refused.value.report
    assert not report["passed"] and set(report["inputs"]) == {"text", "image", "audio"}
    assert all(row["mean_kl"] > STRICT.max_kl for row in report["inputs"].values())
    assert "mean KL divergence" in str(refused.value)


def test_recipe_passes_and_quality_json_is_shown(multimodal, tmp_path):
    reports = []
    out = convert_checkpoint(multimodal / "src", tmp_path / "models" / "tiny", bits=4, group_size=32,
                             dtype="float32", quality_thresholds=STRICT, progress=reports.append)
    quality = json.loads((out / "quality.json").read_text())
    assert quality["passed"] and quality["settings"]["recipe"] == "gemma4"
    assert quality["thresholds"]["max_kl"] == STRICT.max_kl
    for kind, least in (("text", 300), ("image", 15), ("audio", 15)):  # the description after a picture/clip
        row = quality["inputs"][kind]
        assert row["positions"] >= least and 0.0 <= row["mean_kl"] < STRICT.max_kl
    stages = [r.stage for r in reports]
    assert stages.index("quality") > stages.index("finalize") and stages[-1] == "done"
    entry = describe(out)
    assert entry.quality_summary.startswith("same top token as the source")
    assert "image and audio" in entry.quality_summary


def test_model_dialog_shows_the_quality_line(multimodal, tmp_path, qtbot):
    from ui.model_dialog import ModelRow

    out = convert_checkpoint(multimodal / "src", tmp_path / "tiny", bits=8, group_size=32, dtype="float32")
    row = ModelRow(describe(out), in_use=False, deletable=True)
    qtbot.addWidget(row)
    assert row.quality.text() == describe(out).quality_summary and not row.quality.isHidden()
    unchecked = convert_checkpoint(multimodal / "src", tmp_path / "unchecked", bits=8, group_size=32,
                                   dtype="float32", skip_quality_check=True)
    row = ModelRow(describe(unchecked), in_use=False, deletable=True)
    qtbot.addWidget(row)
    assert row.quality.isHidden()


def _whole_model_figures(source, converted, rows) -> dict:
    """KL and top-1 agreement per kind from both models loaded whole and run as the app runs them."""
    from mlx_model.image_processor import mm_token_type_ids

    reference, candidate = load_model(source), load_model(converted)
    sums: dict[str, list] = {}
    for row in rows:
        kwargs = {}
        if row.kind == "image":
            pixels, positions = (mx.array(v) for v in row.media.values())
            kwargs = {"pixel_values": pixels, "image_position_ids": positions}
        elif row.kind == "audio":
            features, mask = (mx.array(v) for v in row.media.values())
            kwargs = {"input_features": features, "input_features_mask": mask}
        ids = mx.array(row.ids[None])
        types = mx.array(mm_token_type_ids(row.ids[None], reference.config.image_token_id,
                                           reference.config.video_token_id, reference.config.audio_token_id))
        logits = [np.array(model(ids, mm_token_type_ids=types, **kwargs)[0].astype(mx.float32), dtype=np.float64)
                  for model in (reference, candidate)]
        ref, got = (z[row.scored] - np.logaddexp.reduce(z[row.scored], axis=-1, keepdims=True) for z in logits)
        kl = np.sum(np.exp(ref) * (ref - got), axis=-1)
        agree = ref.argmax(-1) == got.argmax(-1)
        sums.setdefault(row.kind, []).append((kl, agree))
    return {kind: (np.concatenate([k for k, _ in parts]).mean(), np.concatenate([a for _, a in parts]).mean())
            for kind, parts in sums.items()}


def test_streamed_measurement_equals_the_whole_models(multimodal, tmp_path, monkeypatch):
    """Layer by layer, tables gathered by row, head read in slices: the same figures as the loaded models;
    and the big tables are never read whole."""
    out = convert_checkpoint(multimodal / "src", tmp_path / "q", bits=4, group_size=32, dtype="float32",
                             skip_quality_check=True)
    requested = []
    original_read = FolderWeights.read

    def spying_read(self, names):
        names = list(names)
        requested.extend(names)
        return original_read(self, names)

    monkeypatch.setattr(FolderWeights, "read", spying_read)
    figures = measure(multimodal / "src", out)["inputs"]
    assert requested and not [n for n in requested if n.endswith(("embed_tokens.weight", "embed_tokens.scales",
                                                                  "embed_tokens_per_layer.weight"))]
    rows, _ = gate_rows(out, float_skeleton(read_config(out)))
    expected = _whole_model_figures(multimodal / "src", out, rows)
    for kind, (kl, top1) in expected.items():
        assert figures[kind]["mean_kl"] == pytest.approx(kl, abs=1e-4), kind
        assert figures[kind]["top1_agreement"] == pytest.approx(top1, abs=0.01), kind


def test_gguf_source_is_the_same_reference(tmp_path):
    """A GGUF source (dequantized tensor by tensor, rows read from the file) measures like the folder it came from."""
    reference = build_text_checkpoint("e2b", tmp_path / "src", overrides=QUANT_FRIENDLY)
    gguf_path = write_gemma4_gguf(reference, tmp_path / "tiny.gguf")
    out = convert_checkpoint(gguf_path, tmp_path / "from-gguf", bits=4, dtype="float32", quality_thresholds=STRICT)
    from_gguf = json.loads((out / "quality.json").read_text())["inputs"]["text"]
    assert json.loads((out / "quality.json").read_text())["tokens"] == "tokenizer"  # rebuilt from the GGUF
    from_folder = measure(tmp_path / "src", out)["inputs"]["text"]
    assert from_gguf["mean_kl"] == pytest.approx(from_folder["mean_kl"], abs=1e-5)
    assert from_gguf["top1_agreement"] == from_folder["top1_agreement"]
