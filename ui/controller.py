"""The controller: wires the window's signals to history, attachments, settings and the engine.

Conversations, attachments and sending live here; the answer being generated in stream_controller.py
and the model, settings and model manager in models_controller.py (mixins sharing this object's state).

Questions to the person (confirmations, save paths, the context-overflow choice) go through
replaceable callables so tests can answer them without modal dialogs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QObject, QTimer, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QFileDialog, QMenu, QMessageBox

from gemma4_mac import model_manager
from gemma4_mac.attachments import (Attachment, AttachmentError, AttachmentStore, estimate_attachment_tokens,
                                    model_cannot_read)
from gemma4_mac.documents import DocumentError, estimate_tokens, paste_title
from gemma4_mac.history import HistoryStore
from gemma4_mac.server.control import LocalServer
from gemma4_mac.settings import AppSettings

from .engine import Engine
from .main_window import MainWindow
from .model_dialog import ModelManagerDialog
from .models_controller import ModelsMixin
from .recorder import Recorder
from .settings_dialog import SettingsDialog
from .stream_controller import StreamingMixin, StreamState
from .theme import ThemeManager
from .token_meter import TokenMeterMixin
from .tools_controller import ToolsMixin

PARTIAL_SAVE_MS = 2000
QUIT_WAIT_S = 0.25  # how long quitting waits for the model thread to stop (an answer stops in milliseconds)

SUGGESTION_PROMPTS = {
    "Describe a photo": "What is in this photo? ",
    "Summarise a PDF": "Summarise the key points of this document: ",
    "Transcribe a voice note": "Transcribe this recording: ",
    "Explain some code": "Explain what this code does:\n\n",
}
OVERFLOW_NEW_CHAT, OVERFLOW_TRIM, OVERFLOW_CANCEL = "new_chat", "trim", "cancel"


class ChatController(ModelsMixin, StreamingMixin, TokenMeterMixin, ToolsMixin, QObject):
    """The main window's controller; models and settings, generation, the token meter and tools are mixins."""

    settingsChanged = Signal(object, object)  # (old, new) AppSettings, after they were saved
    startupSettled = Signal()  # the first model load and the server start have ended, well or not

    def __init__(self, window: MainWindow, engine: Engine, history: HistoryStore, attachments: AttachmentStore,
                 settings: AppSettings, *, settings_path: Optional[Path] = None,
                 theme: Optional[ThemeManager] = None, recorder: Optional[Recorder] = None,
                 models_root: Optional[Path] = None, load_starter: bool = False):
        super().__init__(window)
        self.load_starter = load_starter  # the last start died loading the settings' model: open the starter
        self.window, self.engine, self.history, self.attachments = window, engine, history, attachments
        self.settings, self.settings_path, self.theme = settings, settings_path, theme
        self.models_root = models_root if models_root is not None else model_manager.models_dir()
        self.recorder = recorder or Recorder(parent=self)
        self.conversation_id: Optional[int] = None
        self.pending: list[Attachment] = []
        self.stream: Optional[StreamState] = None
        # the engine is shared with the quick-ask panel: only signals after our generationStarted are ours
        self.engine_request: Optional[int] = None
        self.model_info: Optional[dict] = None
        self.model_state = "idle"
        self.settings_dialog: Optional[SettingsDialog] = None
        self.model_dialog: Optional[ModelManagerDialog] = None
        self._shut_down = False
        self._unsettled: set[str] = set()  # parts of the start still under way (ModelsMixin.start)
        self.server = LocalServer(engine)  # the OpenAI-compatible server shares the engine's model thread
        # a streamed answer is written to the history every few seconds, so a crash loses at most that much
        self._save_timer = QTimer(self)
        self._save_timer.setInterval(PARTIAL_SAVE_MS)
        self._save_timer.timeout.connect(self._save_partial)
        # questions to the person; tests replace these
        self.confirm: Callable[[str, str], bool] = self._confirm
        self.choose_save_path: Callable[[str, str], Optional[str]] = self._choose_save_path
        self.choose_files: Callable[[], list[str]] = self._choose_files
        self.choose_overflow: Callable[[int, int, bool], str] = self._choose_overflow
        self._token_timer = QTimer(self, singleShot=True, interval=120, timeout=self.update_token_count)
        self._init_token_meter()
        self._wire()
        self._init_tools()
        window.composer.set_thinking(settings.thinking)
        self.refresh_sidebar()
        self.update_token_count()

    # wiring

    def _wire(self) -> None:
        w, sidebar, composer, engine = self.window, self.window.sidebar, self.window.composer, self.engine
        sidebar.newChatClicked.connect(self.new_chat)
        w.shortcuts["new"].activated.connect(self.new_chat)
        sidebar.conversationSelected.connect(self.open_conversation)
        sidebar.renameRequested.connect(self.rename_conversation)
        sidebar.deleteRequested.connect(self.delete_conversation)
        sidebar.exportRequested.connect(self.export_conversation)
        sidebar.searchChanged.connect(self.search)
        sidebar.settingsClicked.connect(self.open_settings)
        w.shortcuts["settings"].activated.connect(self.open_settings)
        w.shortcuts["settings_alt"].activated.connect(self.open_settings)
        w.shortcuts["stop"].activated.connect(self.stop)
        sidebar.modelClicked.connect(self.open_model_manager)
        w.export_button.clicked.connect(self._export_menu)
        w.filesDropped.connect(self.attach_files)
        w.imageDropped.connect(self.attach_image)
        w.closing.connect(self.shutdown)
        w.empty_state.suggestionClicked.connect(self._use_suggestion)
        w.transcript.regenerateRequested.connect(self.regenerate)
        w.transcript.editRequested.connect(self.edit_last_message)
        w.transcript.playbackFailed.connect(lambda message: w.banner.show_message(message, "warning"))
        composer.submitted.connect(self.send)
        composer.stopClicked.connect(self.stop)
        composer.filesReceived.connect(self.attach_files)
        composer.imageReceived.connect(self.attach_image)
        composer.longTextReceived.connect(self.attach_long_text)
        composer.attachmentRemoved.connect(self.remove_attachment)
        composer.attachmentEncodingChosen.connect(self.reread_attachment)
        composer.attachClicked.connect(lambda: self.attach_files(self.choose_files()))
        composer.recordClicked.connect(self.recorder.start)
        composer.recordStopClicked.connect(self.recorder.stop)
        composer.recordCancelClicked.connect(self.recorder.cancel)
        composer.thinkingToggled.connect(self.set_thinking)
        composer.textEdited.connect(lambda _text: self._token_timer.start())
        self.recorder.started.connect(lambda: composer.set_recording(True))
        self.recorder.levelChanged.connect(composer.set_level)
        self.recorder.elapsedChanged.connect(composer.set_elapsed)
        self.recorder.finished.connect(self._on_recording_finished)
        self.recorder.cancelled.connect(lambda: composer.set_recording(False))
        self.recorder.failed.connect(self._on_recording_failed)
        engine.modelLoading.connect(self._on_model_loading)
        engine.modelLoaded.connect(self._on_model_loaded)
        engine.modelLoaded.connect(lambda _info: self._mark_unreadable())  # after model_info was set
        engine.modelLoadFailed.connect(self._on_model_failed)
        engine.generationStarted.connect(self._on_started)
        engine.readingProgress.connect(self._on_reading)
        engine.answerDelta.connect(self._on_answer)
        engine.thoughtDelta.connect(self._on_thought)
        engine.toolCallReceived.connect(self._on_tool_call)
        engine.noticeReceived.connect(self._on_notice)
        engine.generationFinished.connect(self._on_finished)
        engine.generationFailed.connect(self._on_failed)
        engine.conversionProgress.connect(self._on_conversion_progress)
        engine.conversionFinished.connect(self._on_conversion_finished)
        engine.conversionFailed.connect(self._on_conversion_failed)
        if self.theme is not None:
            self.theme.themeChanged.connect(w.apply_palette)
        self._wire_models()  # the model menu, adding models, the starter's progress: add_models_controller.py

    # conversations

    def refresh_sidebar(self) -> None:
        query = self.window.sidebar.search.text()
        if query.strip():
            self.window.sidebar.set_search_results(self.history.search(query), self.conversation_id)
        else:
            # a chat with only a file in its composer so far is not listed until something is sent
            self.window.sidebar.set_conversations(self.history.conversations(include_empty=False),
                                                  self.conversation_id)
        conversation = self.history.conversation(self.conversation_id) if self.conversation_id else None
        self.window.header_title.setText(conversation.title if conversation else "New chat")

    def search(self, text: str) -> None:
        self.refresh_sidebar()

    def _drop_if_empty(self) -> None:
        """A conversation left without a message (only attachments tried) is removed."""
        cid = self.conversation_id
        if cid is not None and not self.history.messages(cid) and (self.stream is None or
                                                                  self.stream.conversation_id != cid):
            self.history.delete_conversation(cid)
            self.attachments.remove_conversation(cid)

    def new_chat(self) -> None:
        if self.recorder.recording:
            self.recorder.cancel()
        self._detach_stream_widget()
        self._drop_if_empty()
        self.conversation_id = None
        self.pending = []
        self.window.composer.set_attachments([])
        self.window.composer.set_text("")
        self.window.transcript.clear()
        self.window.show_empty(True)
        self._set_history([])
        self.refresh_sidebar()
        self.update_token_count()
        self.window.composer.edit.setFocus()

    def open_conversation(self, conversation_id: int, reload: bool = False) -> None:
        """Show a conversation; `reload` redraws it even when it is on screen (it changed elsewhere)."""
        if conversation_id == self.conversation_id and not reload:
            return
        self._detach_stream_widget()
        self._drop_if_empty()
        self.conversation_id = conversation_id
        self.pending = []
        self.window.composer.set_attachments([])
        messages = self.history.messages(conversation_id)
        self.window.transcript.show_messages(messages)
        self.window.show_empty(not messages)
        if self.stream is not None and self.stream.conversation_id == conversation_id:
            self._reattach_stream()
        self._set_history(messages)
        self.refresh_sidebar()
        self.update_token_count()

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        self.history.rename_conversation(conversation_id, title)
        self.refresh_sidebar()

    def delete_conversation(self, conversation_id: int) -> None:
        conversation = self.history.conversation(conversation_id)
        if conversation is None:
            return
        if not self.confirm("Delete this chat?",
                            f"“{conversation.title}” and its attachments will be deleted from this Mac."):
            return
        if self.stream is not None and self.stream.conversation_id == conversation_id:
            self.stream.widget = None
            if self.stream.request_id is None:
                self.stream = None  # it never reached the engine
                self.window.composer.set_generating(False)
            else:
                self.engine.cancel(self.stream.request_id)
        self.history.delete_conversation(conversation_id)
        self.attachments.remove_conversation(conversation_id)
        if conversation_id == self.conversation_id:
            self.conversation_id = None
            self.new_chat()
        else:
            self.refresh_sidebar()

    def export_conversation(self, conversation_id: int, fmt: str) -> Optional[Path]:
        conversation = self.history.conversation(conversation_id)
        if conversation is None:
            return None
        suffix = ".md" if fmt == "markdown" else ".json"
        safe = "".join(ch if ch.isalnum() or ch in " -_" else "_" for ch in conversation.title).strip() or "Chat"
        target = self.choose_save_path(f"{safe}{suffix}", fmt)
        if not target:
            return None
        target = Path(target)
        folder = target.with_name(f"{target.stem} attachments")  # copies of the attachments, beside the file
        try:
            text = self.history.export_markdown(conversation_id, folder) if fmt == "markdown" else \
                self.history.export_json(conversation_id, folder)
            target.write_text(text, encoding="utf-8")
        except OSError as error:
            self.window.banner.show_message(f"Could not write {error.filename or target}: "
                                            f"{error.strerror or error}.", "error")
            return None
        return target

    def _export_menu(self) -> None:
        if self.conversation_id is None:
            return
        menu = QMenu(self.window)
        menu.addAction("Export as Markdown…", lambda: self.export_conversation(self.conversation_id, "markdown"))
        menu.addAction("Export as JSON…", lambda: self.export_conversation(self.conversation_id, "json"))
        button = self.window.export_button
        menu.popup(button.mapToGlobal(button.rect().bottomLeft()))

    def ensure_conversation(self) -> int:
        if self.conversation_id is None:
            self.conversation_id = self.history.create_conversation(model=self._model_name()).id
            self.refresh_sidebar()
        return self.conversation_id

    def _model_name(self) -> str:
        return (self.model_info or {}).get("name", "")

    # attachments

    def attach_files(self, paths: list[str]) -> None:
        paths = self.take_model_paths(paths)  # model folders and GGUF files are added as models, not attached
        if not paths:
            return
        cid = self.ensure_conversation()
        problems = []
        for path in paths:
            try:
                self.pending.append(self.attachments.import_file(cid, Path(path)))
            except (AttachmentError, DocumentError, OSError) as error:
                problems.append(str(error))
        self._pending_changed(problems)

    def attach_image(self, image: QImage, name: str = "") -> None:
        if image.isNull():
            return
        data = QByteArray()
        buffer = QBuffer(data)
        buffer.open(QIODevice.WriteOnly)
        image.save(buffer, "PNG")
        buffer.close()
        cid = self.ensure_conversation()
        name = name or time.strftime("Pasted image %H.%M.%S.png")
        try:
            self.pending.append(self.attachments.import_bytes(cid, bytes(data), name, "image"))
        except AttachmentError as error:
            self._pending_changed([str(error)])
            return
        self._pending_changed([])

    def attach_long_text(self, text: str) -> None:
        cid = self.ensure_conversation()
        try:
            self.pending.append(self.attachments.import_text(cid, text, f"{paste_title(text)}.txt"))
        except (AttachmentError, DocumentError) as error:
            self._pending_changed([str(error)])
            return
        self._pending_changed([])

    def remove_attachment(self, index: int) -> None:
        if 0 <= index < len(self.pending):
            self.attachments.remove(self.pending.pop(index))
            self._pending_changed([])

    def reread_attachment(self, index: int, encoding: str) -> None:
        """Read a pending text attachment again in the encoding the person picked on its chip."""
        if 0 <= index < len(self.pending):
            try:
                self.attachments.reread_text(self.pending[index], encoding)
            except AttachmentError as error:
                self._pending_changed([str(error)])
                return
            self._pending_changed([])

    def _pending_changed(self, problems: list[str]) -> None:
        self.window.composer.set_attachments(self.pending)
        self._mark_unreadable()
        if problems:
            self.window.banner.show_message("\n".join(problems), "warning")
        self.update_token_count()

    def _mark_unreadable(self) -> None:
        """Mark the chips of files the loaded model cannot take (sending explains what is left out)."""
        self.window.composer.mark_unreadable([model_cannot_read(a, self.model_info) for a in self.pending])

    def _on_recording_finished(self, wav: bytes, seconds: float) -> None:
        self.window.composer.set_recording(False)
        cid = self.ensure_conversation()
        try:
            self.pending.append(self.attachments.import_bytes(cid, wav, time.strftime("Recording %H.%M.%S.wav"),
                                                              "audio"))
        except AttachmentError as error:
            self._pending_changed([str(error)])
            return
        self._pending_changed([])

    def _on_recording_failed(self, message: str) -> None:
        self.window.composer.set_recording(False)
        self.window.banner.show_message(message, "warning")

    def _use_suggestion(self, title: str) -> None:
        self.window.composer.set_text(SUGGESTION_PROMPTS.get(title, ""))
        self.window.composer.edit.setFocus()

    # sending

    def send(self, text: Optional[str] = None) -> bool:
        """Send the composer's message; returns False when nothing was sent."""
        text = (self.window.composer.text if text is None else text).strip()
        if self.stream is not None or (not text and not self.pending):
            return False
        if self.recorder.recording:
            return False
        used, limit = self.update_token_count(), self.context_limit()
        if used > limit:
            choice = self.choose_overflow(used, limit, any(a.is_document for a in self.pending))
            if choice == OVERFLOW_CANCEL:
                return False
            if choice == OVERFLOW_NEW_CHAT and self.history.messages(self.conversation_id or -1):
                self._move_pending_to_new_chat()
            if choice == OVERFLOW_TRIM or self._estimate_pending(text) > limit:
                self._trim_documents(text, limit)
        cid = self.ensure_conversation()
        attachments, self.pending = self.pending, []
        self.history.add_message(cid, "user", text, attachments=attachments, model=self._model_name())
        self.window.composer.set_text("")
        self.window.composer.set_attachments([])
        self.window.show_empty(False)
        self.window.transcript.add_user(text, attachments)
        self.refresh_sidebar()
        self._start_generation()
        return True

    def _estimate_pending(self, text: str) -> int:
        return estimate_tokens(text) + sum(estimate_attachment_tokens(a, self.settings.image_token_budget)
                                           for a in self.pending)

    def _move_pending_to_new_chat(self) -> None:
        old = self.conversation_id
        self.conversation_id = None
        cid = self.ensure_conversation()
        moved = []
        for attachment in self.pending:
            moved.append(self.attachments.import_file(cid, Path(attachment.path)))
            moved[-1].name = attachment.name
            self.attachments.remove(attachment)
        self.pending = moved
        self.window.transcript.clear()
        self._set_history([])
        del old

    def _trim_documents(self, text: str, limit: int) -> None:
        """Cut document attachments so the whole prompt fits `limit` tokens (shared out evenly)."""
        documents = [a for a in self.pending if a.is_document]
        if not documents:
            return
        fixed = self.history_tokens + estimate_tokens(text) + estimate_tokens(self.settings.system_prompt) + sum(
            estimate_attachment_tokens(a, self.settings.image_token_budget) for a in self.pending if not a.is_document)
        room = max(limit - fixed - self.settings.max_tokens // 4 - 64, 256)
        for a in documents:
            share = room / len(documents)
            chars = int(a.meta.get("chars") or a.size)
            tokens = max(int(a.meta.get("tokens") or 1), 1)
            if tokens > share:
                a.meta["max_chars"] = int(chars * share / tokens)
                a.meta["tokens"] = int(share)

    # shutdown

    def shutdown(self) -> None:
        """Keep an answer cut off by quitting (marked partial) and stop the engine thread."""
        if self._shut_down:
            return
        self._shut_down = True
        if self.recorder.recording:
            self.recorder.cancel()
        if self.stream is not None:
            self.history.update_message(self.stream.message_id, content=self.stream.answer,
                                        thought=self.stream.thought, tool_calls=self.stream.tool_calls, partial=True)
            self.stream = None
        self._drop_if_empty()
        self.server.stop()
        # generation stops at its next token; the chunk of a long prompt under way is not waited for
        self.engine.shutdown(timeout=QUIT_WAIT_S)

    # default questions (modal dialogs)

    def _confirm(self, title: str, text: str) -> bool:
        box = QMessageBox(QMessageBox.Warning, title, text, QMessageBox.Cancel, self.window)
        delete = box.addButton("Delete", QMessageBox.DestructiveRole)
        box.exec()
        return box.clickedButton() is delete

    def _choose_save_path(self, suggested: str, fmt: str) -> Optional[str]:
        pattern = "Markdown (*.md)" if fmt == "markdown" else "JSON (*.json)"
        path, _ = QFileDialog.getSaveFileName(self.window, "Export chat", str(Path.home() / suggested), pattern)
        return path or None

    def _choose_files(self) -> list[str]:
        paths, _ = QFileDialog.getOpenFileNames(self.window, "Attach files", str(Path.home()))
        return paths

    def _choose_overflow(self, used: int, limit: int, has_documents: bool) -> str:
        box = QMessageBox(QMessageBox.Information, "This does not fit the context",
                          f"The conversation and this message come to about {used:,} tokens, but the context "
                          f"holds {limit:,}. You can raise the context size in Settings if this Mac has the "
                          "memory, or:", QMessageBox.NoButton, self.window)
        new_chat = box.addButton("Send in a new chat", QMessageBox.AcceptRole)
        trim = box.addButton("Trim the documents to fit", QMessageBox.AcceptRole) if has_documents else None
        box.addButton(QMessageBox.Cancel)
        box.exec()
        clicked = box.clickedButton()
        if clicked is new_chat:
            return OVERFLOW_NEW_CHAT
        if trim is not None and clicked is trim:
            return OVERFLOW_TRIM
        return OVERFLOW_CANCEL
