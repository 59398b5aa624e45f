"""Adding a model the person already has, in the window (scripted engine): "Add Model from Folder…" in the
model manager and the sidebar's model menu, a folder or GGUF file dropped on the window or opened on the
Dock icon, models found in Hugging Face's cache and LM Studio, added models kept across starts, a clear reason
for anything that is not a usable model, progress in the sidebar, and sizes in MB below 1 GB."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QCoreApplication, QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QFileOpenEvent, QGuiApplication

from gemma4_mac.fake_backend import FakeBackend
from gemma4_mac.hotkey_backends import ManualHotkeyBackend
from gemma4_mac.settings import AppSettings, load_settings
from tests.model_files import gguf_file, hub_repo, model_folder
from tests.ui_support import TIMEOUT, make_harness
from ui.model_dialog import FoundRow, ModelRow
from ui.tray import install_menu_bar


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home folder of the person's own: nothing from this machine's caches is listed."""
    folder = tmp_path / "person"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    for variable in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    return folder


@pytest.fixture
def make(qtbot, tmp_path, monkeypatch, home):
    made = []

    def build(**kwargs):
        h = make_harness(qtbot, tmp_path, monkeypatch, **kwargs)
        made.append(h)
        return h

    yield build
    for h in made:
        h.controller.shutdown()
        h.history.close()


