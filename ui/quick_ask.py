"""The quick-ask panel: a floating, frameless Spotlight-like box near the top of the active screen.

View only: `QuickAskController` (ui/quick_ask_controller.py) talks to the engine and history.
Keys: Enter asks, Esc hides, ⌘I attaches the clipboard's image, ⌘S a fresh screenshot,
⌘↩ continues in the main window, ⌘N starts a new question, ⌘. stops the answer.
(Qt spells ⌘ as Ctrl, so these are Ctrl+… on Linux.)
"""

from __future__ import annotations

from typing import Callable, Optional

from PySide6.QtCore import QEvent, QObject, QPoint, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QCursor, QGuiApplication, QKeyEvent, QKeySequence, QPixmap, QScreen
from PySide6.QtWidgets import (QFrame, QGraphicsDropShadowEffect, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QScrollArea, QSizePolicy, QVBoxLayout, QWidget)

from . import icons
from .message_widgets import MarkdownView
from .theme import Palette, current_palette
from .widgets import ElidedLabel, IconButton, ReadingBar

PANEL_WIDTH = 680
ANSWER_MAX_HEIGHT = 420
SHADOW_MARGIN = 18
TOP_FRACTION = 0.16  # the panel's top edge sits this far down the screen, like Spotlight
RENDER_INTERVAL_MS = 40
STREAM_CURSOR = " ▍"
KEYS = {
    "dismiss": QKeySequence(Qt.Key_Escape),
    "clipboard_image": QKeySequence("Ctrl+I"),
    "screenshot": QKeySequence("Ctrl+S"),
    "continue": QKeySequence("Ctrl+Return"),
    "new": QKeySequence("Ctrl+N"),
    "stop": QKeySequence("Ctrl+."),
}


def key_text(name: str) -> str:
    """A shortcut as this platform writes it ("⌘I" on a Mac, "Ctrl+I" elsewhere)."""
    return KEYS[name].toString(QKeySequence.NativeText)


def hint_text() -> str:
    return (f"↩ ask · {key_text('clipboard_image')} clipboard image · {key_text('screenshot')} screenshot · "
            f"{key_text('dismiss')} close")


class _Chip(QFrame):
    """An attachment: thumbnail, name and a remove button."""

    def __init__(self, index: int, name: str, thumbnail: Optional[QPixmap], panel: "QuickAskPanel"):
        super().__init__()
        self.setObjectName("quickAskChip")
        row = QHBoxLayout(self)
        row.setContentsMargins(4, 3, 4, 3)
        row.setSpacing(6)
        if thumbnail is not None and not thumbnail.isNull():
            picture = QLabel()
            picture.setPixmap(thumbnail.scaled(QSize(26, 26), Qt.KeepAspectRatioByExpanding,
                                               Qt.SmoothTransformation))
            picture.setFixedSize(26, 26)
            row.addWidget(picture)
        label = QLabel(name)
        label.setObjectName("quickAskChipName")
        row.addWidget(label)
        remove = IconButton("close", f"Remove {name}", size=12)
        remove.clicked.connect(lambda: panel.attachmentRemoved.emit(index))
        row.addWidget(remove)


