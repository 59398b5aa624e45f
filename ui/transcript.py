"""The conversation column: messages in a centred, readable width that follows the stream."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QGridLayout, QHBoxLayout, QLabel, QPushButton, QScrollArea, QVBoxLayout, QWidget)

from gemma4_mac.history import Message

from . import icons
from .message_widgets import AssistantMessage, UserMessage

COLUMN_WIDTH = 760
SUGGESTION_WIDTH = 280  # each of the two columns of suggestions, when the window is wide enough
STICK_DISTANCE = 48  # px from the bottom within which the view keeps following new text

SUGGESTIONS = (
    ("Describe a photo", "Attach a photo, ask what is in it"),
    ("Summarise a PDF", "Drop a PDF, get the key points"),
    ("Transcribe a voice note", "Record up to 30 seconds"),
    ("Explain some code", "Paste a function, ask how it works"),
)


class EmptyState(QWidget):
    """What a new chat shows: the sparkle, a greeting, and a few things to try."""

    suggestionClicked = Signal(str)

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.addStretch(3)
        self.logo = QLabel()
        self.logo.setPixmap(icons.avatar_pixmap(52))
        self.logo.setAlignment(Qt.AlignCenter)
        self.title = QLabel("What can I help with?")
        self.title.setObjectName("emptyTitle")
        self.title.setAlignment(Qt.AlignCenter)
        self.subtitle = QLabel("Runs entirely on this Mac. Nothing you type or attach leaves it.")
        self.subtitle.setObjectName("emptySubtitle")
        self.subtitle.setAlignment(Qt.AlignCenter)
        layout.addWidget(self.logo)
        layout.addSpacing(12)
        layout.addWidget(self.title)
        layout.addSpacing(4)
        layout.addWidget(self.subtitle)
        layout.addSpacing(26)
        self.subtitle.setWordWrap(True)
        grid = QGridLayout()
        grid.setSpacing(10)
        self.buttons: list[QPushButton] = []
        self.hints: list[QLabel] = []
        for i, (title, hint) in enumerate(SUGGESTIONS):
            button = QPushButton()
            button.setObjectName("suggestion")
            button.setCursor(Qt.PointingHandCursor)
            button.setToolTip(hint)
            inner = QVBoxLayout(button)
            inner.setContentsMargins(14, 9, 14, 9)
            inner.setSpacing(1)
            for text, name in ((title, "suggestionTitle"), (hint, "suggestionHint")):
                label = QLabel(text)
                label.setObjectName(name)
                label.setAttribute(Qt.WA_TransparentForMouseEvents)
                inner.addWidget(label)
            self.hints.append(label)
            button.clicked.connect(lambda _=False, t=title: self.suggestionClicked.emit(t))
            grid.addWidget(button, i // 2, i % 2)
            self.buttons.append(button)
        self.compact: Optional[bool] = None
        self._fit_width(SUGGESTION_WIDTH * 2 + 60)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addLayout(grid)
        row.addStretch(1)
        layout.addLayout(row)
        layout.addStretch(4)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_width(self.width())

    def _fit_width(self, width: int) -> None:
        """Two roomy columns of suggestions; in a narrow window (to the minimum size) only their titles."""
        compact = width < SUGGESTION_WIDTH * 2 + 60
        if compact == self.compact:
            return
        self.compact = compact
        titles = [button.findChild(QLabel, "suggestionTitle") for button in self.buttons]
        narrow = max(title.sizeHint().width() for title in titles) + 30  # the longest title, in one line
        for button, hint in zip(self.buttons, self.hints):
            button.setMinimumSize(narrow if compact else SUGGESTION_WIDTH, 40 if compact else 62)
            hint.setVisible(not compact)


class TranscriptView(QScrollArea):
    """Scrollable list of message widgets. Follows new text while the reader is at the bottom."""

    regenerateRequested = Signal()
    editRequested = Signal()
    playbackFailed = Signal(str)  # an attached clip cannot be played: the window says why
    approvalAnswered = Signal(str, bool)  # (tool call id, allowed): the person's answer on a tool call's card

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setObjectName("transcript")
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        inner = QWidget()
        inner.setObjectName("transcriptColumn")
        centre = QHBoxLayout(inner)
        centre.setContentsMargins(24, 28, 24, 28)
        centre.addStretch(1)
        self.column_widget = QWidget()
        self.column_widget.setObjectName("transcriptColumn")
        self.column_widget.setMaximumWidth(COLUMN_WIDTH)
        self.column = QVBoxLayout(self.column_widget)
        self.column.setContentsMargins(0, 0, 0, 0)
        self.column.setSpacing(26)
        self.column.addStretch(1)
        centre.addWidget(self.column_widget, 100)
        centre.addStretch(1)
        self.setWidget(inner)
        self.messages: list[QWidget] = []
        self._stick = True
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(self._on_scrolled)
        bar.rangeChanged.connect(self._on_range_changed)

    def clear(self) -> None:
        for widget in self.messages:
            widget.setParent(None)
            widget.deleteLater()
        self.messages = []
        self._stick = True

    def _add(self, widget: QWidget) -> None:
        self.column.insertWidget(self.column.count() - 1, widget)
        self.messages.append(widget)
        self._update_last()

    def add_user(self, text: str, attachments) -> UserMessage:
        widget = UserMessage(text, list(attachments))
        widget.editRequested.connect(self.editRequested)
        widget.playbackFailed.connect(self.playbackFailed)
        self._add(widget)
        self.scroll_to_bottom()
        return widget

    def add_assistant(self, source_image: Optional[Path] = None) -> AssistantMessage:
        widget = AssistantMessage(source_image=source_image)
        widget.regenerateRequested.connect(self.regenerateRequested)
        widget.approvalAnswered.connect(self.approvalAnswered)
        self._add(widget)
        return widget

    def remove_from(self, index: int) -> None:
        """Remove the message widget at `index` and all after it."""
        while len(self.messages) > index:
            widget = self.messages.pop()
            widget.setParent(None)
            widget.deleteLater()
        self._update_last()

    def show_messages(self, messages: list[Message]) -> None:
        """Show a stored conversation."""
        self.clear()
        last_image: Optional[Path] = None
        for message in messages:
            if message.role == "user":
                self._add_stored_user(message)
                images = [a.path for a in message.attachments if a.kind == "image"]
                last_image = Path(images[-1]) if images else last_image
            else:
                widget = self.add_assistant(last_image)
                if message.thought:
                    widget.append_thought(message.thought)
                widget.load(message.content, message.tool_calls)
                widget.finish(message.stats, message.partial)
                if widget.thinking is not None:
                    widget.thinking.finish(message.stats.get("thinking_seconds") if message.stats else 0)
        self.scroll_to_bottom()

    def _add_stored_user(self, message: Message) -> None:
        self.add_user(message.content, message.attachments)

    def _update_last(self) -> None:
        last_user = max((i for i, w in enumerate(self.messages) if isinstance(w, UserMessage)), default=-1)
        for i, widget in enumerate(self.messages):
            if isinstance(widget, UserMessage):
                widget.set_is_last(i == last_user)
            elif isinstance(widget, AssistantMessage):
                widget.set_is_last(i == len(self.messages) - 1)

    def scroll_to_bottom(self) -> None:
        self._stick = True
        self.verticalScrollBar().setValue(self.verticalScrollBar().maximum())

    def _on_scrolled(self, value: int) -> None:
        bar = self.verticalScrollBar()
        self._stick = value >= bar.maximum() - STICK_DISTANCE

    def _on_range_changed(self, _minimum: int, maximum: int) -> None:
        if self._stick:
            self.verticalScrollBar().setValue(maximum)