def drop(window, *paths) -> str:
    """Drag `paths` over the window and drop them; returns what the drop overlay said."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    enter = QDragEnterEvent(QPoint(300, 300), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    window.dragEnterEvent(enter)
    assert enter.isAccepted()
    said = window.drop_overlay.label.text()
    window.dropEvent(QDropEvent(QPointF(300, 300), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier))
    return said


def wait_loaded(h, qtbot, path) -> None:
    qtbot.waitUntil(lambda: (h.controller.model_info or {}).get("path") == str(path), timeout=TIMEOUT)


def test_add_model_from_folder_uses_it_where_it_lies_and_keeps_it_across_starts(make, qtbot, home):
    mine = model_folder(home / "Models" / "gemma-4-e2b-it-4bit", name="Gemma 4 E2B (my conversion)")
    h = make()
    dialog = h.controller.open_model_manager()
    h.controller.choose_model_folder = lambda: str(mine)
    dialog.add_folder_button.click()
    wait_loaded(h, qtbot, mine)
    assert h.controller.settings.added_models == [str(mine)] and h.controller.settings.model_path == str(mine)
    assert not (h.home / "models").exists() or not any((h.home / "models").iterdir())  # nothing copied
    assert "nothing was copied" in dialog.notice.text()
    rows = {row.entry.name: row for row in dialog.rows if isinstance(row, ModelRow)}
    assert rows["Gemma 4 E2B (my conversion)"].use_button.text() == "In use"
    assert "Added from ~/Models · " in rows["Gemma 4 E2B (my conversion)"].facts.text()
    saved, warnings = load_settings(h.home / "settings.json")
    assert saved.added_models == [str(mine)] and warnings == []

    # the next start (settings read from disk, another model in use): still listed, in the menu too
    again = make(settings=AppSettings(added_models=saved.added_models))
    again.controller.refresh_model_menu()
    assert "Gemma 4 E2B (my conversion)" in again.window.sidebar.model_menu_texts()
    listed = again.controller.open_model_manager()
    assert any(isinstance(r, ModelRow) and r.entry.path == mine for r in listed.rows)


def test_the_sidebar_model_menu_switches_adds_and_manages(make, qtbot, home):
    h = make()
    model_folder(h.home / "models" / "gemma-4-e4b-it-4bit", name="Gemma 4 E4B instruct (4-bit)")
    h.controller.refresh_model_menu()
    texts = h.window.sidebar.model_menu_texts()
    assert texts[-3:] == ["Add Model from Folder…", "Add GGUF File…", "Manage Models…"]
    assert "Gemma 4 E4B instruct (4-bit)" in texts
    h.window.sidebar.show_model_menu()
    assert h.window.sidebar.model_menu.isVisible()
    h.window.sidebar.model_menu.hide()
    actions = h.window.sidebar.model_menu.actions()
    choice = next(a for a in actions if a.text() == "Gemma 4 E4B instruct (4-bit)")
    choice.trigger()
    wait_loaded(h, qtbot, h.home / "models" / "gemma-4-e4b-it-4bit")
    checked = [a.text() for a in h.window.sidebar.model_menu.actions() if a.isChecked()]
    assert checked == ["Gemma 4 E4B instruct (4-bit)"]
    # the same actions in the window's Model menu (the Mac's menu bar)
    assert [a.text() for a in h.window.model_menu.actions() if a.text()] == \
        ["Add Model from Folder…", "Add GGUF File…", "Manage Models…"]
    gguf = gguf_file(home / "Downloads" / "gemma-3-270m-it-Q8_0.gguf")
    h.controller.choose_model_file = lambda: str(gguf)
    with qtbot.waitSignal(h.engine.conversionFinished, timeout=TIMEOUT):
        h.window.add_file_action.trigger()
    assert h.backend.conversions[0][0] == str(gguf)
    h.window.manage_models_action.trigger()
    assert h.controller.model_dialog is not None and h.controller.model_dialog.isVisible()


def test_dropping_a_checkpoint_converts_it_with_progress_then_loads_it(make, qtbot, home):
    checkpoint = model_folder(home / "Downloads" / "gemma-4-E2B-it", mlx=False, shards=2)
    h = make(backend=FakeBackend(token_delay=0.02))
    seen = []
    h.engine.conversionProgress.connect(lambda report: seen.append(
        (h.window.sidebar.progress_box.isVisibleTo(h.window), h.window.sidebar.progress_label.text(),
         h.window.sidebar.progress_bar.value())))
    with qtbot.waitSignal(h.engine.conversionFinished, timeout=TIMEOUT) as finished:
        assert drop(h.window, checkpoint) == "Drop to add this model"
    destination = h.home / "models" / "gemma-4-e2b-it-4bit"
    assert h.backend.conversions == [(str(checkpoint), destination)] and finished.args == [str(destination)]
    assert all(visible for visible, _, _ in seen)
    assert ("Converting gemma-4-E2B-it: converting 70%", 700) in [(text, value) for _, text, value in seen]
    wait_loaded(h, qtbot, destination)
    assert not h.window.sidebar.progress_box.isVisibleTo(h.window)
    assert h.controller.pending == [] and checkpoint.exists()  # nothing attached; the original stays
    # dropped again: the earlier conversion is used, nothing converts twice
    h.controller.use_model(str(h.home / "models" / "fake"))
    drop(h.window, checkpoint)
    wait_loaded(h, qtbot, destination)
    assert len(h.backend.conversions) == 1 and "was converted before" in h.window.banner.label.text()


def test_a_conversion_is_cancelled_from_the_sidebar(make, qtbot, home):
    checkpoint = model_folder(home / "gemma-4-E4B-it", mlx=False)
    h = make(backend=FakeBackend(token_delay=0.05))
    sidebar = h.window.sidebar
    with qtbot.waitSignal(h.engine.conversionFailed, timeout=TIMEOUT) as failed:
        drop(h.window, checkpoint)
        qtbot.waitUntil(lambda: sidebar.progress_cancel.isVisibleTo(h.window), timeout=TIMEOUT)
        sidebar.progress_cancel.click()
    assert "cancelled" in failed.args[0] and h.window.banner.property("level") == "info"
    assert not sidebar.progress_box.isVisibleTo(h.window) and h.controller.converting is None
    assert (h.controller.model_info or {}).get("path") == str(h.home / "models" / "fake")  # the model stays


def test_a_folder_that_is_not_a_model_gets_a_reason_and_nothing_loads(make, qtbot, home):
    h = make()
    loads = []
    h.engine.modelLoading.connect(loads.append)
    photos = home / "Pictures"
    photos.mkdir()
    drop(h.window, photos)
    qtbot.waitUntil(lambda: "cannot be added" in h.window.banner.label.text(), timeout=TIMEOUT)
    assert h.window.banner.property("level") == "error"
    assert "Pictures cannot be added: Pictures has no config.json, so it is not a model folder" in \
        h.window.banner.label.text()
    incomplete = model_folder(home / "gemma-4-E4B-it", mlx=False, tokenizer=False)
    drop(h.window, incomplete)
    qtbot.waitUntil(lambda: "lacks a tokenizer" in h.window.banner.label.text(), timeout=TIMEOUT)
    assert loads == [] and h.backend.conversions == [] and h.controller.pending == []
    assert h.controller.settings.added_models == []


def test_a_dropped_file_is_still_attached(make, qtbot, tmp_path):
    h = make()
    note = tmp_path / "notes.md"
    note.write_text("# Notes", encoding="utf-8")
    assert drop(h.window, note) == "Drop files to attach them"
    assert [a.name for a in h.controller.pending] == ["notes.md"]


def test_a_gguf_opened_on_the_dock_icon_is_converted_and_a_base_model_is_asked_about(make, qtbot, home):
    h = make()
    bar = install_menu_bar(QGuiApplication.instance(), h.window, h.controller, tray_available=False,
                           hotkey_backend=ManualHotkeyBackend(), quit=lambda: None, file_open=True)
    qtbot.addWidget(bar.panel)
    try:
        base = gguf_file(home / "gemma-3-270m-Q4_K_M.gguf", chat_template=None)
        h.window.hide()
        with qtbot.waitSignal(h.engine.conversionFinished, timeout=TIMEOUT):
            QCoreApplication.sendEvent(QGuiApplication.instance(), QFileOpenEvent(str(base)))
        assert h.window.isVisible() and h.questions == ["Add a base model?"]
        assert h.backend.conversions[0][0] == str(base) and h.backend.base_models == [True]
        assert h.controller.pending == []
        h.controller.confirm = lambda title, text: False  # "no": nothing is converted
        other = gguf_file(home / "gemma-3-1b-pt-Q8_0.gguf", chat_template=None)
        QCoreApplication.sendEvent(QGuiApplication.instance(), QFileOpenEvent(str(other)))
        qtbot.wait(300)
        qtbot.waitUntil(lambda: h.controller.background.running == 0, timeout=TIMEOUT)
        assert len(h.backend.conversions) == 1
    finally:
        bar.uninstall()


def test_models_in_hugging_face_cache_and_lm_studio_are_offered(make, qtbot, home):
    cache = home / ".cache" / "huggingface" / "hub"
    mlx = hub_repo(cache, "mlx-community/gemma-3-1b-it-4bit",
                   lambda p: model_folder(p, config={"model_type": "gemma3"}))
    hub_repo(cache, "google/gemma-4-E2B-it", lambda p: model_folder(p, mlx=False, shards=2, drop_shard=True))
    lm_studio = home / ".lmstudio" / "models" / "lmstudio-community"
    gguf_file(lm_studio / "gemma-3-270m-it-GGUF" / "gemma-3-270m-it.gguf")
    h = make()
    dialog = h.controller.open_model_manager()
    qtbot.waitUntil(lambda: len(dialog.found_rows) == 3, timeout=TIMEOUT)
    rows = {row.found.name: row for row in dialog.found_rows}
    assert "~/.cache/huggingface/hub and ~/.lmstudio/models" in dialog.found_status.text()
    assert rows["mlx-community/gemma-3-1b-it-4bit"].action.text() == "Use"
    assert "runs where it is" in rows["mlx-community/gemma-3-1b-it-4bit"].facts.text()
    assert rows["lmstudio-community/gemma-3-270m-it-GGUF"].action.text() == "Convert"
    broken = rows["google/gemma-4-E2B-it"]
    assert not broken.action.isVisibleTo(broken)
    assert "1 of 2 weight files are missing" in broken.problem.text()
    rows["mlx-community/gemma-3-1b-it-4bit"].action.click()
    wait_loaded(h, qtbot, mlx)
    assert h.controller.settings.added_models == [str(mlx)]


def test_an_added_model_that_moved_says_so_and_can_be_removed(make, qtbot, home):
    gone = home / "Models" / "gemma-moved"
    h = make(settings=AppSettings(added_models=[str(gone)]))
    dialog = h.controller.open_model_manager()
    broken = [r for r in dialog.rows if isinstance(r, FoundRow)]
    assert len(broken) == 1 and "does not exist (moved or deleted?)" in broken[0].problem.text()
    broken[0].remove_button.click()
    assert h.controller.settings.added_models == []
    assert not any(isinstance(r, FoundRow) for r in dialog.rows)


def test_the_starter_banner_names_the_real_controls(make, qtbot):
    h = make(load=False)
    h.engine.load_model(None)
    qtbot.waitUntil(lambda: h.controller.model_state == "ready", timeout=TIMEOUT)
    text = h.window.banner.label.text()
    button = h.window.sidebar.model_button.text()
    assert f"click “{button}” at the bottom of the sidebar" in text
    menu = h.window.sidebar.model_menu_texts()
    for item in ("Manage Models…", "Add Model from Folder…"):
        assert f"“{item}”" in text and item in menu
    assert "Open Models in the sidebar" not in text


class StarterBuilding(FakeBackend):
    """The scripted backend with a starter that reports conversion progress, as MlxBackend does."""

    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def prepare_starter(self, progress):
        progress({"stage": "unpack", "fraction": 0.0, "message": "Unpacking the starter model's weights"})
        for step in range(1, 5):
            progress({"stage": "convert", "fraction": step / 4, "message": "Converting"})
        return None


def test_building_the_starter_shows_a_real_percentage(make, qtbot):
    seen = []
    h = make(backend=StarterBuilding(seen), load=False)
    sidebar = h.window.sidebar
    h.engine.modelProgress.connect(lambda report: seen.append(
        (sidebar.progress_label.text(), sidebar.progress_bar.maximum(), sidebar.progress_bar.value(),
         h.window.banner.label.text())))
    h.engine.load_model(None)
    qtbot.waitUntil(lambda: h.controller.model_state == "ready", timeout=TIMEOUT)
    assert seen[0][:2] == ("Preparing the starter model: unpacking…", 0)  # a busy bar: no measure yet
    expected = [(f"Preparing the starter model: converting {p}%", p * 10) for p in (25, 50, 75, 100)]
    assert [(text, value) for text, _, value, _ in seen[1:]] == expected
    assert seen[2][3].startswith("Preparing the starter model: converting 50%. The offline starter model")
    assert not sidebar.progress_box.isVisibleTo(h.window)


def test_small_models_show_megabytes(make, qtbot):
    h = make()
    model_folder(h.home / "models" / "tiny", name="Tiny model", weights=310 * 1024 ** 2)
    dialog = h.controller.open_model_manager()
    row = next(r for r in dialog.rows if isinstance(r, ModelRow))
    assert row.facts.text().startswith("310 MB on disk") and "0.0 GB" not in row.facts.text()
    settings = h.controller.open_settings()
    combo = settings.model_combo
    assert "Tiny model  ·  310 MB" in [combo.itemText(i) for i in range(combo.count())]