class QuickAskPanel(QWidget):
    """The floating panel. Signals carry what the person did; the controller decides what happens."""

    submitted = Signal(str)
    dismissed = Signal()
    continueRequested = Signal()
    newRequested = Signal()
    clipboardImageRequested = Signal()
    screenshotRequested = Signal()
    stopRequested = Signal()
    attachmentRemoved = Signal(int)

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent, Qt.Tool | Qt.FramelessWindowHint | Qt.WindowStaysOnTopHint)
        self.setObjectName("quickAskPanel")
        self.setWindowTitle("Quick Ask")
        self.setAttribute(Qt.WA_TranslucentBackground)
        self.answer = ""
        self.streaming = False
        self._render_timer = QTimer(self, singleShot=True, interval=RENDER_INTERVAL_MS, timeout=self._render)
        self._notice_timer = QTimer(self, singleShot=True, timeout=self._clear_notice)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(SHADOW_MARGIN, SHADOW_MARGIN, SHADOW_MARGIN, SHADOW_MARGIN)
        self.frame = QFrame()
        self.frame.setObjectName("quickAskFrame")
        shadow = QGraphicsDropShadowEffect(self.frame, blurRadius=36, offset=QPoint(0, 10))
        shadow.setColor(QColor(0, 0, 0, 90))
        self.frame.setGraphicsEffect(shadow)
        outer.addWidget(self.frame)
        column = QVBoxLayout(self.frame)
        column.setContentsMargins(16, 12, 12, 10)
        column.setSpacing(8)
        column.addLayout(self._input_row())
        self.chips = QHBoxLayout()
        self.chips.setSpacing(6)
        self.chips_holder = QWidget()
        self.chips_holder.setLayout(self.chips)
        self.chips.setContentsMargins(0, 0, 0, 0)
        self.chips_holder.hide()
        column.addWidget(self.chips_holder)
        self.divider = QFrame()
        self.divider.setObjectName("quickAskDivider")
        self.divider.setFixedHeight(1)
        column.addWidget(self.divider)
        column.addWidget(self._answer_area())
        self.hint_label = QLabel(hint_text())  # a line of its own: it is never cut off by the buttons
        self.hint_label.setObjectName("quickAskMeta")
        column.addWidget(self.hint_label)
        column.addLayout(self._footer())
        self._shortcuts()
        self.set_answer_visible(False)
        self.setFixedWidth(PANEL_WIDTH + 2 * SHADOW_MARGIN)
        self.apply_palette(current_palette())

    # layout

    def _input_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.setSpacing(8)
        spark = QLabel()
        spark.setPixmap(icons.avatar_pixmap(22))
        spark.setFixedSize(22, 22)
        row.addWidget(spark)
        self.input = QLineEdit()
        self.input.setObjectName("quickAskInput")
        self.input.setPlaceholderText("Ask Gemma…")
        self.input.returnPressed.connect(self._submit)
        self.input.installEventFilter(self)
        row.addWidget(self.input, 1)
        self.clipboard_button = IconButton(
            "paperclip", f"Attach the clipboard's image ({key_text('clipboard_image')})", size=17)
        self.clipboard_button.clicked.connect(self.clipboardImageRequested)
        self.screenshot_button = IconButton(
            "image", f"Attach a screenshot of this screen ({key_text('screenshot')})", size=17)
        self.screenshot_button.clicked.connect(self.screenshotRequested)
        self.stop_button = IconButton("stop", f"Stop the answer ({key_text('stop')})", size=17)
        self.stop_button.clicked.connect(self.stopRequested)
        self.stop_button.hide()
        for button in (self.clipboard_button, self.screenshot_button, self.stop_button):
            row.addWidget(button)
        return row

    def _answer_area(self) -> QScrollArea:
        body = QWidget()
        body.setObjectName("quickAskBody")
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 4, 6, 4)
        layout.setSpacing(8)
        self.question_label = QLabel()
        self.question_label.setObjectName("quickAskQuestion")
        self.question_label.setWordWrap(True)
        self.thinking_label = QLabel("Thinking…")
        self.thinking_label.setObjectName("quickAskMeta")
        self.thinking_label.hide()
        self.reading = ReadingBar("quickAskMeta")
        self.markdown = MarkdownView(size=14)
        self.error_label = QLabel()
        self.error_label.setObjectName("quickAskError")
        self.error_label.setWordWrap(True)
        self.error_label.hide()
        self.stats_label = QLabel()
        self.stats_label.setObjectName("quickAskMeta")
        self.stats_label.hide()
        for widget in (self.question_label, self.reading, self.thinking_label, self.markdown,
                       self.error_label, self.stats_label):
            layout.addWidget(widget)
        layout.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setObjectName("quickAskScroll")
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.scroll.setWidget(body)
        self.scroll.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        return self.scroll

    def _footer(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.setSpacing(8)
        self.model_label = ElidedLabel("No model loaded")  # shortened with "…", never cut, beside the buttons
        self.model_label.setObjectName("quickAskMeta")
        row.addWidget(self.model_label, 1)
        self.new_button = QPushButton("New")
        self.new_button.setObjectName("pill")
        self.new_button.setToolTip(f"Start a new question ({key_text('new')})")
        self.new_button.clicked.connect(self.newRequested)
        self.continue_button = QPushButton("Continue in window")
        self.continue_button.setObjectName("pill")
        self.continue_button.setToolTip(f"Open this conversation in the main window ({key_text('continue')})")
        self.continue_button.clicked.connect(self.continueRequested)
        row.addWidget(self.new_button)
        row.addWidget(self.continue_button)
        return row

    def _shortcuts(self) -> None:
        # matched by hand in key events, not QShortcut: a Tool window is often not the active window
        # (it opens over another app) and QLineEdit would otherwise take ⌘↩ as a plain Return
        self.key_actions: dict[str, Callable[[], None]] = {
            "dismiss": self.dismiss, "clipboard_image": self.clipboardImageRequested.emit,
            "screenshot": self.screenshotRequested.emit, "continue": self.continueRequested.emit,
            "new": self.newRequested.emit, "stop": self.stopRequested.emit}

    def _handle_key(self, event: QKeyEvent) -> bool:
        pressed = QKeySequence(event.keyCombination())
        if event.key() == Qt.Key_Enter:  # the keypad's Enter counts as Return
            pressed = QKeySequence(event.modifiers() | Qt.Key_Return)
        for name, sequence in KEYS.items():
            if pressed.matches(sequence) == QKeySequence.ExactMatch:
                self.key_actions[name]()
                return True
        return False

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if not self._handle_key(event):
            super().keyPressEvent(event)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.input and event.type() == QEvent.KeyPress:
            if event.matches(QKeySequence.Paste):
                # ⌘V with only an image on the clipboard attaches it instead of pasting nothing
                mime = QGuiApplication.clipboard().mimeData()
                if mime is not None and mime.hasImage() and not mime.hasText():
                    self.clipboardImageRequested.emit()
                    return True
            elif self._handle_key(event):
                return True
        return super().eventFilter(watched, event)

    # showing and hiding

    def present(self, screen: Optional[QScreen] = None) -> None:
        """Show the panel centred near the top of `screen` (default: the screen under the mouse)."""
        screen = screen or QGuiApplication.screenAt(QCursor.pos()) or QGuiApplication.primaryScreen()
        self.adjustSize()
        if screen is not None:
            area = screen.availableGeometry()
            x = area.left() + (area.width() - self.width()) // 2
            y = area.top() + int(area.height() * TOP_FRACTION) - SHADOW_MARGIN
            self.move(x, max(area.top(), y))
        self.show()
        self.raise_()
        self.activateWindow()
        self.input.setFocus(Qt.ActiveWindowFocusReason)
        self.input.selectAll()

    def dismiss(self) -> None:
        """Hide (Esc). A running answer keeps streaming into the conversation."""
        self.hide()
        self.dismissed.emit()

    # content

    def set_model_label(self, text: str) -> None:
        self.model_label.set_full_text(text)

    def show_notice(self, text: str, milliseconds: int = 5000) -> None:
        """A short note in the footer (no image on the clipboard, a screenshot refused...)."""
        self.hint_label.setText(text)
        self.hint_label.setObjectName("quickAskNotice")
        self.hint_label.setStyleSheet(f"color: {current_palette().warning}; font-size: 11px;")
        self.hint_label.setWordWrap(True)
        self._notice_timer.start(milliseconds)

    def _clear_notice(self) -> None:
        self.hint_label.setText(hint_text())
        self.hint_label.setObjectName("quickAskMeta")
        self.hint_label.setStyleSheet("")
        self.hint_label.setWordWrap(False)

    def set_attachments(self, items: list[tuple[str, Optional[QPixmap]]]) -> None:
        """Chips for the pending attachments: (name, thumbnail or None)."""
        while self.chips.count():
            widget = self.chips.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        for index, (name, thumbnail) in enumerate(items):
            self.chips.addWidget(_Chip(index, name, thumbnail, self))
        self.chips.addStretch(1)
        self.chips_holder.setVisible(bool(items))
        self._fit()

    def set_answer_visible(self, visible: bool) -> None:
        self.divider.setVisible(visible)
        self.scroll.setVisible(visible)
        self._fit()

    def start_exchange(self, question: str) -> None:
        """Show `question` and an empty, streaming answer under it."""
        self.question_label.setText(question)
        self.question_label.setVisible(bool(question))
        self.answer = ""
        self.streaming = True
        self.reading.hide()
        self.thinking_label.hide()
        self.error_label.hide()
        self.stats_label.hide()
        self.stop_button.show()
        self.input.clear()
        self.set_answer_visible(True)
        self._render()

    def show_reading(self, text: str, fraction: float) -> None:
        """How far the model has read a long prompt (until the answer starts)."""
        if not self.answer:
            self.reading.set_progress(text, fraction)
            self._fit()

    def show_thinking(self) -> None:
        self.reading.hide()
        if not self.answer:
            self.thinking_label.show()

    def append_answer(self, text: str) -> None:
        self.reading.hide()
        self.thinking_label.hide()
        self.answer += text
        if not self._render_timer.isActive():
            self._render_timer.start()

    def finish(self, stats_text: str = "") -> None:
        self.streaming = False
        self.reading.hide()
        self.stop_button.hide()
        self.thinking_label.hide()
        self.stats_label.setText(stats_text)
        self.stats_label.setVisible(bool(stats_text))
        self._render()

    def show_error(self, message: str) -> None:
        self.streaming = False
        self.reading.hide()
        self.stop_button.hide()
        self.thinking_label.hide()
        self.error_label.setText(message)
        self.error_label.show()
        self.set_answer_visible(True)
        self._render()

    def clear(self) -> None:
        """Back to an empty panel (a new question)."""
        self.answer = ""
        self.streaming = False
        self.input.clear()
        self.question_label.clear()
        self.reading.hide()
        self.error_label.hide()
        self.stats_label.hide()
        self.stop_button.hide()
        self.markdown.set_markdown("")
        self.set_attachments([])
        self.set_answer_visible(False)

    def _submit(self) -> None:
        text = self.input.text().strip()
        if text or self.chips_holder.isVisible():
            self.submitted.emit(text)

    def _render(self) -> None:
        text = self.answer + (STREAM_CURSOR if self.streaming else "")
        self.markdown.set_markdown(text)
        self.markdown.setVisible(bool(text.strip()))
        self._fit()
        bar = self.scroll.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _fit(self) -> None:
        """Grow the answer area with its content up to ANSWER_MAX_HEIGHT, then scroll."""
        body = self.scroll.widget()
        if body is not None and self.scroll.isVisibleTo(self):
            layout = body.layout()
            width = self.scroll.viewport().width()
            # wrapped labels are taller when narrow: measure at the width they will really have
            wanted = (layout.totalHeightForWidth(width) if layout.hasHeightForWidth() and width > 0
                      else layout.sizeHint().height())
            wanted = max(wanted, layout.totalMinimumSize().height()) + 4
            self.scroll.setFixedHeight(max(48, min(wanted, ANSWER_MAX_HEIGHT)))
        self.adjustSize()

    def apply_palette(self, palette: Palette) -> None:
        p = palette
        self.setStyleSheet(f"""
            #quickAskFrame {{ background: {p.surface}; border: 1px solid {p.border_strong}; border-radius: 16px; }}
            #quickAskInput {{ background: transparent; border: none; font-size: 19px; color: {p.text};
                padding: 6px 2px; }}
            #quickAskDivider {{ background: {p.border}; }}
            #quickAskScroll, #quickAskBody {{ background: transparent; }}
            #quickAskQuestion {{ color: {p.text_secondary}; font-size: 13px; }}
            #quickAskMeta {{ color: {p.text_tertiary}; font-size: 11px; }}
            #quickAskError {{ color: {p.danger}; }}
            #quickAskChip {{ background: {p.user_bubble}; border: 1px solid {p.border}; border-radius: 8px; }}
            #quickAskChipName {{ font-size: 12px; }}
            QPushButton#pill {{ border: 1px solid {p.border}; border-radius: 11px; padding: 3px 10px;
                background: {p.surface}; color: {p.text_secondary}; font-size: 12px; }}
            QPushButton#pill:hover {{ background: {p.hover}; color: {p.text}; }}
        """)
        for child in self.findChildren(QWidget):
            apply = getattr(child, "apply_palette", None)
            if callable(apply):
                apply(p)
