"""The pieces of a transcript: Markdown with code blocks, thinking, tool calls, attachments, stats."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QTextDocument
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QScrollArea, QSizePolicy, QToolButton, QVBoxLayout,
                               QWidget)

from gemma4_mac.attachments import Attachment
from gemma4_mac.history import format_stats

from . import icons
from .attachment_views import AnnotatedImage, AttachmentView
from .boxes import parse_boxes
from .markdown import Block, code_html, markdown_html, plain_html, split_blocks
from .theme import Palette, current_palette
from .tool_views import ToolCallCard
from .widgets import IconButton, ReadingBar, RichLabel

RENDER_INTERVAL_MS = 40  # streaming text is re-rendered at most this often
STREAM_CURSOR = " ●"


def stats_text(stats: dict) -> str:
    """The stats line, which a narrow window wraps between figures, never inside one ("309.4 MB peak")."""
    return " · ".join(part.replace(" ", "\u00a0") for part in format_stats(stats).split(" · "))


class CodeBlock(QFrame):
    """A highlighted code block with its language and a copy button."""

    copied = Signal(str)

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setObjectName("codeBlock")
        self.code, self.language = "", ""
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        header = QFrame()
        header.setObjectName("codeHeader")
        header_layout = QHBoxLayout(header)
        header_layout.setContentsMargins(12, 3, 6, 3)
        self.language_label = QLabel()
        self.language_label.setObjectName("codeLanguage")
        self.copy_button = QToolButton()
        self.copy_button.setObjectName("copyCode")
        self.copy_button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.copy_button.setCursor(Qt.PointingHandCursor)
        self.copy_button.setIconSize(QSize(14, 14))
        self.copy_button.clicked.connect(self.copy)
        header_layout.addWidget(self.language_label)
        header_layout.addStretch(1)
        header_layout.addWidget(self.copy_button)
        self.body = QLabel()
        self.body.setTextFormat(Qt.RichText)
        self.body.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.body.setContentsMargins(14, 10, 14, 12)
        self.scroll = QScrollArea()
        self.scroll.setObjectName("codeBody")
        self.scroll.setWidget(self.body)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
        layout.addWidget(header)
        layout.addWidget(self.scroll)
        self._reset_timer = QTimer(self, singleShot=True, interval=1500, timeout=self._show_copy_label)
        self._show_copy_label()

    def set_code(self, code: str, language: str, palette: Palette) -> None:
        self.code, self.language = code, language
        self.language_label.setText(language or "code")
        self.body.setText(code_html(code, language, palette))
        self.body.adjustSize()
        height = self.body.sizeHint().height()
        needs_bar = self.body.sizeHint().width() > self.scroll.viewport().width() > 0
        self.scroll.setFixedHeight(height + (self.scroll.horizontalScrollBar().sizeHint().height() if needs_bar else 0))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        needs_bar = self.body.sizeHint().width() > self.scroll.viewport().width()
        bar = self.scroll.horizontalScrollBar().sizeHint().height() if needs_bar else 0
        self.scroll.setFixedHeight(self.body.sizeHint().height() + bar)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.code)
        palette = current_palette()
        self.copy_button.setIcon(icons.icon("check", palette.success, 14))
        self.copy_button.setText("Copied")
        self._reset_timer.start()
        self.copied.emit(self.code)

    def _show_copy_label(self) -> None:
        self.copy_button.setIcon(icons.icon("copy", current_palette().text_secondary, 14))
        self.copy_button.setText("Copy")

    def apply_palette(self, palette: Palette) -> None:
        if self.code or self.language:
            self.set_code(self.code, self.language, palette)
        self._show_copy_label()


class MarkdownView(QWidget):
    """Markdown as a column of prose labels and code blocks; only changed blocks are re-rendered."""

    def __init__(self, parent: Optional[QWidget] = None, size: int = 14):
        super().__init__(parent)
        self.size = size
        self.markdown = ""
        self.blocks: list[Block] = []
        self.block_widgets: list[QWidget] = []
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(0, 0, 0, 0)
        self.layout_.setSpacing(10)

    def set_markdown(self, markdown: str, palette: Optional[Palette] = None, force: bool = False) -> None:
        palette = palette or current_palette()
        blocks = split_blocks(markdown)
        self.markdown = markdown
        for index, block in enumerate(blocks):
            old = self.blocks[index] if index < len(self.blocks) else None
            if old is not None and old.kind != block.kind:
                self._truncate(index)
                old = None
            if index >= len(self.block_widgets):
                widget = CodeBlock() if block.kind == "code" else RichLabel()
                self.layout_.addWidget(widget)
                self.block_widgets.append(widget)
            if old == block and not force:
                continue
            widget = self.block_widgets[index]
            if block.kind == "code":
                widget.set_code(block.text, block.language, palette)
            else:
                widget.setText(markdown_html(block.text, palette, self.size))
        self._truncate(len(blocks))
        self.blocks = blocks

    def _truncate(self, count: int) -> None:
        while len(self.block_widgets) > count:
            widget = self.block_widgets.pop()
            widget.setParent(None)
            widget.deleteLater()
        self.blocks = self.blocks[:count]

    def code_blocks(self) -> list[CodeBlock]:
        return [w for w in self.block_widgets if isinstance(w, CodeBlock)]

    def apply_palette(self, palette: Palette) -> None:
        self.set_markdown(self.markdown, palette, force=True)


class ThinkingSection(QWidget):
    """The model's thoughts, collapsed behind a header that says how long it thought."""

    toggled = Signal(bool)

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.text = ""
        self.started = time.monotonic()
        self.seconds: Optional[float] = None
        self.expanded = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        self.header = QToolButton()
        self.header.setObjectName("thinkingHeader")
        self.header.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.header.setCursor(Qt.PointingHandCursor)
        self.header.setIconSize(QSize(14, 14))
        self.header.clicked.connect(lambda: self.set_expanded(not self.expanded))
        self.body = QFrame()
        self.body.setObjectName("thinkingBody")
        body_layout = QVBoxLayout(self.body)
        body_layout.setContentsMargins(12, 0, 0, 0)
        self.label = RichLabel("thinkingText")
        body_layout.addWidget(self.label)
        self.body.hide()
        layout.addWidget(self.header, 0, Qt.AlignLeft)
        layout.addWidget(self.body)
        self._update_header()

    def append(self, text: str) -> None:
        self.text += text
        if self.expanded:
            self._render()

    def finish(self, seconds: Optional[float] = None) -> None:
        self.seconds = seconds if seconds is not None else time.monotonic() - self.started
        self._update_header()
        self._render()

    def set_expanded(self, expanded: bool) -> None:
        self.expanded = expanded
        self.body.setVisible(expanded)
        self._update_header()
        if expanded:
            self._render()
        self.toggled.emit(expanded)

    def _render(self) -> None:
        palette = current_palette()
        self.label.setText(markdown_html(self.text.strip() or "…", palette, 13).replace(
            f"color: {palette.text};", f"color: {palette.text_secondary};"))

    def _update_header(self) -> None:
        palette = current_palette()
        if self.seconds is None:
            title = "Thinking…"
        elif self.seconds >= 1:
            title = f"Thought for {self.seconds:.0f} s"
        else:
            title = "Thoughts"
        self.header.setText(title)
        self.header.setIcon(icons.icon("chevron_down" if self.expanded else "chevron_right",
                                       palette.text_secondary, 14))

    def apply_palette(self, palette: Palette) -> None:
        self._update_header()
        if self.expanded:
            self._render()


