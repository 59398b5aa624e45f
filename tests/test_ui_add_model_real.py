"""Adding a model through the window with the real engine (MlxBackend, our converter and loader): a tiny
Gemma 4 checkpoint dropped on the window, the same checkpoint in Hugging Face's cache layout (symlinks into
blobs) converted from the model manager, a GGUF file opened on the Dock icon, and the starter model built on
first start with its progress reported through the engine."""

from __future__ import annotations

import shutil

import pytest
from PySide6.QtCore import QCoreApplication
from PySide6.QtGui import QFileOpenEvent, QGuiApplication

from gemma4_mac.engine import MlxBackend
from gemma4_mac.hotkey_backends import ManualHotkeyBackend
from gemma4_mac.settings import AppSettings
from tests.model_files import hub_repo
from tests.reference_models import build_gemma4
from tests.test_convert_support import QUANT_FRIENDLY, write_gemma4_gguf
from tests.test_ui_add_model import drop, home, make  # noqa: F401  (fixtures)
from ui.tray import install_menu_bar

pytestmark = pytest.mark.slow
CONVERT_TIMEOUT = 240_000  # the model thread imports MLX and transformers first: slow on a busy 2-core CPU


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny complete Gemma 4 checkpoint (transformers' save_pretrained, a tokenizer and a chat template) and
    the torch model, for the GGUF."""
    folder = tmp_path_factory.mktemp("tiny") / "gemma-4-tiny-it"
    model = build_gemma4("e2b", folder, **QUANT_FRIENDLY)
    return folder, model


def files_of(folder):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def ready(h, qtbot, path) -> dict:
    """Wait for `path` to be the loaded model (or for a failure, shown in the banner)."""
    def settled() -> bool:
        loaded = (h.controller.model_info or {}).get("path") == str(path)
        return loaded or h.controller.model_state == "error" or h.window.banner.property("level") == "error"

    qtbot.waitUntil(settled, timeout=CONVERT_TIMEOUT)
    assert h.controller.model_state == "ready", h.window.banner.label.text()
    return h.controller.model_info


def test_a_dropped_checkpoint_is_converted_for_real_and_answers(make, qtbot, home, tiny):
    source, _ = tiny
    dropped = home / "Downloads" / source.name
    shutil.copytree(source, dropped)
    before = files_of(dropped)
    h = make(backend=MlxBackend(), load=False, settings=AppSettings(max_tokens=4, temperature=0.0))
    reports = []
    h.engine.conversionProgress.connect(lambda report: reports.append(
        (report["stage"], report["fraction"], h.window.sidebar.progress_label.text())))
    assert drop(h.window, dropped) == "Drop to add this model"
    destination = h.home / "models" / "gemma-4-tiny-it-4bit"
    info = ready(h, qtbot, destination)
    assert info["chat"] is True and not info["is_starter"]
    stages = [stage for stage, _, _ in reports]
    assert "convert" in stages and stages[-1] == "done"
    converting = [fraction for stage, fraction, _ in reports if stage == "convert"]
    assert converting == sorted(converting) and converting[-1] > 0.95
    assert any(text.startswith("Converting gemma-4-tiny-it: converting ") and text.endswith("%")
               for _, _, text in reports)
    assert files_of(dropped) == before  # read where it lies, never changed or deleted
    assert (destination / "config.json").is_file() and h.controller.settings.model_path == str(destination)
    h.type_and_send("w5 w6")  # the converted model answers through the real engine
    answer = h.history.messages(h.controller.conversation_id)[-1]
    assert answer.role == "assistant" and answer.stats["generation_tokens"] >= 1


def test_a_checkpoint_in_the_hub_cache_converts_from_the_model_manager(make, qtbot, home, tiny):
    source, _ = tiny
    snapshot = hub_repo(home / ".cache" / "huggingface" / "hub", "google/gemma-4-tiny-it",
                        lambda target: shutil.copytree(source, target))
    assert (snapshot / "config.json").is_symlink()
    h = make(backend=MlxBackend(), load=False)
    dialog = h.controller.open_model_manager()
    qtbot.waitUntil(lambda: len(dialog.found_rows) == 1, timeout=30_000)
    row = dialog.found_rows[0]
    assert row.found.name == "google/gemma-4-tiny-it" and row.action.text() == "Convert"
    row.action.click()
    destination = h.home / "models" / "gemma-4-tiny-it-4bit"
    ready(h, qtbot, destination)
    assert dialog.progress_label.text() == f"Ready: {destination}"
    assert all(p.is_symlink() for p in snapshot.iterdir())  # the cache is left as it was


def test_a_gguf_opened_on_the_dock_icon_is_converted_for_real(make, qtbot, home, tiny):
    _, model = tiny
    gguf = write_gemma4_gguf(model, home / "gemma-4-tiny-it-F32.gguf")
    h = make(backend=MlxBackend(), load=False)
    bar = install_menu_bar(QGuiApplication.instance(), h.window, h.controller, tray_available=False,
                           hotkey_backend=ManualHotkeyBackend(), quit=lambda: None, file_open=True)
    qtbot.addWidget(bar.panel)
    try:
        QCoreApplication.sendEvent(QGuiApplication.instance(), QFileOpenEvent(str(gguf)))
        info = ready(h, qtbot, h.home / "models" / "gemma-4-tiny-it-f32-4bit")
        assert info["chat"] is True and h.questions == []  # it has a chat template: no base-model question
    finally:
        bar.uninstall()


def test_the_first_start_builds_the_starter_with_progress(make, qtbot, home, tiny, monkeypatch):
    """The starter's packaged GGUF replaced by a tiny one: the real ensure_starter path, conversion, load."""
    import convert.starter

    _, model = tiny
    monkeypatch.setattr(convert.starter, "assemble_gguf", lambda target: write_gemma4_gguf(model, target))
    h = make(backend=MlxBackend(), load=False)
    sidebar = h.window.sidebar
    seen = []
    h.engine.modelProgress.connect(lambda report: seen.append(
        (report["stage"], report["fraction"], sidebar.progress_label.text(), sidebar.progress_bar.value())))
    h.engine.load_model(None)
    qtbot.waitUntil(lambda: h.controller.model_state in ("ready", "error"), timeout=CONVERT_TIMEOUT)
    assert h.controller.model_state == "ready", h.window.banner.label.text()
    assert h.controller.model_info["is_starter"]
    assert seen[0][:3] == ("unpack", 0.0, "Preparing the starter model: unpacking…")
    converting = [(fraction, text, value) for stage, fraction, text, value in seen if stage == "convert"]
    assert len(converting) > 3 and converting[-1][0] == 1.0
    assert [f for f, _, _ in converting] == sorted(f for f, _, _ in converting)
    assert all(text == f"Preparing the starter model: converting {f:.0%}" and value == int(f * 1000)
               for f, text, value in converting)
    assert not sidebar.progress_box.isVisibleTo(h.window)
