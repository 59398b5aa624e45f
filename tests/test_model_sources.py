"""What a dropped or chosen path is as a model (usable where it lies, converted, or refused with a reason),
and the models found in Hugging Face's cache and LM Studio's folders. Qt-free, no MLX, no weights read."""

from __future__ import annotations

import builtins
import io
from pathlib import Path

import pytest

from gemma4_mac import model_manager
from gemma4_mac.model_sources import (CHECKPOINT, GGUF, HF_CACHE, LM_STUDIO, MLX, hf_hub_cache, hub_snapshot,
                                      inspect_path, might_be_model, scan_hf_cache, scan_lm_studio,
                                      scan_other_apps)
from gemma4_mac.settings import AppSettings, from_dict, load_settings, save_settings
from tests.model_files import gguf_file, hub_repo, model_folder

GEMMA3 = {"model_type": "gemma3"}


def test_an_mlx_folder_is_used_where_it_lies_and_a_checkpoint_is_converted(tmp_path):
    mlx = inspect_path(model_folder(tmp_path / "gemma-4-e2b-it-4bit", name="Gemma 4 E2B (4-bit)"))
    assert (mlx.kind, mlx.usable, mlx.needs_conversion, mlx.problem) == (MLX, True, False, "")
    assert mlx.name == "Gemma 4 E2B (4-bit)" and mlx.size_bytes == 4096
    checkpoint = inspect_path(model_folder(tmp_path / "gemma-4-E2B-it", mlx=False, shards=2))
    assert (checkpoint.kind, checkpoint.usable, checkpoint.needs_conversion) == (CHECKPOINT, True, True)
    assert checkpoint.size_bytes == 2 * 4096


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.mkdir(), "has no config.json, so it is not a model folder"),
    (lambda p: model_folder(p, config={"model_type": "llama"}),
     "holds a llama model; this app runs Gemma 4 and Gemma 3"),
    (lambda p: model_folder(p, tokenizer=False), "lacks a tokenizer (tokenizer.json or tokenizer.model)"),
    (lambda p: model_folder(p, chat_template=False), "lacks a chat template"),
    (lambda p: model_folder(p, shards=3, drop_shard=True), "is incomplete: 1 of 3 weight files are missing"),
    (lambda p: (model_folder(p, shards=1), (p / "model.safetensors").rename(p / "pytorch_model.bin")),
     "has PyTorch .bin weights; this app reads .safetensors"),
    (lambda p: (model_folder(p), (p / "config.json").write_text("{broken")), "config.json is not valid JSON"),
    (lambda p: model_folder(p, mlx=False, config={**GEMMA3, "quantization_config": {"quant_method": "bnb"}}),
     "is quantized with bnb, which this app cannot read"),
    (lambda p: (p.mkdir(), gguf_file(p / "a-Q4_K_M.gguf"), gguf_file(p / "a-Q8_0.gguf")),
     "holds 2 GGUF files (a-Q4_K_M.gguf, a-Q8_0.gguf): add the one you want"),
])
def test_a_folder_that_is_not_a_usable_model_gets_the_reason(tmp_path, make, reason):
    folder = tmp_path / "folder"
    make(folder)
    found = inspect_path(folder)
    assert not found.usable and reason in found.problem, found.problem


def test_files_the_app_cannot_use_get_the_reason(tmp_path):
    model_folder(tmp_path / "m")
    assert "is one weights file" in inspect_path(tmp_path / "m" / "model.safetensors").problem
    assert "does not exist" in inspect_path(tmp_path / "gone").problem
    (tmp_path / "half.gguf").write_bytes(b"\0" * 64)
    assert "is not a GGUF file" in inspect_path(tmp_path / "half.gguf").problem
    split = gguf_file(tmp_path / "gemma-3-27b-it-Q4_K_M-00002-of-00003.gguf")
    assert "one of 3 parts of a split GGUF" in inspect_path(split).problem
    assert "vision projector" in inspect_path(gguf_file(tmp_path / "mmproj-gemma-3-4b.gguf")).problem
    llama = inspect_path(gguf_file(tmp_path / "llama.gguf", architecture="llama"))
    assert "is a llama model" in llama.problem
    assert "carries no vocabulary" in inspect_path(gguf_file(tmp_path / "novocab.gguf", tokens=False)).problem


def test_a_gguf_file_is_converted_and_one_without_a_chat_template_is_a_base_model(tmp_path):
    chat = inspect_path(gguf_file(tmp_path / "gemma-3-270m-it-Q8_0.gguf"))
    assert (chat.kind, chat.usable, chat.needs_conversion, chat.base_model) == (GGUF, True, True, False)
    assert chat.name == "gemma-3-270m-it-Q8_0"
    base = inspect_path(gguf_file(tmp_path / "gemma-3-270m-Q4_K_M.gguf", chat_template=None))
    assert base.usable and base.base_model
    folder = tmp_path / "lm" / "gemma-3-270m"
    folder.mkdir(parents=True)
    gguf_file(folder / "gemma-3-270m-it-Q4_K_M.gguf")
    gguf_file(folder / "mmproj-model-f16.gguf")  # a projector beside the model is not a second model
    inside = inspect_path(folder)
    assert inside.kind == GGUF and inside.path == folder / "gemma-3-270m-it-Q4_K_M.gguf" and inside.usable


