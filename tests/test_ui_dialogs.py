"""Settings and model manager dialogs: values persist, models show size and fit, downloads report progress."""

from __future__ import annotations

import json

from gemma4_mac.fake_backend import FakeBackend
from gemma4_mac.settings import load_settings
from tests.ui_support import TIMEOUT, harness, harness_factory  # noqa: F401
from ui.model_dialog import ModelRow


def _model(folder, name, size, chat=True):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"gemma4_mac": {"display_name": name}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"} if chat else {}))
    with open(folder / "model.safetensors", "wb") as f:
        f.truncate(size)


def test_settings_dialog_persists_every_field(harness, qtbot):
    _model(harness.home / "models" / "e2b", "Gemma 4 E2B", 1000)
    dialog = harness.controller.open_settings()
    assert dialog.isVisible()
    dialog.system_prompt.setPlainText("Answer in French.")
    dialog.thinking.setChecked(True)
    dialog.temperature.setValue(0.4)
    dialog.top_p.setValue(0.8)
    dialog.max_tokens.setValue(1024)
    dialog.context.setCurrentIndex(dialog.context.findData(32768))
    dialog.kv.setCurrentIndex(dialog.kv.findData(8))
    dialog.image_budget.setCurrentIndex(dialog.image_budget.findData(1120))
    dialog.draft.setCurrentIndex(dialog.draft.findData("lookup"))
    dialog.model_combo.setCurrentIndex(dialog.model_combo.findData(str(harness.home / "models" / "e2b")))
    dialog.hotkey.setText("ctrl+shift+g")
    dialog.menu_bar_only.setChecked(True)
    with qtbot.waitSignal(harness.engine.modelLoaded, timeout=TIMEOUT):
        dialog.accept()
    saved, warnings = load_settings(harness.home / "settings.json")
    assert warnings == []
    assert (saved.system_prompt, saved.thinking, saved.temperature, saved.top_p, saved.max_tokens) == \
        ("Answer in French.", True, 0.4, 0.8, 1024)
    assert (saved.context_size, saved.kv_precision, saved.image_token_budget) == (32768, 8, 1120)
    assert saved.draft == "lookup"
    assert saved.model_path == str(harness.home / "models" / "e2b")
    assert (saved.hotkey, saved.menu_bar_only) == ("ctrl+shift+g", True)
    assert harness.window.composer.think_button.isChecked()
    harness.type_and_send("Bonjour")
    request = harness.backend.requests[-1]
    assert request.messages[0] == {"role": "system", "content": "Answer in French."}
    assert request.sampling == {"temperature": 0.4, "top_p": 0.8, "top_k": 64, "max_tokens": 1024,
                                "draft": "lookup"}
    assert request.kv_bits == 8 and request.image_token_budget == 1120 and request.enable_thinking
    assert harness.window.composer.token_label.text().endswith("/ 32.8K tokens")


def test_cancelled_settings_change_nothing(harness):
    dialog = harness.controller.open_settings()
    dialog.temperature.setValue(1.7)
    dialog.reject()
    assert harness.controller.settings.temperature == 1.0
    assert not (harness.home / "settings.json").exists()


def test_model_manager_lists_models_with_size_and_fit(harness, qtbot):
    root = harness.home / "models"
    _model(root / "small", "Small model", 2 * 1024 ** 3)
    _model(root / "huge", "Huge model", 4096 * 1024 ** 3)
    _model(root / "base", "Base model", 1024, chat=False)
    dialog = harness.controller.open_model_manager()
    rows = {row.entry.name: row for row in dialog.rows if isinstance(row, ModelRow)}
    assert set(rows) == {"Small model", "Huge model", "Base model"}
    assert "2.0 GB on disk" in rows["Small model"].facts.text() and "fits" in rows["Small model"].facts.text()
    assert "too large" in rows["Huge model"].facts.text()
    assert rows["Base model"].facts.text().startswith("Base model (continues text)")
    with qtbot.waitSignal(harness.engine.modelLoaded, timeout=TIMEOUT):
        rows["Small model"].use_button.click()
    assert harness.controller.settings.model_path == str(root / "small")
    rows = {row.entry.name: row for row in dialog.rows if isinstance(row, ModelRow)}
    assert rows["Small model"].use_button.text() == "In use"
    rows["Huge model"].delete_button.click()
    assert not (root / "huge").exists()
    assert "Huge model" not in {row.entry.name for row in dialog.rows if isinstance(row, ModelRow)}


def test_download_and_convert_with_progress_and_cancel(harness_factory, qtbot):
    h = harness_factory(backend=FakeBackend(token_delay=0.01))
    dialog = h.controller.open_model_manager()
    progress = []
    h.engine.conversionProgress.connect(lambda report: progress.append(dialog.progress.value()))
    with qtbot.waitSignal(h.engine.conversionFinished, timeout=TIMEOUT) as done:
        dialog.download_button.click()
        assert not dialog.download_button.isEnabled() and dialog.cancel_button.isVisibleTo(dialog)
    assert progress == sorted(progress) and dialog.progress_label.text().startswith("Ready")
    repo, destination = h.backend.conversions[0]
    assert repo == dialog.hub_combo.currentData() and str(destination) == done.args[0]
    assert any(row.entry.path == destination for row in dialog.rows if isinstance(row, ModelRow))
    with qtbot.waitSignal(h.engine.conversionFailed, timeout=TIMEOUT):
        dialog.hub_combo.setCurrentIndex(3)
        dialog.download_button.click()
        dialog.cancel_button.click()
    assert "cancelled" in dialog.progress_label.text() and dialog.download_button.isEnabled()


def test_download_progress_shows_the_file_and_the_bytes(harness):
    dialog = harness.controller.open_model_manager()
    dialog.set_progress({"stage": "download", "fraction": 0.42, "message": "Downloading model-00001-of-00004.safetensors",
                         "item": "model-00001-of-00004.safetensors", "done": 4_200_000_000, "total": 10_000_000_000})
    assert dialog.progress.value() == 420
    assert dialog.progress_label.text() == "Downloading · 42% · model-00001-of-00004.safetensors · 4.2 of 10.0 GB"
