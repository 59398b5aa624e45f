"""`--calibrate` (convert/calibrate.py): DWQ through mlx-lm's dwq_quantize on our model, teacher streamed from
the source, on a tiny random checkpoint. The real-weight figures are scripts/bench_quant_quality.py's."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from convert import convert_checkpoint
from convert.calibrate import calibration_sequences
from convert.quality import QualityThresholds
from mlx_model import load_model
from tests.reference_models import TINY_VOCAB
from tests.test_convert_support import QUANT_FRIENDLY, build_text_checkpoint

LENIENT = QualityThresholds(max_kl=0.5)


def _tensors(folder):
    out = {}
    for shard in folder.glob("*.safetensors"):
        out.update(load_file(str(shard)))
    return out


def test_calibration_texts_make_full_sequences(tmp_path):
    sequences = calibration_sequences(tmp_path, TINY_VOCAB, 128)  # no tokenizer here: bytes as ids
    assert len(sequences) >= 20 and {len(s) for s in sequences} == {129}
    assert all(s[0] == 2 for s in sequences)


@pytest.mark.slow
def test_calibration_lowers_kl_and_keeps_the_format(tmp_path, monkeypatch):
    import convert.calibrate as calibrate

    # a short calibration (the defaults take minutes on 2 CPU cores); the real-weight run is the benchmark's
    short = functools.partial(calibrate.CalibrationSettings, epochs=2, train_sequences=16, learning_rate=1e-4)
    monkeypatch.setattr(calibrate, "CalibrationSettings", short)
    build_text_checkpoint("e4b", tmp_path / "src", overrides=QUANT_FRIENDLY)
    reports = []
    plain = convert_checkpoint(tmp_path / "src", tmp_path / "plain", uniform=True, dtype="float32",
                               quality_thresholds=LENIENT)
    tuned = convert_checkpoint(tmp_path / "src", tmp_path / "tuned", uniform=True, calibrate=True, dtype="float32",
                               quality_thresholds=LENIENT, progress=reports.append)
    summary = json.loads((tuned / "config.json").read_text())["gemma4_mac"]["calibration"]
    assert summary["kept"] and summary["validation_kl_after"] < summary["validation_kl_before"]
    assert summary["trained_tensors"] > 0
    quality = [json.loads((folder / "quality.json").read_text())["inputs"]["text"] for folder in (plain, tuned)]
    assert quality[1]["mean_kl"] < quality[0]["mean_kl"]  # better on the quality set, which it never saw
    before, after = _tensors(plain), _tensors(tuned)
    assert sorted(before) == sorted(after)
    assert all(before[k].dtype == after[k].dtype and before[k].shape == after[k].shape for k in before)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert changed and all(k.endswith((".scales", ".biases")) for k in changed)  # the 4-bit codes are kept
    calibrating = [r for r in reports if r.stage == "calibrate"]
    assert calibrating and calibrating[-1].fraction == 1.0
    load_model(tuned)


@pytest.mark.slow
def test_quantized_kernel_path_trains_the_same_parameters(tmp_path, monkeypatch):
    """On a Mac (GPU) DWQ trains mlx-lm's QuantizedLinear directly; on the CPU through dense stand-ins. Both
    train exactly the scales and biases of the modules under 8 bits (the recipe's 8-bit embedding and
    projections stay fixed: their float stand-ins must not train), and both write the same tensors back."""
    import convert.calibrate as calibrate
    from convert.progress import Reporter

    build_text_checkpoint("31b", tmp_path / "src", overrides=QUANT_FRIENDLY)
    summaries = {}
    for dense in (True, False):
        folder = convert_checkpoint(tmp_path / "src", tmp_path / f"q{dense}", dtype="float32",
                                    skip_quality_check=True)
        monkeypatch.setattr(calibrate, "_dense_training", lambda dense=dense: dense)
        settings = calibrate.CalibrationSettings(epochs=1, learning_rate=1e-4, train_sequences=4)
        summaries[dense] = calibrate.calibrate_folder(tmp_path / "src", folder, Reporter(None, None), settings)
    assert summaries[True]["trained_tensors"] == summaries[False]["trained_tensors"] > 0
    before, after = ([summary["validation_kl_by_epoch"][epoch] for summary in summaries.values()] for epoch in (0, 1))
    assert before[0] == pytest.approx(before[1], rel=1e-4)  # the stand-ins compute the quantized function
    assert after[0] == pytest.approx(after[1], rel=1e-3)  # and train the same parameters the same way