def test_what_the_window_routes_to_the_model_flow(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    assert might_be_model(tmp_path) and might_be_model(tmp_path / "x.gguf")
    assert might_be_model("w.safetensors")
    assert not might_be_model(tmp_path / "notes.md") and not might_be_model(tmp_path / "photo.png")


def test_hub_cache_location_follows_huggingface_hub(tmp_path):
    home = tmp_path / "home"
    assert hf_hub_cache({}, home) == home / ".cache" / "huggingface" / "hub"
    xdg = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert hf_hub_cache(xdg, home) == tmp_path / "xdg" / "huggingface" / "hub"
    assert hf_hub_cache({"HF_HOME": str(tmp_path / "hf"), **xdg}, home) == tmp_path / "hf" / "hub"
    assert hf_hub_cache({"HF_HUB_CACHE": str(tmp_path / "c"), "HF_HOME": "/y"}, home) == tmp_path / "c"


def _hub_cache(cache: Path) -> None:
    hub_repo(cache, "google/gemma-4-E2B-it", lambda p: model_folder(p, mlx=False, shards=2))
    hub_repo(cache, "mlx-community/gemma-3-1b-it-4bit", lambda p: model_folder(p, config=GEMMA3))
    hub_repo(cache, "unsloth/gemma-3-270m-it-GGUF", lambda p: (
        p.mkdir(parents=True), gguf_file(p / "gemma-3-270m-it-Q4_K_M.gguf"),
        gguf_file(p / "gemma-3-270m-it-Q8_0.gguf"), gguf_file(p / "mmproj-F16.gguf")))
    hub_repo(cache, "google/gemma-4-E4B-it", lambda p: model_folder(p, mlx=False, shards=2, drop_shard=True))
    hub_repo(cache, "meta-llama/Llama-3.2-1B", lambda p: model_folder(p, config={"model_type": "llama"}))


def test_the_hub_cache_lists_gemma_repos_at_their_snapshot_without_reading_weights(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    _hub_cache(cache)
    # an older snapshot the ref does not point at is ignored
    hub_repo(cache, "google/gemma-4-E2B-it", lambda p: model_folder(p, mlx=False), revision="0" * 40,
             ref=False)
    real_open = io.open

    def guarded_open(file, *args, **kwargs):
        if str(file).endswith((".safetensors", ".gguf")):
            raise AssertionError(f"the scan read {file}")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(builtins, "open", guarded_open)
    found = {f.name: f for f in scan_hf_cache(cache)}
    monkeypatch.undo()
    assert set(found) == {"google/gemma-4-E2B-it", "mlx-community/gemma-3-1b-it-4bit",
                          "google/gemma-4-E4B-it",
                          "unsloth/gemma-3-270m-it-GGUF · gemma-3-270m-it-Q4_K_M.gguf",
                          "unsloth/gemma-3-270m-it-GGUF · gemma-3-270m-it-Q8_0.gguf"}
    assert all(f.origin == HF_CACHE for f in found.values())
    e2b = found["google/gemma-4-E2B-it"]
    assert e2b.kind == CHECKPOINT and e2b.usable and e2b.path.parent.name == "snapshots"
    assert e2b.path.name != "0" * 40 and e2b.size_bytes == 2 * 4096  # sizes through the symlinks, of blobs
    mlx = found["mlx-community/gemma-3-1b-it-4bit"]
    assert mlx.kind == MLX and mlx.usable
    assert "1 of 2 weight files are missing" in found["google/gemma-4-E4B-it"].problem
    gguf = found["unsloth/gemma-3-270m-it-GGUF · gemma-3-270m-it-Q8_0.gguf"]
    assert gguf.kind == GGUF and gguf.path.is_symlink() and gguf.size_bytes > 0
    # a repo folder dropped as is: its current snapshot
    dropped = inspect_path(cache / "models--google--gemma-4-E2B-it")
    assert dropped.path == e2b.path and dropped.name == "google/gemma-4-E2B-it" and dropped.usable


def test_a_repo_without_refs_uses_its_newest_snapshot(tmp_path):
    snapshot = hub_repo(tmp_path, "google/gemma-3-1b-it", lambda p: model_folder(p, mlx=False), ref=False)
    assert hub_snapshot(tmp_path / "models--google--gemma-3-1b-it") == snapshot
    (tmp_path / "models--google--gemma-3-4b-it" / "snapshots").mkdir(parents=True)
    assert "holds no downloaded files" in inspect_path(tmp_path / "models--google--gemma-3-4b-it").problem


def test_lm_studio_folders_old_and_new(tmp_path):
    home = tmp_path / "home"
    new = home / ".lmstudio" / "models"
    gguf_file(new / "lmstudio-community" / "gemma-3-270m-it-GGUF" / "gemma-3-270m-it-Q4_K_M.gguf")
    model_folder(new / "mlx-community" / "gemma-3-1b-it-qat-4bit", config={"model_type": "gemma3_text"})
    gguf_file(new / "lmstudio-community" / "Qwen3-4B-GGUF" / "Qwen3-4B-Q4_K_M.gguf")  # not Gemma: not listed
    old = home / ".cache" / "lm-studio" / "models"
    gguf_file(old / "bartowski" / "gemma-2-2b-it-GGUF" / "gemma-2-2b-it-Q4_K_M.gguf", architecture="gemma2")
    found = {f.name: f for f in scan_lm_studio(new)}
    assert set(found) == {"lmstudio-community/gemma-3-270m-it-GGUF", "mlx-community/gemma-3-1b-it-qat-4bit"}
    assert found["mlx-community/gemma-3-1b-it-qat-4bit"].kind == MLX
    assert all(f.origin == LM_STUDIO for f in found.values())
    everything = scan_other_apps(environ={}, home=home)
    assert {f.name for f in everything} == set(found) | {"bartowski/gemma-2-2b-it-GGUF"}
    # the scan lists by name; inspecting the file reads its header and finds Gemma 2 is not supported
    old_one = next(f for f in everything if f.name == "bartowski/gemma-2-2b-it-GGUF")
    assert "is a gemma2 model" in inspect_path(old_one.path).problem


def test_other_apps_scan_honours_the_hub_variables_and_missing_folders(tmp_path):
    home = tmp_path / "home"
    assert scan_other_apps(environ={}, home=home) == []
    _hub_cache(tmp_path / "elsewhere" / "hub")
    found = scan_other_apps(environ={"HF_HOME": str(tmp_path / "elsewhere")}, home=home)
    assert "google/gemma-4-E2B-it" in {f.name for f in found}
    assert scan_other_apps(environ={"HF_HUB_CACHE": str(tmp_path / "nothing")}, home=home) == []


def test_added_models_persist_in_the_settings_and_bad_values_are_refused(tmp_path):
    path = tmp_path / "settings.json"
    save_settings(AppSettings(added_models=["/Users/me/Models/gemma-4-e2b-4bit"]), path)
    loaded, warnings = load_settings(path)
    assert loaded.added_models == ["/Users/me/Models/gemma-4-e2b-4bit"] and warnings == []
    for bad in ("/one/path", ["/a", "/a"], ["/a", 3], [""]):
        settings, warnings = from_dict({"added_models": bad})
        assert settings.added_models == [] and "added_models must be a list of folder paths" in warnings[0]
    with pytest.raises(ValueError, match="added_models"):
        save_settings(AppSettings(added_models=["/a", "/a"]), path)


def test_sizes_show_megabytes_below_a_gigabyte():
    assert model_manager.format_size(310 * 1024 ** 2) == "310 MB"
    assert model_manager.format_size(3.4 * 1024 ** 3) == "3.4 GB"
    assert model_manager.format_size(1023.8 * 1024 ** 2) == "1.0 GB"
    assert model_manager.format_size(20 * 1024) == "20 KB" and model_manager.format_size(16) == "16 bytes"
    fit = model_manager.MemoryFit(600 * 1024 ** 2, 16 * 1024 ** 3, True)
    assert fit.summary == "needs ≈600 MB of 16 GB · fits"


def test_conversion_destinations_are_free_and_a_second_add_reuses_the_first_conversion(tmp_path):
    root = tmp_path / "models"
    first = model_manager.conversion_destination("gemma-3-270m-it-Q8_0.gguf", root=root)
    assert first == root / "gemma-3-270m-it-q8_0-4bit"
    model_folder(first, config={**GEMMA3, "gemma4_mac": {"source": "/x/m.gguf"}}, mlx=False)
    assert model_manager.conversion_destination("gemma-3-270m-it-Q8_0.gguf", root=root) == \
        root / "gemma-3-270m-it-q8_0-4bit-2"
    assert model_manager.converted_from("/x/m.gguf", root) == first
    assert model_manager.converted_from("/x/other.gguf", root) is None


def test_a_hub_snapshot_chosen_directly_is_named_after_its_repo(tmp_path):
    snapshot = hub_repo(tmp_path, "google/gemma-4-E2B-it", lambda p: model_folder(p, mlx=False))
    found = inspect_path(snapshot)
    assert (found.name, found.origin, found.usable) == ("google/gemma-4-E2B-it", HF_CACHE, True)
    gguf = hub_repo(tmp_path, "unsloth/gemma-3-270m-it-GGUF",
                    lambda p: (p.mkdir(parents=True), gguf_file(p / "g-Q8_0.gguf")))
    assert inspect_path(gguf / "g-Q8_0.gguf").name == "g-Q8_0"
