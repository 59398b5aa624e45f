"""Adding models the person already has: "Add Model from Folder…", "Add GGUF File…", a folder or GGUF file
dropped on the window or the Dock icon, and models found in Hugging Face's cache or LM Studio.

An MLX folder is used where it lies (remembered in the settings' `added_models`); a checkpoint or GGUF file is
converted into the app's models folder with progress in the sidebar, then loaded. Looking at a path (a GGUF's
header takes about a second) and searching other apps' folders run off the Qt thread. A mixin of
ChatController through ModelsMixin (ui/models_controller.py), sharing its state.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog

from gemma4_mac import model_manager, model_sources
from gemma4_mac.engine import CANCELLED_CONVERSION, CANCELLED_DOWNLOAD
from gemma4_mac.model_sources import MLX, FoundModel, display_path

log = logging.getLogger(__name__)
STARTER_MENU_LABEL = "Starter · Gemma 3 270M (base)"
STAGE_WORDS = {"download": "downloading", "unpack": "unpacking", "convert": "converting",
               "tokenizer": "tokenizer", "finalize": "finishing", "done": "done"}


class Background(QObject):
    """Runs plain-Python file work on a short-lived thread and calls back on the Qt thread."""

    _done = Signal(object, object, object, object)  # callback, failed, result, error message

    def __init__(self, parent: QObject):
        super().__init__(parent)
        self._done.connect(self._deliver)
        self.running = 0

    def run(self, work: Callable[[], Any], callback: Callable[[Any], None],
            failed: Callable[[str], None]) -> None:
        def job() -> None:
            result, error = None, None
            try:
                result = work()
            except Exception as problem:  # a bug must not leave the window waiting: report it, log the trace
                log.exception("looking for models failed")
                error = f"{type(problem).__name__}: {problem}"
            try:
                self._done.emit(callback, failed, result, error)
            except RuntimeError:
                pass  # the window closed meanwhile: nobody is left to tell

        self.running += 1
        threading.Thread(target=job, name="gemma-model-scan", daemon=True).start()

    def _deliver(self, callback, failed, result, error) -> None:
        self.running -= 1
        if error is None:
            callback(result)
        else:
            failed(f"Looking for models failed ({error}).")


def short_name(name: str) -> str:
    """`google/gemma-4-E2B-it` -> `gemma-4-E2B-it`; file names lose `.gguf`."""
    tail = name.split("/")[-1].split(" · ")[-1]
    return tail[:-5] if tail.lower().endswith(".gguf") else tail


def progress_text(title: str, report: dict) -> tuple[str, Optional[float]]:
    """The sidebar's line for a conversion report, and the bar's fraction (None: a step with no measure)."""
    stage = report.get("stage", "")
    fraction = float(report.get("fraction") or 0.0)
    if stage == "unpack":
        return f"{title}: unpacking…", None
    return f"{title}: {STAGE_WORDS.get(stage, stage)} {fraction:.0%}", fraction


class AddModelsMixin:
    """Adding models from folders, GGUF files, drops and other apps' folders."""

    def _wire_models(self) -> None:
        """Connect the model menu, the window's model actions and the engine's progress (called by _wire)."""
        w, sidebar = self.window, self.window.sidebar
        self.background = Background(self)
        self.converting: Optional[dict] = None  # the download or conversion running: title, destination, use
        self._progress_owner = ""  # "starter" or "conversion": whose progress the sidebar shows
        self._starter_percent = -1
        # questions to the person; tests replace these
        self.choose_model_folder: Callable[[], Optional[str]] = self._choose_model_folder
        self.choose_model_file: Callable[[], Optional[str]] = self._choose_model_file
        w.add_folder_action.triggered.connect(self.add_model_from_folder)
        w.add_file_action.triggered.connect(self.add_model_file)
        sidebar.modelChosen.connect(self.use_model)
        sidebar.progressCancelled.connect(self.engine.cancel_conversion)
        self.engine.modelProgress.connect(self._on_model_progress)
        self.refresh_model_menu()

    # what the person chose, dropped or opened

    def add_model_from_folder(self) -> None:
        path = self.choose_model_folder()
        if path:
            self.add_model_path(path)

    def add_model_file(self) -> None:
        path = self.choose_model_file()
        if path:
            self.add_model_path(path)

    def take_model_paths(self, paths: list[str]) -> list[str]:
        """Add the folders and GGUF files among `paths` as models; returns the rest (files to attach)."""
        rest = []
        for path in paths:
            if model_sources.might_be_model(path):
                self.add_model_path(path)
            else:
                rest.append(path)
        return rest

    def add_model_path(self, path: str) -> None:
        """Look at `path` (off the Qt thread), then use it, convert it, or say why it cannot be used."""
        self.model_notice(f"Looking at {Path(path).name}…", "info")
        self.background.run(lambda: model_sources.inspect_path(path), self._add_found, self._add_failed)

    def _add_failed(self, message: str) -> None:
        self.model_notice(message, "error")

    def _add_found(self, found: FoundModel) -> None:
        if not found.usable:
            self.model_notice(f"{short_name(found.name)} cannot be added: {found.problem}", "error")
        elif found.kind == MLX:
            self._add_mlx(found)
        else:
            self._convert_found(found)

    def _add_mlx(self, found: FoundModel) -> None:
        path = str(found.path)
        inside = self.models_root.resolve() in found.path.resolve().parents
        added = list(self.settings.added_models)
        if not inside and path not in added:
            added.append(path)
        fit = model_manager.estimate_fit(found.path)
        model_path = path if fit.fits else self.settings.model_path
        name = short_name(found.name)
        if not fit.fits:
            self.model_notice(f"Added {name}, but it is too large for this Mac ({fit.summary}); the current "
                              "model stays loaded.", "warning")
        elif self.settings.model_path == path:
            self.model_notice(f"{name} is already in use.", "info")
        else:
            where = "" if inside else f" It stays in {display_path(found.path.parent)}; nothing was copied."
            self.model_notice(f"Added {name}; loading it.{where}", "info")
        self.apply_settings(dataclasses.replace(self.settings, added_models=added, model_path=model_path))
        self._refresh_models()

    def _convert_found(self, found: FoundModel) -> None:
        name = short_name(found.name)
        earlier = model_manager.converted_from(found.path, self.models_root)
        if earlier is not None:
            self.model_notice(f"{name} was converted before; using {earlier}.", "info")
            self.use_model(str(earlier))
            return
        if self.converting is not None:
            self.model_notice(f"{self.converting['title']} is still running: add {name} when it has "
                              "finished, or cancel it in the sidebar.", "error")
            return
        question = (f"{name} has no chat template, so it is a base model: it continues text but cannot chat. "
                    "Convert it as a base model?")
        if found.base_model and not self.confirm("Add a base model?", question):
            return
        destination = model_manager.conversion_destination(name, root=self.models_root)
        self.converting = {"title": f"Converting {name}", "destination": str(destination), "use": True}
        self._show_conversion_progress(None, "Starting…")
        self.model_notice(f"Converting {name} to 4-bit MLX in the app's models folder; the original stays "
                          "where it is.", "info")
        self.engine.convert_model(str(found.path), destination, f"{name} (4-bit)",
                                  base_model=found.base_model)

    def download_model(self, repo_id: str, destination: str, label: str) -> None:
        """The model manager's "Download and convert"."""
        self.converting = {"title": f"Downloading {label}", "destination": destination, "use": False}
        self._show_conversion_progress(None, "Starting…")
        self.engine.convert_model(repo_id, Path(destination), label)

    def remove_added_model(self, path: str) -> None:
        """Forget an added model (its files stay where they are)."""
        added = [p for p in self.settings.added_models if p != path]
        self.apply_settings(dataclasses.replace(self.settings, added_models=added))
        self._refresh_models()

    def scan_other_apps(self, dialog) -> None:
        """Fill the model manager's "In other apps" list from Hugging Face's cache and LM Studio."""
        places = [p for p in model_sources.searched_places() if p.is_dir()]
        where = " and ".join(display_path(p) for p in places) or \
            "Hugging Face's cache or LM Studio's models folder (neither exists on this Mac)"
        dialog.set_found(None)

        def show(found: list[FoundModel]) -> None:
            if self.model_dialog is dialog:
                dialog.set_found(found, where, tuple(self.settings.added_models))

        self.background.run(model_sources.scan_other_apps, show, self._add_failed)

    # progress

    def _show_conversion_progress(self, fraction: Optional[float], detail: str) -> None:
        self._progress_owner = "conversion"
        self.window.sidebar.set_progress(f"{self.converting['title']}: {detail}", fraction, cancellable=True)
        if self.model_dialog is not None:
            self.model_dialog.set_job(self.converting["title"])

    def _on_conversion_progress(self, report: dict) -> None:
        if self.model_dialog is not None:
            self.model_dialog.set_progress(report)
        if self.converting is not None:
            text, fraction = progress_text(self.converting["title"], report)
            self._progress_owner = "conversion"
            self.window.sidebar.set_progress(text, fraction, cancellable=True)

    def _on_conversion_finished(self, path: str) -> None:
        job, self.converting = self.converting, None
        self._clear_progress("conversion")
        if self.model_dialog is not None:
            self.model_dialog.set_finished(path)
        if job is not None and job["use"]:
            self.model_notice(f"Converted into {path}; loading it.", "info")
            self.use_model(path)
            return
        self._refresh_models()
        self.window.banner.show_message(f"The model is ready in {path}. Switch to it in the model menu at "
                                        "the bottom of the sidebar.", "info")

    def _on_conversion_failed(self, message: str) -> None:
        job, self.converting = self.converting, None
        self._clear_progress("conversion")
        if self.model_dialog is not None:
            self.model_dialog.set_failed(message)
        if self.model_dialog is None or (job is not None and job["use"]):
            cancelled = message in (CANCELLED_CONVERSION, CANCELLED_DOWNLOAD)  # asked for: not an error
            self.window.banner.show_message(message, "info" if cancelled else "error")

    def _on_model_progress(self, report: dict) -> None:
        """Building the starter model on first use: a real percentage in the sidebar and the banner."""
        text, fraction = progress_text("Preparing the starter model", report)
        if self._progress_owner != "conversion":
            self._progress_owner = "starter"
            self.window.sidebar.set_progress(text, fraction)
        percent = -1 if fraction is None else int(fraction * 100)
        if percent != self._starter_percent:  # at most a hundred banner updates, not one per tensor
            self._starter_percent = percent
            self.window.banner.show_message(f"{text}. The offline starter model (Gemma 3 270M) is made once, "
                                            "on the first start; it takes a minute.", "info")

    def _clear_progress(self, owner: str) -> None:
        if self._progress_owner == owner:
            self._progress_owner = ""
            self.window.sidebar.clear_progress()

    # the model menu and messages

    def refresh_model_menu(self) -> None:
        """The sidebar's model menu: the models on this Mac, the loaded one checked."""
        current = (self.model_info or {}).get("path", "")
        entries = model_manager.list_models(extra=self._extra_models(), root=self.models_root)
        choices = [(STARTER_MENU_LABEL if e.is_starter else e.label, str(e.path)) for e in entries]
        self.window.sidebar.set_model_choices(choices, current)

    def _extra_models(self) -> tuple[str, ...]:
        current = (self.model_info or {}).get("path", "")
        paths = (self.settings.model_path, current, *self.settings.added_models)
        return tuple(dict.fromkeys(p for p in paths if p))

    def model_notice(self, text: str, level: str = "info") -> None:
        """What adding a model did: in the model manager when it is open, else in the window's banner."""
        if self.model_dialog is not None and self.model_dialog.isVisible():
            self.model_dialog.show_notice(text, "error" if level == "error" else "info")
        self.window.banner.show_message(text, level)

    def _choose_model_folder(self) -> Optional[str]:
        return QFileDialog.getExistingDirectory(self.window, "Add a model folder", str(Path.home())) or None

    def _choose_model_file(self) -> Optional[str]:
        path, _ = QFileDialog.getOpenFileName(self.window, "Add a GGUF file", str(Path.home()),
                                              "GGUF models (*.gguf)")
        return path or None

