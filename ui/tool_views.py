"""A tool call in the transcript: the tool, its arguments, where it stands, its result and how long it took;
and, for a tool that writes, the question whether to let it run (Allow / Deny), with the arguments in view."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QToolButton, QVBoxLayout, QWidget

from .markdown import code_html
from .theme import Palette, current_palette
from .widgets import IconButton

PREVIEW_LINES = 8  # lines of a result shown before "Show all"
THUMBNAIL = 160
STATUS_TEXT = {"asked": "Starting…", "waiting": "Waiting for your approval", "running": "Running…",
               "done": "Done", "failed": "Failed", "denied": "Not allowed", "cancelled": "Stopped"}


def wrapped_code(text: str, language: str, palette: Palette, colour: Optional[str] = None) -> str:
    """Highlighted code that wraps long lines (arguments and results can hold whole documents)."""
    html = code_html(text, language, palette, 12).replace('<pre style="', '<pre style="white-space: pre-wrap; ', 1)
    return html.replace(f"color: {palette.text};", f"color: {colour};", 1) if colour else html


def status_line(record: dict) -> str:
    """"Done in 0.4 s", "Running…", "Failed after 30.0 s"."""
    status = record.get("status", "asked")
    text = STATUS_TEXT.get(status, status)
    seconds = record.get("seconds")
    if seconds is not None and status in ("done", "failed", "cancelled"):
        text += f" {'in' if status == 'done' else 'after'} {seconds:.1f} s"
    return text


class ToolCallCard(QFrame):
    """One call: "Tool · server · tool", the arguments as JSON, its status and result. While the call waits
    for the person it shows Allow and Deny; `answered(call id, granted)` carries the choice."""

    answered = Signal(str, bool)

    def __init__(self, call: dict, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setObjectName("toolCard")
        self.call: dict = {}
        self.expanded = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 10)
        layout.setSpacing(6)
        top = QHBoxLayout()
        top.setSpacing(6)
        self.glyph = IconButton("wrench", size=14)
        self.glyph.setEnabled(False)
        self.title = QLabel()
        self.title.setObjectName("toolTitle")
        self.status = QLabel()
        self.status.setObjectName("toolStatus")
        top.addWidget(self.glyph)
        top.addWidget(self.title)
        top.addStretch(1)
        top.addWidget(self.status)
        self.arguments = QLabel()
        self.arguments.setTextFormat(Qt.RichText)
        self.arguments.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.arguments.setWordWrap(True)
        layout.addLayout(top)
        layout.addWidget(self.arguments)
        self.approval = QFrame()
        self.approval.setObjectName("toolApproval")
        row = QHBoxLayout(self.approval)
        row.setContentsMargins(10, 8, 8, 8)
        self.question = QLabel()
        self.question.setWordWrap(True)
        self.deny_button = QPushButton("Deny")
        self.allow_button = QPushButton("Allow")
        self.allow_button.setObjectName("primary")
        for button in (self.deny_button, self.allow_button):
            button.setCursor(Qt.PointingHandCursor)
            button.setAutoDefault(False)
        self.deny_button.clicked.connect(lambda: self._answer(False))
        self.allow_button.clicked.connect(lambda: self._answer(True))
        row.addWidget(self.question, 1)
        row.addWidget(self.deny_button)
        row.addWidget(self.allow_button)
        layout.addWidget(self.approval)
        self.result = QLabel()
        self.result.setTextFormat(Qt.RichText)
        self.result.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.result.setWordWrap(True)
        layout.addWidget(self.result)
        self.more = QToolButton()
        self.more.setObjectName("copyCode")
        self.more.setCursor(Qt.PointingHandCursor)
        self.more.clicked.connect(self._toggle)
        layout.addWidget(self.more, 0, Qt.AlignLeft)
        self.pictures = QHBoxLayout()
        self.pictures.setSpacing(8)
        layout.addLayout(self.pictures)
        self._shown_images: list[str] = []
        self.update_call(call)

    @property
    def call_id(self) -> str:
        return str(self.call.get("id", ""))

    def update_call(self, call: dict) -> None:
        """Show the call as it stands now (a record from the engine, or a stored one)."""
        self.call = dict(call)
        self.apply_palette(current_palette())

    def _answer(self, granted: bool) -> None:
        self.allow_button.setEnabled(False)
        self.deny_button.setEnabled(False)
        self.answered.emit(self.call_id, granted)

    def _toggle(self) -> None:
        self.expanded = not self.expanded
        self.apply_palette(current_palette())

    def _result_text(self) -> tuple[str, bool]:
        """The result as shown (cut to PREVIEW_LINES unless expanded), and whether there is more."""
        text = str(self.call.get("result") or "").strip()
        lines = text.splitlines()
        if self.expanded or len(lines) <= PREVIEW_LINES and len(text) <= 800:
            return text, False
        return "\n".join(lines[:PREVIEW_LINES])[:800] + " …", True

    def apply_palette(self, palette: Palette) -> None:
        call = self.call
        server, tool = call.get("server"), call.get("tool") or call.get("name", "?")
        self.title.setText(f"Tool · {server} · {tool}" if server else f"Tool call · {call.get('name', '?')}")
        status = call.get("status")
        self.status.setVisible(bool(status))
        self.status.setText(status_line(call) if status else "")
        colour = {"failed": palette.danger, "denied": palette.warning, "waiting": palette.warning,
                  "done": palette.success}.get(status, palette.text_secondary)
        self.status.setStyleSheet(f"color: {colour}; font-size: 12px;")
        arguments = json.dumps(call.get("arguments", {}), indent=2, ensure_ascii=False)
        self.arguments.setText(wrapped_code(arguments, "json", palette))
        waiting = status == "waiting"
        self.approval.setVisible(waiting)
        if waiting:
            self.allow_button.setEnabled(True)
            self.deny_button.setEnabled(True)
            self.question.setText(f"<b>{tool}</b> can change things. Let it run with these arguments?")
            self.approval.setStyleSheet(
                f"#toolApproval {{ background: {palette.surface}; border: 1px solid {palette.warning}; "
                "border-radius: 8px; }")
        text, more = self._result_text()
        ended = status in ("done", "failed", "denied", "cancelled")
        self.result.setVisible(bool(text) and ended)
        if text and ended:
            self.result.setText(wrapped_code(text, "text", palette,
                                             palette.danger if status == "failed" else palette.text_secondary))
        self.more.setVisible(more or self.expanded)
        self.more.setText("Show less" if self.expanded else "Show all")
        self._show_images([p for p in call.get("images") or [] if isinstance(p, str)])

    def _show_images(self, paths: list[str]) -> None:
        if paths == self._shown_images:
            return
        self._shown_images = list(paths)
        while self.pictures.count():
            item = self.pictures.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        for path in paths:
            picture = QPixmap(path) if Path(path).is_file() else QPixmap()
            if picture.isNull():
                continue
            label = QLabel()
            label.setPixmap(picture.scaled(THUMBNAIL, THUMBNAIL, Qt.KeepAspectRatio, Qt.SmoothTransformation))
            label.setToolTip(path)
            self.pictures.addWidget(label)
        self.pictures.addStretch(1)