class UserMessage(QWidget):
    """The person's message: attachments and a rounded bubble on the right."""

    editRequested = Signal()
    playbackFailed = Signal(str)  # an attached clip cannot be played, and why

    def __init__(self, text: str, attachments: list[Attachment], parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.text = text
        self.attachments = attachments
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(6)
        for attachment in attachments:
            row = QHBoxLayout()
            row.addStretch(1)
            view = AttachmentView(attachment)
            if view.play_button is not None:
                view.play_button.failed.connect(self.playbackFailed)
            row.addWidget(view)
            outer.addLayout(row)
        self.bubble = QFrame()
        self.bubble.setObjectName("userBubble")
        bubble_layout = QVBoxLayout(self.bubble)
        bubble_layout.setContentsMargins(16, 10, 16, 10)
        self.label = RichLabel()
        bubble_layout.addWidget(self.label)
        self.bubble.setSizePolicy(QSizePolicy.Maximum, QSizePolicy.Preferred)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.bubble, 0)
        outer.addLayout(row)
        self.bubble.setVisible(bool(text.strip()))
        actions = QHBoxLayout()
        actions.addStretch(1)
        self.edit_button = IconButton("pencil", "Edit message", size=15, object_name="messageAction")
        self.edit_button.clicked.connect(self.editRequested)
        self.copy_button = IconButton("copy", "Copy", size=15, object_name="messageAction")
        self.copy_button.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.text))
        actions.addWidget(self.copy_button)
        actions.addWidget(self.edit_button)
        self.actions = QWidget()
        self.actions.setLayout(actions)
        actions.setContentsMargins(0, 0, 0, 0)
        self.actions.setFixedHeight(24)
        outer.addWidget(self.actions)
        self.set_is_last(False)
        self.apply_palette(current_palette())

    def set_is_last(self, last: bool) -> None:
        self.edit_button.setVisible(last)

    def apply_palette(self, palette: Palette) -> None:
        self.label.setText(plain_html(self.text, palette))
        self._fit_bubble()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_bubble()

    def _fit_bubble(self) -> None:
        """As wide as the text needs, at most about three quarters of the column."""
        limit = max(200, int(self.width() * 0.78)) - 32
        document = QTextDocument()
        document.setDocumentMargin(0)
        document.setDefaultFont(self.label.font())
        document.setHtml(self.label.text())
        self.label.setFixedWidth(min(int(document.idealWidth()) + 4, limit))


