"""The tools editor (opened from Settings): MCP servers pasted as Claude Desktop and LM Studio write them, each
server's approval mode, the built-in tools, and every tool listed with what it does, its arguments and whether
it writes, each on or off for new chats."""

from __future__ import annotations

import html
import json
from typing import Optional

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFormLayout, QHBoxLayout, QLabel,
                               QPlainTextEdit, QPushButton, QScrollArea, QVBoxLayout, QWidget)

from gemma4_mac.builtin_tools import BUILTIN_NAMES, BUILTIN_TITLES
from gemma4_mac.mcp_config import APPROVAL_LABELS, APPROVAL_MODES, DEFAULT_APPROVAL, parse_text, server_entries

from .theme import current_palette, mono_font_family

EXAMPLE = """{
  "mcpServers": {
    "files": {
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-filesystem", "/Users/you/Documents"]
    }
  }
}"""


def arguments_text(schema: dict) -> str:
    """A tool's arguments in a line: "title: string (required), text: string"."""
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = set(schema.get("required") or [])
    parts = []
    for name, spec in properties.items():
        kind = spec.get("type", "any") if isinstance(spec, dict) else "any"
        kind = "|".join(kind) if isinstance(kind, list) else str(kind)
        parts.append(f"{name}: {kind}" + (" (required)" if name in required else ""))
    return ", ".join(parts) or "no arguments"


