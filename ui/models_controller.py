"""The model and the settings: loading, the local server, the settings dialog and the model manager.
A mixin of ChatController (ui/controller.py), sharing its state."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from PySide6.QtCore import Qt

from gemma4_mac import model_manager
from gemma4_mac.engine import DEFAULT_CONTEXT
from gemma4_mac.server.control import ServerControlError
from gemma4_mac.settings import AppSettings, save_settings

from gemma4_mac.model_sources import inspect_path

from .add_models_controller import AddModelsMixin
from .model_dialog import ModelManagerDialog
from .settings_dialog import SettingsDialog


STARTER_BUTTON = "Starter · Gemma 3 270M"  # the model button's text while the starter model is loaded


class ModelsMixin(AddModelsMixin):
    """Model and settings handling for ChatController (adding models: AddModelsMixin)."""

    def start(self) -> None:
        """Load the model the settings name (or the best one on disk, or the starter), then start the server.

        The server starts once the model thread has done its imports (`runtimeReady`): importing the web
        server and MLX on this thread at the same time would race them. `startupSettled` follows when the
        model has loaded (or failed) and the server is up (or refused)."""
        self._unsettled = {"model", "server"}
        self._load_model(None if self.load_starter else self.initial_model_path())
        if self.engine.runtime_ready:
            self._start_server()
        else:
            self.engine.runtimeReady.connect(self._start_server, Qt.SingleShotConnection)

    def _load_model(self, path: Optional[str]) -> None:
        """Ask the engine for a model; until it has loaded, a question waits for it (whether it is a chat
        model decides the prompt), even before the model thread has started on the load."""
        self.model_info = None
        self.engine.load_model(path)  # modelLoading arrives at once and marks the state "loading"

    def _start_server(self) -> None:
        self._apply_server()
        self._settled("server")

    def _settled(self, part: str) -> None:
        if part in self._unsettled:
            self._unsettled.discard(part)
            if not self._unsettled:
                self.startupSettled.emit()

    def _apply_server(self) -> None:
        """Start, restart or stop the local server to match the settings; problems go to the banner."""
        try:
            url = self.server.apply(self.settings)
        except (ServerControlError, ImportError, OSError) as error:  # a damaged install, a refused socket
            self.window.banner.show_message(f"The local server could not start: {error}", "error")
            return
        if url:
            self.window.banner.show_message(f"Serving the loaded model to local apps at {url}", "info")

    def initial_model_path(self) -> Optional[str]:
        if self.settings.model_path:
            return self.settings.model_path
        entries = model_manager.list_models(extra=tuple(self.settings.added_models), root=self.models_root)
        entries = [e for e in entries if not e.is_starter and e.fit.fits]
        return str(entries[0].path) if entries else None

    def _on_model_loading(self, path: str) -> None:
        self.model_state = "loading"
        name = Path(path).name if path else "starter model"
        self.window.sidebar.set_model_status(name, "loading")

    def _on_model_loaded(self, info: dict) -> None:
        self._settled("model")
        self._clear_progress("starter")
        self.model_info, self.model_state = info, "ready"
        short = STARTER_BUTTON if info.get("is_starter") else info.get("name", "Model")
        self.window.sidebar.set_model_status(short, "ready")
        if info.get("is_starter"):
            self.window.banner.show_message(
                "Using the offline starter model (Gemma 3 270M): it continues text and is not a chat model. "
                f"To chat, click “{STARTER_BUTTON}” at the bottom of the sidebar and choose "
                f"“{self.window.manage_models_action.text()}” to download Gemma 4, or "
                f"“{self.window.add_folder_action.text()}” to use one you have.", "info")
        elif self.window.banner.property("level") in ("error", "info"):
            self.window.banner.dismiss()
        self._refresh_models()
        self.update_token_count()
        if self.stream is not None and self.stream.request_id is None:
            self._submit_stream()  # a question sent while the model was loading

    def _on_model_failed(self, message: str) -> None:
        self._settled("model")
        self._clear_progress("starter")
        self.model_info, self.model_state = None, "error"
        self.window.sidebar.set_model_status("Model", "error")
        if self.stream is not None and self.stream.request_id is None:
            self._fail_stream("No model is loaded. Choose one in the model manager.")
        self.window.banner.show_message(f"The model could not be loaded: {message}", "error")

    def context_limit(self) -> int:
        if self.settings.context_size:
            return self.settings.context_size
        return int((self.model_info or {}).get("context_limit") or DEFAULT_CONTEXT)

    def set_thinking(self, on: bool) -> None:
        self.apply_settings(dataclasses.replace(self.settings, thinking=on))

    def apply_settings(self, new: AppSettings) -> None:
        old, self.settings = self.settings, new
        try:
            save_settings(new, self.settings_path)
        except (OSError, ValueError) as error:
            self.window.banner.show_message(f"Settings could not be saved: {error}", "error")
        self.window.composer.set_thinking(new.thinking)
        if self.theme is not None and new.theme != old.theme:
            self.theme.set_preference(new.theme)
        if new.model_path != old.model_path:
            self._load_model(new.model_path or None)
        server_fields = ("server_enabled", "server_host", "server_port", "server_api_key", "server_cors_origins",
                         "server_allow_local_files")
        if any(getattr(new, f, None) != getattr(old, f, None) for f in server_fields):
            self._apply_server()
        self.update_token_count()
        self.settingsChanged.emit(old, new)

    def open_settings(self) -> SettingsDialog:
        models = model_manager.list_models(extra=self._extra_models(), root=self.models_root)
        auto = int((self.model_info or {}).get("context_limit") or DEFAULT_CONTEXT)
        dialog = SettingsDialog(self.settings, models, auto, self.window)
        dialog.accepted.connect(lambda: self.apply_settings(dialog.settings()))
        dialog.manageModelsClicked.connect(self.open_model_manager)
        dialog.checkToolsRequested.connect(self.check_tools)  # ui/tools_controller.py
        self.settings_dialog = dialog
        dialog.open()
        return dialog

    def open_model_manager(self) -> ModelManagerDialog:
        if self.model_dialog is not None and self.model_dialog.isVisible():
            self.model_dialog.raise_()
            return self.model_dialog
        dialog = ModelManagerDialog(model_manager.total_memory(), self.models_root, self.window)
        dialog.useModelRequested.connect(self.use_model)
        dialog.deleteModelRequested.connect(self.delete_model)
        dialog.removeModelRequested.connect(self.remove_added_model)
        dialog.foundModelChosen.connect(self.add_model_path)
        dialog.addFolderRequested.connect(self.add_model_from_folder)
        dialog.addFileRequested.connect(self.add_model_file)
        dialog.downloadRequested.connect(self.download_model)
        dialog.cancelDownloadRequested.connect(self.engine.cancel_conversion)
        self.model_dialog = dialog
        if self.converting is not None:  # started from a drop or the menu: its progress shows here too
            dialog.set_job(self.converting["title"])
            dialog.set_progress({"stage": "", "fraction": 0.0})
        self._refresh_models()
        self.scan_other_apps(dialog)
        dialog.open()
        return dialog

    def _refresh_models(self) -> None:
        self.refresh_model_menu()
        if self.model_dialog is None:
            return
        current = (self.model_info or {}).get("path", "")
        added = tuple(self.settings.added_models)
        entries = model_manager.list_models(extra=self._extra_models(), root=self.models_root)
        listed = {Path(e.path).resolve() for e in entries}
        # removed from the list by the path it was added as
        broken = tuple(dataclasses.replace(found, path=Path(p))
                       for p, found in ((p, inspect_path(p, origin="Added")) for p in added)
                       if Path(p).resolve() not in listed and not found.usable)
        self.model_dialog.set_models(entries, current, added, broken)
        self.model_dialog.set_unfinished(model_manager.unfinished_bytes(self.models_root))

    def use_model(self, path: str) -> None:
        self.apply_settings(dataclasses.replace(self.settings, model_path=path))
        self._refresh_models()

    def delete_model(self, path: str) -> None:
        if not self.confirm("Delete this model?", f"{path} will be deleted from this Mac."):
            return
        try:
            model_manager.delete_model(Path(path), root=self.models_root)
        except (model_manager.ModelManagerError, OSError) as error:
            self.window.banner.show_message(str(error), "error")
        self._refresh_models()
