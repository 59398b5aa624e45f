"""The quick-ask controller: the panel's questions go to the shared engine and into the history.

The engine is shared with the main window and runs one job at a time, so this controller follows
only its own request: `generationStarted(id)` marks which deltas are ours. Each panel conversation
is a normal history conversation, so "Continue in window" just asks the window to open it.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Union

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QObject, QTimer, Signal
from PySide6.QtGui import QClipboard, QCursor, QGuiApplication, QImage, QPixmap, QScreen

from gemma4_mac.attachments import Attachment, AttachmentError, AttachmentStore
from gemma4_mac.engine import GenerationRequest
from gemma4_mac.history import HistoryStore, format_stats, left_out_notice, model_messages, raw_prompt
from gemma4_mac.progress import ReadingProgress
from gemma4_mac.settings import AppSettings

from .engine import Engine
from .quick_ask import QuickAskPanel, key_text

SCREENSHOT_DELAY_MS = 220  # lets the panel disappear before the screen is grabbed
SCREENSHOT_ADVICE = ("The screenshot could not be taken. On macOS, allow Gemma under System Settings › "
                     "Privacy & Security › Screen Recording, then try again.")


def grab_screen(screen: QScreen) -> QPixmap:
    """The whole of `screen` as it looks now (QScreen.grabWindow of the root window)."""
    return screen.grabWindow(0)


def image_png_bytes(image: QImage) -> bytes:
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.WriteOnly)
    image.save(buffer, "PNG")
    buffer.close()
    return bytes(data)


class QuickAskController(QObject):
    continueRequested = Signal(int)  # open this conversation in the main window
    openWindowRequested = Signal()  # nothing asked yet: just bring up the window
    conversationUpdated = Signal(int)  # the history of this conversation changed (refresh the sidebar)
    answerFinished = Signal(str, dict)
    answerFailed = Signal(str)

    def __init__(self, panel: QuickAskPanel, engine: Engine, history: HistoryStore, attachments: AttachmentStore,
                 settings: Union[AppSettings, Callable[[], AppSettings]], *,
                 screen_grabber: Callable[[QScreen], QPixmap] = grab_screen,
                 clipboard: Optional[QClipboard] = None, activate: Optional[Callable[[], object]] = None):
        super().__init__(panel)
        self.panel, self.engine, self.history, self.attachments = panel, engine, history, attachments
        self._settings = settings if callable(settings) else (lambda: settings)
        self.screen_grabber = screen_grabber
        self.clipboard = clipboard
        self.activate = activate  # brings the app forward (macOS: a menu-bar app is not active)
        self.conversation_id: Optional[int] = None
        self.pending: list[Attachment] = []
        self.model_info: Optional[dict] = engine.model_info
        self.loading = False  # set by modelLoading until the model is loaded or failed
        self.request_id: Optional[int] = None
        self.active = False  # the engine is streaming our request
        self.message_id: Optional[int] = None
        self.answer, self.thought = "", ""
        self.tool_calls: list[dict] = []
        self.handover = False  # "Continue in window" pressed while streaming
        self.reading = ReadingProgress()
        self._wire()
        self._show_model()

    @property
    def settings(self) -> AppSettings:
        return self._settings()

    @property
    def streaming(self) -> bool:
        return self.request_id is not None

    def _wire(self) -> None:
        p, e = self.panel, self.engine
        p.submitted.connect(self.ask)
        p.clipboardImageRequested.connect(self.attach_clipboard_image)
        p.screenshotRequested.connect(self.attach_screenshot)
        p.continueRequested.connect(self.continue_in_window)
        p.newRequested.connect(self.new_conversation)
        p.stopRequested.connect(self.stop)
        p.attachmentRemoved.connect(self.remove_attachment)
        e.modelLoading.connect(self._on_model_loading)
        e.modelLoaded.connect(self._on_model_loaded)
        e.modelLoadFailed.connect(self._on_model_failed)
        e.generationStarted.connect(self._on_started)
        e.readingProgress.connect(self._on_reading)
        e.answerDelta.connect(self._on_answer)
        e.thoughtDelta.connect(self._on_thought)
        e.toolCallReceived.connect(self._on_tool_call)
        e.generationFinished.connect(self._on_finished)
        e.generationFailed.connect(self._on_failed)

    # showing

    def show(self, screen: Optional[QScreen] = None) -> None:
        """Bring up the panel near the top of the active screen, ready for typing."""
        if self.activate is not None:
            self.activate()
        self.panel.present(screen)

    def toggle(self) -> None:
        """The hotkey: show the panel, or hide it when it is already up."""
        if self.panel.isVisible() and self.panel.isActiveWindow():
            self.panel.dismiss()
        else:
            self.show()

    # asking

    def ensure_conversation(self) -> int:
        if self.conversation_id is None:
            self.conversation_id = self.history.create_conversation(model=self._model_name()).id
        return self.conversation_id

    def ask(self, text: str) -> bool:
        """Send `text` (and the pending attachments) as the next turn; False when nothing was sent."""
        text = text.strip()
        if self.streaming:
            self.panel.show_notice(f"Gemma is still answering. Press {key_text('stop')} to stop it first.")
            return False
        if not text and not self.pending:
            return False
        if self.loading:  # the turn would be formatted for no model (or the wrong one): wait instead
            self.panel.show_notice("The model is still loading. Ask again in a moment.")
            return False
        cid = self.ensure_conversation()
        attachments, self.pending = self.pending, []
        self.history.add_message(cid, "user", text, attachments=attachments, model=self._model_name())
        self.panel.set_attachments([])
        self.panel.start_exchange(text or ", ".join(a.name for a in attachments))
        settings = self.settings
        messages = self.history.messages(cid)
        request = GenerationRequest(
            conversation_id=cid, messages=model_messages(messages, settings.system_prompt, self.model_info),
            enable_thinking=settings.thinking, sampling=settings.sampling_kwargs(), kv_bits=settings.kv_bits,
            image_token_budget=settings.image_token_budget)
        if self.model_info is not None and not self.model_info.get("chat", True):
            request.raw_prompt = raw_prompt(messages[-1])  # a base model continues the text as written
        notice = left_out_notice(messages, self.model_info)
        if notice:  # never a silent cut: the person learns what this model does not receive
            self.panel.show_notice(notice, 9000)
        self.message_id = self.history.add_message(cid, "assistant", "", partial=True, model=self._model_name()).id
        self.answer, self.thought, self.tool_calls, self.active = "", "", [], False
        self.reading = ReadingProgress("conversation" if len(messages) > 1 else "prompt")
        self.request_id = self.engine.generate(request)
        self.conversationUpdated.emit(cid)
        return True

    def stop(self) -> None:
        if self.streaming:
            self.engine.cancel(self.request_id)

    # attachments

    def attach_clipboard_image(self) -> bool:
        """Attach the image on the clipboard; False (with a note in the panel) when there is none."""
        clipboard = self.clipboard or QGuiApplication.clipboard()
        image = clipboard.image()
        if image.isNull():
            self.panel.show_notice("The clipboard holds no image. Copy one first, or press "
                                   f"{key_text('screenshot')} for a screenshot.")
            return False
        return self.attach_image(image, time.strftime("Clipboard image %H.%M.%S.png"))

    def attach_screenshot(self) -> None:
        """Hide the panel, grab the screen it was on, attach the picture and show the panel again."""
        screen = self.panel.screen() if self.panel.isVisible() else None
        screen = screen or QGuiApplication.screenAt(QCursor.pos()) or QGuiApplication.primaryScreen()
        self.panel.hide()
        QTimer.singleShot(SCREENSHOT_DELAY_MS, lambda: self._take_screenshot(screen))

    def _take_screenshot(self, screen: Optional[QScreen]) -> None:
        pixmap = self.screen_grabber(screen) if screen is not None else QPixmap()
        self.panel.present(screen)
        if pixmap.isNull():
            self.panel.show_notice(SCREENSHOT_ADVICE)
            return
        self.attach_image(pixmap.toImage(), time.strftime("Screenshot %H.%M.%S.png"))

    def attach_image(self, image: QImage, name: str) -> bool:
        cid = self.ensure_conversation()
        try:
            self.pending.append(self.attachments.import_bytes(cid, image_png_bytes(image), name, "image"))
        except (AttachmentError, OSError) as error:
            self.panel.show_notice(str(error))
            return False
        self._show_pending()
        return True

    def remove_attachment(self, index: int) -> None:
        if 0 <= index < len(self.pending):
            self.attachments.remove(self.pending.pop(index))
            self._show_pending()

    def _show_pending(self) -> None:
        items = []
        for a in self.pending:
            thumb = QPixmap(str(a.thumbnail)) if a.thumbnail is not None else None
            items.append((a.name, thumb))
        self.panel.set_attachments(items)

    # conversations

    def new_conversation(self) -> None:
        """Forget the panel's conversation (it stays in the history) and clear the panel."""
        if self.streaming:
            self.engine.cancel(self.request_id)
        self._drop_if_empty()
        self.conversation_id = None
        self.pending = []
        self.panel.clear()
        self.panel.input.setFocus()

    def continue_in_window(self) -> None:
        """Hand the conversation to the main window (after stopping a running answer)."""
        self.panel.dismiss()
        if self.streaming:
            self.handover = True
            self.engine.cancel(self.request_id)
            return
        cid = self.conversation_id
        if cid is not None and self.history.messages(cid):
            self.continueRequested.emit(cid)
        else:
            self.openWindowRequested.emit()

    def _drop_if_empty(self) -> None:
        cid = self.conversation_id
        if cid is not None and not self.history.messages(cid):
            for attachment in self.pending:
                self.attachments.remove(attachment)
            self.history.delete_conversation(cid)
            self.attachments.remove_conversation(cid)

    def shutdown(self) -> None:
        """Keep an answer cut off by quitting (marked partial) and drop an unused conversation."""
        if self.streaming and self.message_id is not None:
            self.history.update_message(self.message_id, content=self.answer, thought=self.thought,
                                        tool_calls=self.tool_calls, partial=True)
            self.request_id = None
        self._drop_if_empty()

    # engine signals

    def _on_started(self, request_id: int) -> None:
        self.active = request_id == self.request_id

    def _on_reading(self, read: int, total: int) -> None:
        if self.active and self.reading.update(read, total) and not self.answer:
            self.panel.show_reading(self.reading.text(), self.reading.fraction)

    def _on_answer(self, text: str) -> None:
        if self.active:
            self.answer += text
            self.panel.append_answer(text)

    def _on_thought(self, text: str) -> None:
        if self.active:
            self.thought += text
            self.panel.show_thinking()

    def _on_tool_call(self, call: dict) -> None:
        if self.active:
            self.tool_calls.append(call)

    def _ours(self) -> bool:
        # a turn refused before it started (no model loaded) never sends generationStarted
        return self.active or (self.streaming and self.engine.model_info is None)

    def _on_finished(self, stats: dict) -> None:
        if not self._ours():
            return
        stats = dict(stats)
        partial = stats.get("finish_reason") == "cancelled"
        self.history.update_message(self.message_id, content=self.answer, thought=self.thought,
                                    tool_calls=self.tool_calls, stats=stats, partial=partial)
        self.panel.finish(format_stats(stats))
        self._end_turn()
        self.answerFinished.emit(self.answer, stats)

    def _on_failed(self, message: str) -> None:
        if not self._ours():
            return
        cid = self.conversation_id
        if self.answer or self.thought:
            self.history.update_message(self.message_id, content=self.answer, thought=self.thought,
                                        tool_calls=self.tool_calls, partial=True)
        else:
            stored = [m for m in self.history.messages(cid) if m.id == self.message_id]
            if stored:
                self.history.delete_messages_from(cid, stored[0].position)
        self.panel.show_error(message)
        self._end_turn()
        self.answerFailed.emit(message)

    def _end_turn(self) -> None:
        cid = self.conversation_id
        self.request_id, self.active, self.message_id = None, False, None
        self.conversationUpdated.emit(cid)
        if self.handover:
            self.handover = False
            self.continueRequested.emit(cid)

    # model

    def _model_name(self) -> str:
        return (self.model_info or {}).get("name", "")

    def _show_model(self) -> None:
        info = self.model_info
        if info is None:
            self.panel.set_model_label("No model loaded")
        elif info.get("is_starter"):
            self.panel.set_model_label("Starter model · completes text, not a chat model")
        else:
            self.panel.set_model_label(info.get("name", "Model"))

    def _on_model_loading(self, _path: str) -> None:
        self.model_info, self.loading = None, True
        self.panel.set_model_label("Loading the model…")

    def _on_model_loaded(self, info: dict) -> None:
        self.model_info, self.loading = dict(info), False
        self._show_model()

    def _on_model_failed(self, message: str) -> None:
        self.model_info, self.loading = None, False
        self.panel.set_model_label("The model could not be loaded")