class ToolsDialog(QDialog):
    """Edits the tool settings; `values()` returns them. `checkRequested(servers, builtins)` asks the
    controller to start the edited servers and list their tools (answered with `show_tools`)."""

    checkRequested = Signal(list, list)

    def __init__(self, mcp_servers: dict, approval: dict, builtins: list[str], tools_off: list[str],
                 parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle("Tools")
        self.setMinimumWidth(600)
        self.approval = dict(approval)
        self.tools_off = set(tools_off)
        self.approval_boxes: dict[str, QComboBox] = {}
        self.tool_boxes: dict[str, QCheckBox] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 18)
        layout.setSpacing(10)
        title = QLabel("Tools")
        title.setObjectName("dialogTitle")
        layout.addWidget(title)
        intro = QLabel("Gemma can use tools from MCP servers on this Mac. Paste the configuration you use with "
                       "Claude Desktop or LM Studio. Tools that can change things ask you first.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.editor = QPlainTextEdit()
        self.editor.setObjectName("settingsText")
        self.editor.setPlaceholderText(EXAMPLE)
        self.editor.setFont(QFont(mono_font_family(), 11))
        self.editor.setFixedHeight(150)
        if mcp_servers:
            self.editor.setPlainText(json.dumps({"mcpServers": mcp_servers}, indent=2, ensure_ascii=False))
        layout.addWidget(self.editor)
        self.problems = QLabel()
        self.problems.setWordWrap(True)
        layout.addWidget(self.problems)
        self.approval_form = QFormLayout()
        layout.addLayout(self.approval_form)
        builtin_row = QHBoxLayout()
        builtin_row.addWidget(QLabel("Built-in:"))
        self.builtin_boxes: dict[str, QCheckBox] = {}
        for name in BUILTIN_NAMES:
            box = QCheckBox(BUILTIN_TITLES[name])
            box.setChecked(name in builtins)
            self.builtin_boxes[name] = box
            builtin_row.addWidget(box)
        builtin_row.addStretch(1)
        layout.addLayout(builtin_row)
        check_row = QHBoxLayout()
        self.check_button = QPushButton("Check servers and list their tools")
        self.check_button.setAutoDefault(False)
        self.check_button.clicked.connect(self._check)
        check_row.addWidget(self.check_button)
        check_row.addStretch(1)
        layout.addLayout(check_row)
        self.tools_area = QScrollArea()
        self.tools_area.setWidgetResizable(True)
        self.tools_area.setMinimumHeight(160)
        self.tools_list = QWidget()
        self.tools_column = QVBoxLayout(self.tools_list)
        self.tools_area.setWidget(self.tools_list)
        self.tools_note = QLabel("Check the servers to see their tools. Tools you untick here start switched off "
                                 "in new chats (the Tools button switches them for one chat).")
        self.tools_note.setWordWrap(True)
        self.tools_column.addWidget(self.tools_note)
        self.tools_column.addStretch(1)
        layout.addWidget(self.tools_area, 1)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Save | QDialogButtonBox.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self._parse_timer = QTimer(self, singleShot=True, interval=250, timeout=self._parse)
        self.editor.textChanged.connect(self._parse_timer.start)
        self._parse()

    # editing

    def _parse(self) -> list:
        """Check the pasted JSON: problems in red, an approval choice per server, Save only when usable."""
        text = self.editor.toPlainText()
        servers, problems = parse_text(text)
        palette = current_palette()
        self.problems.setVisible(bool(problems))
        self.problems.setText("<br>".join(html.escape(p) for p in problems))
        self.problems.setStyleSheet(f"color: {palette.danger};")
        self.buttons.button(QDialogButtonBox.Save).setEnabled(not problems)
        for name, box in self.approval_boxes.items():
            self.approval[name] = box.currentData()
        while self.approval_form.rowCount():
            self.approval_form.removeRow(0)
        self.approval_boxes = {}
        for server in servers:
            box = QComboBox()
            for mode in APPROVAL_MODES:
                box.addItem(APPROVAL_LABELS[mode], mode)
            box.setCurrentIndex(APPROVAL_MODES.index(self.approval.get(server.name, DEFAULT_APPROVAL)))
            box.setToolTip("Before a tool of this server that can change things runs")
            self.approval_boxes[server.name] = box
            self.approval_form.addRow(f"{server.name}: before a tool writes", box)
        return servers

    def _check(self) -> None:
        servers = self._parse()
        self.tools_note.setText("Starting the servers…")
        self.check_button.setEnabled(False)
        self.checkRequested.emit(servers, [n for n, box in self.builtin_boxes.items() if box.isChecked()])

    def show_tools(self, tools: list, problems: dict) -> None:
        """The listed tools, by server, each with a box: on in new chats."""
        self.check_button.setEnabled(True)
        while self.tools_column.count() > 2:  # the note and the stretch stay
            item = self.tools_column.takeAt(1)
            if item.widget() is not None:
                item.widget().deleteLater()
        for key, box in self.tool_boxes.items():
            if not box.isChecked():
                self.tools_off.add(key)
        self.tool_boxes = {}
        palette = current_palette()
        rows: list[QWidget] = []
        for tool in tools:
            kind = "read-only" if tool.read_only else "can change things: asks first"
            box = QCheckBox(f"{tool.server} · {tool.name}  ({kind})")
            box.setChecked(tool.key not in self.tools_off)
            detail = QLabel(f"{html.escape(tool.description or tool.title or '')}<br><span style=\"color: "
                            f"{palette.text_secondary};\">{html.escape(arguments_text(tool.input_schema))}</span>")
            detail.setWordWrap(True)
            detail.setContentsMargins(24, 0, 0, 6)
            self.tool_boxes[tool.key] = box
            rows += [box, detail]
        for server, why in problems.items():
            label = QLabel(f"<b>{html.escape(server)}</b>: {html.escape(why)}")
            label.setWordWrap(True)
            label.setStyleSheet(f"color: {palette.danger};")
            rows.append(label)
        for index, row in enumerate(rows):
            self.tools_column.insertWidget(1 + index, row)
        self.tools_note.setText(f"{len(tools)} tool{'s' if len(tools) != 1 else ''}; untick those new chats "
                                "should start without." if tools else "No tools were found.")

    # the result

    def values(self) -> dict:
        """The edited tool settings (AppSettings fields)."""
        self._parse()
        servers = server_entries(json.loads(self.editor.toPlainText())) if self.editor.toPlainText().strip() \
            else {}
        names = set(servers or {})
        off = set(self.tools_off)
        for key, box in self.tool_boxes.items():
            (off.discard if box.isChecked() else off.add)(key)
        return {"mcp_servers": dict(servers or {}),
                "mcp_approval": {k: v for k, v in self.approval.items() if k in names},
                "builtin_tools": [n for n, box in self.builtin_boxes.items() if box.isChecked()],
                "tools_off": sorted(off)}
