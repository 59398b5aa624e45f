"""The model manager's verdict for a model too large for this Mac: on how many Macs like it it fits split."""

from __future__ import annotations

import json

from gemma4_mac import model_manager
from gemma4_mac.model_manager import GIB, HUB_MODELS, hub_fit
from mlx_model.planner import VARIANT_CONFIGS

THIRTY_ONE_B = next(m for m in HUB_MODELS if m.variant == "31B")


def _folder(path, text_config: dict, size: int):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "gemma4", "text_config": text_config}))
    with open(path / "model.safetensors", "wb") as f:
        f.truncate(size)  # sparse: the fit reads the size only
    return path


def test_a_variant_too_large_for_a_16_gb_mac_fits_on_two_like_it():
    fit = hub_fit(THIRTY_ONE_B, 16 * GIB)
    assert not fit.fits and fit.required_bytes > 12 * GIB
    assert fit.split_macs == 2
    # half the text weights plus the embeddings, towers and allowance whole on each: within the 12 GiB usable
    assert 9 * GIB < fit.split_bytes <= 12 * GIB
    assert fit.split_summary == "Too large for this Mac · fits on 2 Macs like it (docs/distributed.md)"
    assert "Split across 2 Macs of 16 GB" in fit.split_detail and "GiB on each" in fit.split_detail


def test_the_fewest_macs_the_split_can_use_and_none_when_even_four_are_too_small():
    twenty_six = next(m for m in HUB_MODELS if m.variant == "26B-A4B")
    assert hub_fit(twenty_six, 8 * GIB).split_macs == 4  # 2 too few; 3 divides neither 16 heads nor 8 KV heads
    too_small = hub_fit(THIRTY_ONE_B, 8 * GIB)
    assert not too_small.fits and too_small.split_macs is None and too_small.split_summary == ""
    fits = hub_fit(THIRTY_ONE_B, 64 * GIB)
    assert fits.fits and fits.split_summary == "" and fits.split_detail == ""


def test_a_folder_on_disk_gets_the_split_verdict_from_its_config_and_file_sizes(tmp_path):
    text = {**VARIANT_CONFIGS["31B"], "max_position_embeddings": 262_144}
    folder = _folder(tmp_path / "big", text, 19 * GIB)
    fit = model_manager.estimate_fit(folder, 16 * GIB)
    assert not fit.fits and fit.split_macs == 2 and fit.split_bytes <= 12 * GIB
    assert "fits on 2 Macs like it" in model_manager.describe(folder, 16 * GIB).fit.split_summary
    # a folder whose config the planner cannot read gets the plain verdict, never an error
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"gemma4_mac": {"display_name": "Odd"}}))
    with open(odd / "model.safetensors", "wb") as f:
        f.truncate(19 * GIB)
    plain = model_manager.estimate_fit(odd, 16 * GIB)
    assert not plain.fits and plain.split_macs is None and plain.split_summary == ""