class AssistantMessage(QWidget):
    """One answer: avatar, thinking, Markdown and tool calls in the order they came, boxes on the image,
    stats and actions. Text written after a tool call goes below its card (a new Markdown segment)."""

    regenerateRequested = Signal()
    approvalAnswered = Signal(str, bool)  # (call id, allowed) from a tool call's Allow / Deny

    def __init__(self, parent: Optional[QWidget] = None, source_image: Optional[Path] = None):
        super().__init__(parent)
        self.answer = ""
        self.stats: Optional[dict] = None
        self.partial = False
        self.streaming = False
        self.source_image = source_image
        self.annotated: Optional[AnnotatedImage] = None
        self.thinking: Optional[ThinkingSection] = None
        self.tool_cards: list[ToolCallCard] = []
        self.segments: list[MarkdownView] = []  # the answer's text before the last tool call, in order
        self._segment_start = 0  # where the text of the current segment (self.markdown) starts in the answer
        outer = QHBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(14)
        self.avatar = QLabel()
        self.avatar.setPixmap(icons.avatar_pixmap(26))
        self.avatar.setFixedSize(26, 26)
        outer.addWidget(self.avatar, 0, Qt.AlignTop)
        self.column = QVBoxLayout()
        self.column.setContentsMargins(0, 2, 0, 0)
        self.column.setSpacing(10)
        outer.addLayout(self.column, 1)
        self.reading = ReadingBar()
        self.column.addWidget(self.reading)
        self.markdown = MarkdownView()
        self.column.addWidget(self.markdown)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.hide()
        self.column.addWidget(self.error_label)
        footer = QHBoxLayout()
        footer.setSpacing(2)
        self.copy_button = IconButton("copy", "Copy answer", size=15, object_name="messageAction")
        self.copy_button.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.answer))
        self.regenerate_button = IconButton("refresh", "Regenerate", size=15, object_name="messageAction")
        self.regenerate_button.clicked.connect(self.regenerateRequested)
        self.stats_label = QLabel()
        self.stats_label.setObjectName("statsLine")
        self.stats_label.setWordWrap(True)  # a narrow window wraps the figures instead of cutting them off
        footer.addWidget(self.copy_button)
        footer.addWidget(self.regenerate_button)
        footer.addSpacing(8)
        footer.addWidget(self.stats_label, 1)
        self.footer = QWidget()
        self.footer.setLayout(footer)
        footer.setContentsMargins(0, 0, 0, 0)
        self.column.addWidget(self.footer)
        self._render_timer = QTimer(self, singleShot=True, interval=RENDER_INTERVAL_MS, timeout=self._render)
        self.set_is_last(False)

    # streaming

    def start_streaming(self) -> None:
        self.streaming = True
        self.footer.hide()
        self._schedule()

    def show_reading(self, text: str, fraction: float) -> None:
        """How far the model has read the prompt (shown, instead of the cursor, until the answer starts)."""
        first = self.reading.isHidden()
        self.reading.set_progress(text, fraction)
        if first:
            self._render()

    def append_answer(self, text: str) -> None:
        self.reading.hide()
        if self.thinking is not None and self.thinking.seconds is None:
            self.thinking.finish()
        self.answer += text
        self._schedule()

    def append_thought(self, text: str) -> None:
        self.reading.hide()
        self.ensure_thinking().append(text)

    def ensure_thinking(self) -> ThinkingSection:
        if self.thinking is None:
            self.thinking = ThinkingSection()
            self.column.insertWidget(0, self.thinking)
        return self.thinking

    def add_tool_call(self, call: dict) -> ToolCallCard:
        """A card for a new call, after the text so far; later text goes below it."""
        card = ToolCallCard(call)
        card.answered.connect(self.approvalAnswered)
        self.tool_cards.append(card)
        if self.answer[self._segment_start:].strip():
            self.markdown.set_markdown(self.answer[self._segment_start:])  # this segment is complete
            self.markdown.setVisible(True)
            self.segments.append(self.markdown)
            self.column.insertWidget(self.column.indexOf(self.markdown) + 1, card)
            self.markdown = MarkdownView()
            self.column.insertWidget(self.column.indexOf(card) + 1, self.markdown)
            self._segment_start = len(self.answer)
        else:
            self.column.insertWidget(self.column.indexOf(self.markdown), card)
        return card

    def show_tool_call(self, call: dict) -> ToolCallCard:
        """Add the call's card, or bring the card of a call already shown up to date."""
        for card in self.tool_cards:
            if call.get("id") and card.call_id == call.get("id"):
                card.update_call(call)
                return card
        return self.add_tool_call(call)

    def load(self, answer: str, calls: list[dict]) -> None:
        """Show a stored answer with its calls where they came (each record's "at": the answer's length
        when it was made; calls without one come first)."""
        for card in self.tool_cards:
            card.setParent(None)
            card.deleteLater()
        for view in self.segments:
            view.setParent(None)
            view.deleteLater()
        self.tool_cards, self.segments, self._segment_start, self.answer = [], [], 0, ""
        for call in sorted(calls, key=lambda c: int(c.get("at") or 0) if isinstance(c, dict) else 0):
            at = max(len(self.answer), min(int(call.get("at") or 0), len(answer)))
            self.answer = answer[:at]
            self.add_tool_call(call)
        self.answer = answer

    def finish(self, stats: Optional[dict], partial: bool = False) -> None:
        self.streaming = False
        self.reading.hide()
        self.stats, self.partial = stats, partial
        if self.thinking is not None and self.thinking.seconds is None:
            self.thinking.finish()
        self._render()
        self.stats_label.setText(stats_text(stats) if stats else ("Stopped" if partial else ""))
        self.footer.show()

    def show_error(self, message: str) -> None:
        self.streaming = False
        self.reading.hide()
        self.error_label.setText(message)
        self.error_label.setStyleSheet(f"color: {current_palette().danger};")
        self.error_label.show()
        self._render()
        self.footer.show()

    def _schedule(self) -> None:
        if not self._render_timer.isActive():
            self._render_timer.start()

    def _render(self) -> None:
        cursor = self.streaming and (self.answer or self.reading.isHidden())  # else the bar says it reads
        text = self.answer[self._segment_start:] + (STREAM_CURSOR if cursor else "")
        self.markdown.set_markdown(text)
        self.markdown.setVisible(bool(text.strip()))
        if not self.streaming:
            self._draw_boxes()

    def _draw_boxes(self) -> None:
        if self.annotated is not None or self.source_image is None:
            return
        boxes = parse_boxes(self.answer)
        if boxes:
            self.annotated = AnnotatedImage(self.source_image, boxes)
            self.column.insertWidget(self.column.indexOf(self.markdown) + 1, self.annotated, 0, Qt.AlignLeft)

    def set_is_last(self, last: bool) -> None:
        self.regenerate_button.setVisible(last)

    def apply_palette(self, palette: Palette) -> None:
        if self.error_label.isVisible():
            self.error_label.setStyleSheet(f"color: {palette.danger};")
