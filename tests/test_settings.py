"""Settings: JSON round trip, and broken files that give defaults with a warning instead of a crash."""

import json

import pytest

from gemma4_mac.settings import AppSettings, load_settings, save_settings


def test_missing_file_gives_defaults_silently(tmp_path):
    settings, warnings = load_settings(tmp_path / "settings.json")
    assert settings == AppSettings() and warnings == []


def test_round_trip(tmp_path):
    path = tmp_path / "settings.json"
    original = AppSettings(model_path="/models/e2b", system_prompt="Be brief.", thinking=True, temperature=0.3,
                           top_p=0.9, max_tokens=512, context_size=16384, kv_precision=8, image_token_budget=560,
                           theme="dark")
    save_settings(original, path)
    loaded, warnings = load_settings(path)
    assert loaded == original and warnings == []
    assert json.loads(path.read_text())["kv_precision"] == 8
    assert loaded.kv_bits == 8 and AppSettings().kv_bits is None
    assert loaded.sampling_kwargs() == {"temperature": 0.3, "top_p": 0.9, "top_k": 64, "max_tokens": 512,
                                      "draft": "auto"}


def test_unreadable_json_gives_defaults_and_a_warning(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text("{not json")
    settings, warnings = load_settings(path)
    assert settings == AppSettings()
    assert len(warnings) == 1 and str(path) in warnings[0] and "default" in warnings[0]


def test_bad_values_fall_back_per_field(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"temperature": "hot", "top_p": 0.5, "kv_precision": 3, "thinking": 1,
                                "max_tokens": 0, "colour": "blue", "context_size": 100}))
    settings, warnings = load_settings(path)
    assert settings.top_p == 0.5  # the good value is kept
    assert settings.temperature == AppSettings().temperature
    assert settings.kv_precision == 16 and settings.thinking is False and settings.max_tokens == 2048
    assert settings.context_size == 0
    joined = "\n".join(warnings)
    for key in ("temperature", "kv_precision", "thinking", "max_tokens", "colour", "context_size"):
        assert key in joined


def test_non_object_json(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text("[1, 2]")
    settings, warnings = load_settings(path)
    assert settings == AppSettings() and "JSON object" in warnings[0]


def test_invalid_settings_are_not_saved(tmp_path):
    path = tmp_path / "settings.json"
    save_settings(AppSettings(temperature=0.5), path)
    with pytest.raises(ValueError, match="temperature"):
        save_settings(AppSettings(temperature=9.0), path)
    assert load_settings(path)[0].temperature == 0.5  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]  # no temporary left behind


def test_default_location_follows_the_home_override(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA4_MAC_HOME", str(tmp_path / "home"))
    save_settings(AppSettings(thinking=True))
    assert (tmp_path / "home" / "settings.json").is_file()
    assert load_settings()[0].thinking is True
