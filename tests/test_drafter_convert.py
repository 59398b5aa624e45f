"""A model's MTP drafter through the converter (convert/drafter.py) and the loader: converted beside the
model, quantized like it, recorded in its config.json, loaded with it, used by `--draft mtp`; a drafter of
another model is refused before anything is written; the model manager knows which drafter belongs to a hub
model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convert import UnsupportedSourceError, convert_checkpoint
from convert.drafter import convert_drafter
from gemma4_mac.bench_speculative import bandwidth_bound_session
from gemma4_mac.generate import SamplingSettings, run_prompt
from gemma4_mac.model_manager import drafter_repo, weight_bytes
from gemma4_mac.prompt import PreparedPrompt
from mlx_model import load
from mlx_model.assistant import attached_drafter
from tests.assistant_reference import build_drafter
from tests.reference_models import VARIANTS, build_gemma4

TARGET = dict(VARIANTS["e2b"])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("drafter-convert")
    build_gemma4("e2b", root / "target")
    build_drafter(root / "drafter", TARGET, seed=2, hidden_size=64, intermediate_size=128)
    model_dir = convert_checkpoint(root / "target", root / "model-8bit", bits=8, group_size=64,
                                   dtype="float32")
    convert_drafter(root / "drafter", model_dir)
    return root, model_dir


def test_the_drafter_is_converted_quantized_and_recorded(converted):
    root, model_dir = converted
    config = json.loads((model_dir / "config.json").read_text())
    assert config["gemma4_mac"]["drafter"] == {"folder": "drafter", "source": str(root / "drafter")}
    drafter_config = json.loads((model_dir / "drafter" / "config.json").read_text())
    assert drafter_config["model_type"] == "gemma4_assistant"
    assert drafter_config["quantization"]["bits"] == 8 and drafter_config["quantization"]["group_size"] == 64
    assert weight_bytes(model_dir) > sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))


def test_the_model_loads_with_its_drafter_and_answers_the_same(converted):
    _, model_dir = converted
    model, processor = load(model_dir)
    drafter = attached_drafter(model)
    assert drafter is not None and hasattr(drafter.pre_projection, "scales")
    prompt = PreparedPrompt([2] + [int(t) for t in np.random.default_rng(0).integers(3, 512, 30)], None,
                            parse_output=False)
    answers, stats = {}, {}
    for draft in ("off", "mtp"):
        sampling = SamplingSettings(temperature=0.0, max_tokens=24, draft=draft)
        events = list(run_prompt(model, processor, prompt, sampling, session=bandwidth_bound_session(model)))
        answers[draft], stats[draft] = "".join(e.text for e in events[:-1]), events[-1].stats
    assert answers["mtp"] == answers["off"]
    assert stats["mtp"].drafted_tokens > 0 and stats["off"].drafted_tokens == 0


def test_a_drafter_of_another_model_is_refused_and_nothing_is_recorded(converted, tmp_path):
    root, model_dir = converted
    build_drafter(tmp_path / "other", dict(TARGET, vocab_size=256, vocab_size_per_layer_input=256), seed=1)
    config_before = (model_dir / "config.json").read_text()
    with pytest.raises(UnsupportedSourceError, match="vocabulary"):
        convert_drafter(tmp_path / "other", model_dir)
    assert (model_dir / "config.json").read_text() == config_before


def test_hub_models_name_their_drafters():
    assert drafter_repo("google/gemma-4-E2B-it") == "google/gemma-4-E2B-it-assistant"
    assert drafter_repo("google/gemma-4-12B-it") == "google/gemma-4-12B-it-assistant"
    assert drafter_repo("google/gemma-3-270m") is None
    assert drafter_repo("someone/gemma-4-E2B-it") is None
