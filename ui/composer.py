"""The composer: text, attachment chips, voice recording, thinking switch, token meter, send and stop."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QMimeData, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QKeyEvent, QPainter
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QMenu, QPlainTextEdit, QPushButton, QScrollArea,
                               QSizePolicy, QToolButton, QVBoxLayout, QWidget)

from gemma4_mac.attachments import Attachment
from gemma4_mac.documents import ENCODING_CHOICES, encoding_label, is_long_paste

from . import icons
from .theme import Palette, current_palette
from .widgets import KIND_GLYPHS, IconButton, attachment_subtitle, glyph_tile, load_image, rounded_pixmap

MAX_LINES = 8


def local_files(mime: QMimeData) -> list[str]:
    return [url.toLocalFile() for url in mime.urls() if url.isLocalFile()] if mime.hasUrls() else []


class PromptEdit(QPlainTextEdit):
    """Multi-line input that grows with its text. Enter sends; Shift+Enter starts a new line.

    Pasted or dropped images, files and long text are handed on as signals instead of inserted.
    """

    submitted = Signal()
    filesReceived = Signal(list)
    imageReceived = Signal(QImage)
    longTextReceived = Signal(str)

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setObjectName("promptEdit")
        self.setPlaceholderText("Message Gemma…")
        self.setFrameShape(QFrame.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarAsNeeded)
        self.setTabChangesFocus(True)
        self.document().setDocumentMargin(2)
        self.textChanged.connect(self._fit_height)
        self._fit_height()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key_Return, Qt.Key_Enter) and not event.modifiers() & (Qt.ShiftModifier | Qt.AltModifier):
            self.submitted.emit()
            return
        super().keyPressEvent(event)

    def canInsertFromMimeData(self, source: QMimeData) -> bool:
        return source.hasImage() or bool(local_files(source)) or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source: QMimeData) -> None:
        files = local_files(source)
        if files:
            self.filesReceived.emit(files)
        elif source.hasImage():
            image = QImage(source.imageData())
            if not image.isNull():
                self.imageReceived.emit(image)
        elif source.hasText() and is_long_paste(source.text()):
            self.longTextReceived.emit(source.text())
        else:
            super().insertFromMimeData(source)

    def _fit_height(self) -> None:
        line = self.fontMetrics().lineSpacing()
        lines = max(1, min(MAX_LINES, int(self.document().size().height())))
        self.setFixedHeight(int(lines * line + 2 * self.document().documentMargin() + 6))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_height()


class AttachmentChip(QFrame):
    """A pending attachment: thumbnail, name, facts and a remove button. A text file's chip says which
    encoding it was read in (tooltip) and offers the others on right-click."""

    removeClicked = Signal()
    encodingChosen = Signal(str)
    HEIGHT = 54

    def __init__(self, attachment: Attachment, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.attachment = attachment
        self.setObjectName("chip")
        self.setFixedHeight(self.HEIGHT)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(7, 7, 6, 7)
        layout.setSpacing(9)
        self.thumb = QLabel()
        self.thumb.setFixedSize(40, 40)
        layout.addWidget(self.thumb)
        text = QVBoxLayout()
        text.setSpacing(0)
        name = attachment.name if len(attachment.name) <= 26 else attachment.name[:23] + "…"
        self.title = QLabel(name)
        self.title.setObjectName("chipTitle")
        self.title.setToolTip(attachment.name)
        self.meta = QLabel(attachment_subtitle(attachment.kind, attachment.meta, attachment.name))
        self.meta.setObjectName("chipMeta")
        text.addWidget(self.title)
        text.addWidget(self.meta)
        layout.addLayout(text)
        self.remove_button = IconButton("close", f"Remove {attachment.name}", size=12, role="window",
                                        object_name="chipRemove")
        self.remove_button.setFixedSize(18, 18)
        self.remove_button.clicked.connect(self.removeClicked)
        layout.addWidget(self.remove_button, 0, Qt.AlignTop)
        encoding = attachment.meta.get("encoding") if attachment.kind == "text" else None
        if encoding:
            self.setToolTip(f"{attachment.name} was read as {encoding_label(encoding)}. "
                            "Right-click to read it with another encoding.")
        self.unreadable: Optional[str] = None
        self.base_tooltip = self.toolTip()
        self.apply_palette(current_palette())

    def set_unreadable(self, reason: Optional[str]) -> None:
        """Mark the chip of a file the loaded model cannot take (`reason` says why), or clear the mark."""
        self.unreadable = reason
        subtitle = attachment_subtitle(self.attachment.kind, self.attachment.meta, self.attachment.name)
        self.meta.setText("Left out: this model cannot read it" if reason else subtitle)
        self.setToolTip(f"{reason} It will be left out when you send." if reason else self.base_tooltip)
        self.apply_palette(current_palette())

    def encoding_menu(self) -> Optional[QMenu]:
        """The menu of encodings for a text attachment (None for other kinds); the current one is checked."""
        current = self.attachment.meta.get("encoding") if self.attachment.kind == "text" else None
        if not current:
            return None
        menu = QMenu(self)
        menu.addSection("Read this file as")
        for codec, label in ENCODING_CHOICES:
            action = menu.addAction(label)
            action.setCheckable(True)
            action.setChecked(encoding_label(codec) == encoding_label(current))
            action.triggered.connect(lambda _checked=False, c=codec: self.encodingChosen.emit(c))
        return menu

    def contextMenuEvent(self, event) -> None:
        menu = self.encoding_menu()
        if menu is None:
            super().contextMenuEvent(event)
            return
        menu.exec(event.globalPos())

    def apply_palette(self, palette: Palette) -> None:
        if getattr(self, "unreadable", None):
            self.setStyleSheet(f"#chip {{ border: 1px dashed {palette.warning}; }}")
            self.meta.setStyleSheet(f"color: {palette.warning};")
        else:
            self.setStyleSheet("")
            self.meta.setStyleSheet("")
        thumb = self.attachment.thumbnail
        image = load_image(thumb, 400) if thumb and Path(thumb).is_file() else QImage()
        if image.isNull():
            self.thumb.setPixmap(glyph_tile(KIND_GLYPHS.get(self.attachment.kind, "document"), 40, palette))
        else:
            self.thumb.setPixmap(rounded_pixmap(image, QSize(40, 40), 7))


class LevelMeter(QWidget):
    """Recent input levels as a row of rounded bars, newest on the right."""

    BARS = 36

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.levels: deque[float] = deque([0.0] * self.BARS, maxlen=self.BARS)
        self.setMinimumSize(140, 26)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)

    def set_level(self, level: float) -> None:
        self.levels.append(level)
        self.update()

    def reset(self) -> None:
        self.levels.extend([0.0] * self.BARS)
        self.update()

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        p.setPen(Qt.NoPen)
        p.setBrush(QColor(current_palette().accent))
        width = self.width() / self.BARS
        for i, level in enumerate(self.levels):
            height = max(3.0, level * self.height())
            rect = QRectF(i * width + width * 0.25, (self.height() - height) / 2, width * 0.5, height)
            p.drawRoundedRect(rect, width * 0.25, width * 0.25)
        p.end()


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


class RecordingBar(QWidget):
    """Shown while recording: red dot, timer against the 30 s cap, level meter, cancel and stop."""

    stopClicked = Signal()
    cancelClicked = Signal()

    def __init__(self, max_seconds: float, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setObjectName("recordingBar")
        self.max_seconds = max_seconds
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 0, 2)
        layout.setSpacing(10)
        self.dot = QLabel()
        self.dot.setFixedSize(10, 10)
        self.time_label = QLabel()
        self.time_label.setObjectName("recordingTime")
        self.meter = LevelMeter()
        self.cancel_button = IconButton("trash", "Discard recording", size=16)
        self.stop_button = QPushButton("Done")
        self.stop_button.setObjectName("primary")
        self.stop_button.setCursor(Qt.PointingHandCursor)
        self.stop_button.clicked.connect(self.stopClicked)
        self.cancel_button.clicked.connect(self.cancelClicked)
        layout.addWidget(self.dot)
        layout.addWidget(self.time_label)
        layout.addWidget(self.meter, 1)
        layout.addWidget(self.cancel_button)
        layout.addWidget(self.stop_button)
        self.set_elapsed(0.0)
        self.apply_palette(current_palette())

    def set_elapsed(self, seconds: float) -> None:
        self.time_label.setText(f"{_clock(seconds)} / {_clock(self.max_seconds)}")

    def apply_palette(self, palette: Palette) -> None:
        self.dot.setStyleSheet(f"background: {palette.danger}; border-radius: 5px;")


class Composer(QFrame):
    """The message box at the bottom of the chat."""

    submitted = Signal(str)
    stopClicked = Signal()
    filesReceived = Signal(list)
    imageReceived = Signal(QImage)
    longTextReceived = Signal(str)
    attachmentRemoved = Signal(int)
    attachmentEncodingChosen = Signal(int, str)
    attachClicked = Signal()
    recordClicked = Signal()
    recordStopClicked = Signal()
    recordCancelClicked = Signal()
    thinkingToggled = Signal(bool)
    toolsClicked = Signal()
    textEdited = Signal(str)

    def __init__(self, max_record_seconds: float = 30.0, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setObjectName("composer")
        self.generating = False
        self.attachments: list[Attachment] = []
        self.chips: list[AttachmentChip] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 10, 10, 8)
        layout.setSpacing(8)
        self.chip_row_widget = QWidget()
        self.chip_row_widget.setObjectName("chipRow")
        self.chip_row = QHBoxLayout(self.chip_row_widget)
        self.chip_row.setContentsMargins(0, 0, 0, 0)
        self.chip_row.setSpacing(8)
        self.chip_row.addStretch(1)
        # chips that do not fit the width scroll sideways instead of widening the window
        self.chip_scroll = QScrollArea()
        self.chip_scroll.setObjectName("chipScroll")
        self.chip_scroll.setWidget(self.chip_row_widget)
        self.chip_scroll.setWidgetResizable(True)
        self.chip_scroll.setFrameShape(QFrame.NoFrame)
        self.chip_scroll.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.chip_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
        self.chip_scroll.setStyleSheet("#chipScroll, #chipRow { background: transparent; }")
        self.chip_scroll.hide()
        layout.addWidget(self.chip_scroll)
        self.edit = PromptEdit()
        self.recording_bar = RecordingBar(max_record_seconds)
        self.recording_bar.hide()
        layout.addWidget(self.edit)
        layout.addWidget(self.recording_bar)
        bottom = QHBoxLayout()
        bottom.setSpacing(4)
        self.attach_button = IconButton("paperclip", "Attach files (images, PDFs, text, audio, video)", size=19)
        self.mic_button = IconButton("mic", "Record a voice message (up to 30 s)", size=19)
        self.think_button = QPushButton("Think")
        self.think_button.setObjectName("pill")
        self.think_button.setCheckable(True)
        self.think_button.setCursor(Qt.PointingHandCursor)
        self.think_button.setToolTip("Let the model think before it answers")
        self.think_button.setIconSize(QSize(14, 14))
        self.tools_button = QPushButton("Tools")  # shown when tools are set up in Settings
        self.tools_button.setObjectName("pill")
        self.tools_button.setCursor(Qt.PointingHandCursor)
        self.tools_button.setToolTip("Choose the tools the model may use in this chat")
        self.tools_button.hide()
        self.token_label = QLabel()
        self.token_label.setObjectName("tokenCount")
        self.send_button = QToolButton()
        self.send_button.setObjectName("sendButton")
        self.send_button.setFixedSize(32, 32)
        self.send_button.setIconSize(QSize(18, 18))
        self.send_button.setCursor(Qt.PointingHandCursor)
        bottom.addWidget(self.attach_button)
        bottom.addWidget(self.mic_button)
        bottom.addSpacing(4)
        bottom.addWidget(self.think_button)
        bottom.addWidget(self.tools_button)
        bottom.addStretch(1)
        bottom.addWidget(self.token_label)
        bottom.addSpacing(8)
        bottom.addWidget(self.send_button)
        layout.addLayout(bottom)

        self.edit.submitted.connect(self._submit)
        self.edit.filesReceived.connect(self.filesReceived)
        self.edit.imageReceived.connect(self.imageReceived)
        self.edit.longTextReceived.connect(self.longTextReceived)
        self.edit.textChanged.connect(self._on_text_changed)
        self.send_button.clicked.connect(self._send_or_stop)
        self.attach_button.clicked.connect(self.attachClicked)
        self.mic_button.clicked.connect(self.recordClicked)
        self.think_button.toggled.connect(self._on_think_toggled)
        self.tools_button.clicked.connect(self.toolsClicked)
        self.recording_bar.stopClicked.connect(self.recordStopClicked)
        self.recording_bar.cancelClicked.connect(self.recordCancelClicked)
        self.apply_palette(current_palette())

    # state from the controller

    @property
    def text(self) -> str:
        return self.edit.toPlainText()

    def set_text(self, text: str) -> None:
        self.edit.setPlainText(text)
        cursor = self.edit.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        self.edit.setTextCursor(cursor)

    def set_generating(self, generating: bool) -> None:
        self.generating = generating
        self._update_send_button()

    def set_tools_available(self, available: bool) -> None:
        self.tools_button.setVisible(available)

    def set_thinking(self, on: bool) -> None:
        self.think_button.blockSignals(True)
        self.think_button.setChecked(on)
        self.think_button.blockSignals(False)
        self._update_think_icon()

    def set_attachments(self, attachments: list[Attachment]) -> None:
        for chip in self.chips:
            chip.setParent(None)
            chip.deleteLater()
        self.attachments = list(attachments)
        self.chips = []
        for index, attachment in enumerate(self.attachments):
            chip = AttachmentChip(attachment)
            chip.removeClicked.connect(lambda i=index: self.attachmentRemoved.emit(i))
            chip.encodingChosen.connect(lambda codec, i=index: self.attachmentEncodingChosen.emit(i, codec))
            self.chip_row.insertWidget(index, chip)
            self.chips.append(chip)
        self.chip_scroll.setVisible(bool(self.chips))
        self._fit_chip_row()
        self._update_send_button()

    def mark_unreadable(self, reasons: list[Optional[str]]) -> None:
        """For each chip, why the loaded model cannot take its file (None: it can)."""
        for chip, reason in zip(self.chips, reasons):
            chip.set_unreadable(reason)

    def _fit_chip_row(self) -> None:
        """As tall as a chip, plus the scroll bar when the chips are wider than the composer."""
        wide = self.chip_row_widget.sizeHint().width() > self.chip_scroll.viewport().width()
        bar = self.chip_scroll.horizontalScrollBar().sizeHint().height() if wide else 0
        self.chip_scroll.setFixedHeight(AttachmentChip.HEIGHT + bar + 2)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self.chips:
            self._fit_chip_row()

    def set_token_count(self, used: int, limit: int, estimated: bool = False) -> None:
        """`used` of `limit` tokens; "about" while `used` is an estimate (no tokenizer count yet)."""
        about = "about " if estimated and used else ""
        self.token_label.setText(f"{about}{_short(used)} / {_short(limit)} tokens")
        over = used > limit
        if self.token_label.property("over") != over:
            self.token_label.setProperty("over", over)
            self.token_label.style().unpolish(self.token_label)
            self.token_label.style().polish(self.token_label)
        if over:
            tip = "The conversation no longer fits the context; send to see the choices."
        elif estimated:
            tip = "An estimate of the conversation and this message; the model's tokenizer is counting."
        else:
            tip = "Tokens of the conversation and this message, counted by the model's tokenizer."
        self.token_label.setToolTip(tip)

    def set_recording(self, recording: bool) -> None:
        self.edit.setVisible(not recording)
        self.recording_bar.setVisible(recording)
        self.recording_bar.meter.reset()
        self.recording_bar.set_elapsed(0.0)
        self.mic_button.setEnabled(not recording)
        self._update_send_button()

    def set_level(self, level: float) -> None:
        self.recording_bar.meter.set_level(level)

    def set_elapsed(self, seconds: float) -> None:
        self.recording_bar.set_elapsed(seconds)

    def set_drop_target(self, active: bool) -> None:
        self.setProperty("dropTarget", active)
        self.style().unpolish(self)
        self.style().polish(self)

    # internals

    def _submit(self) -> None:
        if self.generating or not self._can_send():
            return
        self.submitted.emit(self.text)

    def _send_or_stop(self) -> None:
        if self.generating:
            self.stopClicked.emit()
        else:
            self._submit()

    def _can_send(self) -> bool:
        return bool(self.text.strip() or self.attachments) and not self.recording_bar.isVisibleTo(self)

    def _on_text_changed(self) -> None:
        self._update_send_button()
        self.textEdited.emit(self.text)

    def _on_think_toggled(self, on: bool) -> None:
        self._update_think_icon()
        self.thinkingToggled.emit(on)

    def _update_think_icon(self) -> None:
        palette = current_palette()
        color = palette.accent if self.think_button.isChecked() else palette.text_secondary
        self.think_button.setIcon(icons.icon("lightbulb", color, 14))

    def _update_send_button(self) -> None:
        palette = current_palette()
        if self.generating:
            self.send_button.setObjectName("stopButton")
            self.send_button.setIcon(icons.icon("stop", palette.window, 18))
            self.send_button.setToolTip("Stop generating")
            self.send_button.setEnabled(True)
        else:
            self.send_button.setObjectName("sendButton")
            enabled = self._can_send()
            color = palette.window if enabled else ("#9A9AA0" if palette.dark else "#FFFFFF")
            self.send_button.setIcon(icons.icon("send", color, 18))
            self.send_button.setToolTip("Send (Enter)")
            self.send_button.setEnabled(self._can_send())
        self.send_button.style().unpolish(self.send_button)
        self.send_button.style().polish(self.send_button)

    def apply_palette(self, palette: Palette) -> None:
        self._update_send_button()
        self._update_think_icon()


def _short(n: int) -> str:
    if n >= 1000:
        return f"{n / 1000:.1f}K".replace(".0K", "K")
    return str(n)
