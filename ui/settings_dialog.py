"""The settings dialog: model, system prompt, thinking, sampling, context, KV precision, image budget, quick ask,
the local server and tools (edited in ui/tools_dialog.py)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QFrame,
                               QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QPushButton, QSpinBox, QVBoxLayout,
                               QWidget)

from gemma4_mac.hotkey import default_hotkey
from gemma4_mac.model_manager import ModelEntry, format_size
from gemma4_mac.settings import IMAGE_TOKEN_BUDGETS, KV_PRECISIONS, AppSettings

from .tools_dialog import ToolsDialog

CONTEXT_CHOICES = (4096, 8192, 16384, 32768, 65536, 131072, 262144)
IMAGE_BUDGET_HINTS = {70: "fastest", 140: "fast", 280: "balanced", 560: "detailed", 1120: "small text, documents"}
DRAFT_CHOICES = (("auto", "Automatic (drafts only where it pays)"), ("mtp", "The model's drafter only"),
                 ("lookup", "Quotes of the conversation only"), ("off", "Off"))


def _section(title: str) -> QLabel:
    label = QLabel(title.upper())
    label.setObjectName("sectionTitle")
    return label


def tools_summary(values: dict) -> str:
    """"2 MCP servers · 1 built-in tool", or that there are none."""
    servers, builtins = len(values["mcp_servers"]), len(values["builtin_tools"])
    if not servers and not builtins:
        return "No tools: Gemma answers from what it knows and what you attach."
    parts = [f"{servers} MCP server{'s' if servers != 1 else ''}"] if servers else []
    if builtins:
        parts.append(f"{builtins} built-in tool{'s' if builtins != 1 else ''}")
    return " · ".join(parts)


class SettingsDialog(QDialog):
    manageModelsClicked = Signal()
    checkToolsRequested = Signal(list, list)  # (ServerConfig list, built-in names) from the tools editor

    def __init__(self, settings: AppSettings, models: list[ModelEntry], auto_context: int,
                 parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setMinimumWidth(520)
        self.original = settings
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 20, 24, 18)
        layout.setSpacing(12)
        title = QLabel("Settings")
        title.setObjectName("dialogTitle")
        layout.addWidget(title)

        layout.addWidget(_section("Model"))
        model_row = QHBoxLayout()
        self.model_combo = QComboBox()
        for entry in models:
            self.model_combo.addItem(f"{entry.label}  ·  {format_size(entry.size_bytes)}", str(entry.path))
        if settings.model_path and self.model_combo.findData(settings.model_path) < 0:
            self.model_combo.addItem(settings.model_path, settings.model_path)
        if not models and not settings.model_path:
            self.model_combo.addItem("Starter model (offline)", "")
        self.model_combo.setCurrentIndex(max(0, self.model_combo.findData(settings.model_path)))
        self.manage_button = QPushButton("Manage…")
        self.manage_button.setAutoDefault(False)
        self.manage_button.clicked.connect(self.manageModelsClicked)
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.manage_button)
        layout.addLayout(model_row)

        layout.addWidget(_section("Conversation"))
        self.system_prompt = QPlainTextEdit(settings.system_prompt)
        self.system_prompt.setObjectName("settingsText")
        self.system_prompt.setPlaceholderText("System prompt: how Gemma should behave (optional)")
        self.system_prompt.setFixedHeight(84)
        layout.addWidget(self.system_prompt)
        self.thinking = QCheckBox("Think before answering (slower, better at hard questions)")
        self.thinking.setChecked(settings.thinking)
        layout.addWidget(self.thinking)

        layout.addWidget(_section("Generation"))
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignRight)
        form.setHorizontalSpacing(14)
        form.setVerticalSpacing(8)
        self.temperature = QDoubleSpinBox(minimum=0.0, maximum=2.0, singleStep=0.05, decimals=2)
        self.temperature.setValue(settings.temperature)
        self.top_p = QDoubleSpinBox(minimum=0.05, maximum=1.0, singleStep=0.01, decimals=2)
        self.top_p.setValue(settings.top_p)
        self.max_tokens = QSpinBox(minimum=1, maximum=131072, singleStep=256)
        self.max_tokens.setValue(settings.max_tokens)
        self.context = QComboBox()
        self.context.addItem(f"Auto-fit to this Mac ({auto_context:,} tokens)", 0)
        for n in CONTEXT_CHOICES:
            self.context.addItem(f"{n // 1024}K tokens", n)
        self.context.setCurrentIndex(max(0, self.context.findData(settings.context_size)))
        self.kv = QComboBox()
        for bits in KV_PRECISIONS:
            self.kv.addItem({16: "16-bit (exact)", 8: "8-bit (half the memory)", 4: "4-bit (a quarter)"}[bits], bits)
        self.kv.setCurrentIndex(max(0, self.kv.findData(settings.kv_precision)))
        self.image_budget = QComboBox()
        for budget in IMAGE_TOKEN_BUDGETS:
            self.image_budget.addItem(f"{budget} tokens · {IMAGE_BUDGET_HINTS[budget]}", budget)
        self.image_budget.setCurrentIndex(max(0, self.image_budget.findData(settings.image_token_budget)))
        self.draft = QComboBox()
        for value, label in DRAFT_CHOICES:
            self.draft.addItem(label, value)
        self.draft.setCurrentIndex(max(0, self.draft.findData(settings.draft)))
        self.draft.setToolTip("Drafts the next tokens and checks them in one step: the same answer, faster "
                              "when the answer quotes the conversation or the model has its drafter")
        self.theme = QComboBox()
        for value, label in (("system", "Follow the system"), ("light", "Light"), ("dark", "Dark")):
            self.theme.addItem(label, value)
        self.theme.setCurrentIndex(max(0, self.theme.findData(settings.theme)))
        for spin in (self.temperature, self.top_p, self.max_tokens):
            spin.setToolTip("Type a value, or use the arrow keys")
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Context size", self.context)
        form.addRow("KV cache", self.kv)
        form.addRow("Image detail", self.image_budget)
        form.addRow("Faster answers", self.draft)
        form.addRow("Appearance", self.theme)
        # the quick-ask rows share the form so their labels line up with the ones above
        form.addRow(_section("Quick Ask"))
        self.hotkey = QLineEdit(settings.hotkey)
        self.hotkey.setPlaceholderText(f"{default_hotkey()} (the default)")
        self.hotkey.setToolTip("The global hotkey that opens the quick-ask panel, e.g. ctrl+alt+space")
        form.addRow("Hotkey", self.hotkey)
        self.menu_bar_only = QCheckBox("Menu bar only (no Dock icon)")
        self.menu_bar_only.setChecked(settings.menu_bar_only)
        form.addRow("", self.menu_bar_only)
        layout.addLayout(form)

        layout.addWidget(_section("Local server"))
        server_row = QHBoxLayout()
        self.server_enabled = QCheckBox("Serve this model to other apps (OpenAI-compatible API) on port")
        self.server_enabled.setChecked(settings.server_enabled)
        self.server_enabled.setToolTip(f"http://{settings.server_host}:PORT/v1 — scripts, editors and agents that "
                                       "speak the OpenAI API share the model with this window")
        self.server_port = QSpinBox(minimum=1, maximum=65535)
        self.server_port.setValue(settings.server_port)
        server_row.addWidget(self.server_enabled, 1)
        server_row.addWidget(self.server_port)
        layout.addLayout(server_row)
        server_form = QFormLayout()
        self.server_cors_origins = QLineEdit(settings.server_cors_origins)
        self.server_cors_origins.setPlaceholderText("none: web pages cannot call the server")
        self.server_cors_origins.setToolTip("Web pages allowed to use the model (CORS), e.g. http://localhost:3000; "
                                            "separate several with spaces. Programs and agents need no entry here.")
        server_form.addRow("Allowed web pages", self.server_cors_origins)
        self.server_allow_local_files = QCheckBox("Let API requests open image files on this Mac by path")
        self.server_allow_local_files.setChecked(settings.server_allow_local_files)
        server_form.addRow("", self.server_allow_local_files)
        self.server_mcp_tools = QCheckBox("Let API requests use my read-only tools (\"mcp_tools\": true)")
        self.server_mcp_tools.setToolTip("Programs calling the server may ask for the tools of your MCP servers "
                                         "that only read; tools that change things are never offered to them.")
        self.server_mcp_tools.setChecked(settings.server_mcp_tools)
        server_form.addRow("", self.server_mcp_tools)
        layout.addLayout(server_form)

        layout.addWidget(_section("Tools"))
        self.tool_values = {"mcp_servers": dict(settings.mcp_servers), "mcp_approval": dict(settings.mcp_approval),
                            "builtin_tools": list(settings.builtin_tools), "tools_off": list(settings.tools_off)}
        self.tools_dialog: Optional[ToolsDialog] = None
        tools_row = QHBoxLayout()
        self.tools_summary = QLabel(tools_summary(self.tool_values))
        self.tools_summary.setWordWrap(True)
        self.tools_button = QPushButton("Set up…")
        self.tools_button.setAutoDefault(False)
        self.tools_button.clicked.connect(self.open_tools)
        tools_row.addWidget(self.tools_summary, 1)
        tools_row.addWidget(self.tools_button)
        layout.addLayout(tools_row)

        rule = QFrame()
        rule.setObjectName("rule")
        rule.setFixedHeight(1)
        layout.addWidget(rule)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Save | QDialogButtonBox.Cancel)
        self.buttons.button(QDialogButtonBox.Save).setDefault(True)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

    def open_tools(self) -> ToolsDialog:
        """The tools editor; Save there keeps its values for this dialog's Save."""
        values = self.tool_values
        dialog = ToolsDialog(values["mcp_servers"], values["mcp_approval"], values["builtin_tools"],
                             values["tools_off"], self)
        dialog.checkRequested.connect(self.checkToolsRequested)
        dialog.accepted.connect(lambda: self._tools_edited(dialog.values()))
        self.tools_dialog = dialog
        dialog.open()
        return dialog

    def _tools_edited(self, values: dict) -> None:
        self.tool_values = values
        self.tools_summary.setText(tools_summary(values))

    def show_tools(self, tools: list, problems: dict) -> None:
        """Tools listed for the editor's "Check servers"."""
        if self.tools_dialog is not None and self.tools_dialog.isVisible():
            self.tools_dialog.show_tools(tools, problems)

    def settings(self) -> AppSettings:
        """The edited settings (the original object is left as it was)."""
        return dataclasses.replace(
            self.original, model_path=self.model_combo.currentData() or "",
            system_prompt=self.system_prompt.toPlainText().strip(), thinking=self.thinking.isChecked(),
            temperature=round(self.temperature.value(), 2), top_p=round(self.top_p.value(), 2),
            max_tokens=self.max_tokens.value(), context_size=int(self.context.currentData()),
            kv_precision=int(self.kv.currentData()), image_token_budget=int(self.image_budget.currentData()),
            draft=self.draft.currentData(), theme=self.theme.currentData(), hotkey=self.hotkey.text().strip(),
            menu_bar_only=self.menu_bar_only.isChecked(), server_enabled=self.server_enabled.isChecked(),
            server_port=self.server_port.value(),
            server_cors_origins=" ".join(self.server_cors_origins.text().replace(",", " ").split()),
            server_allow_local_files=self.server_allow_local_files.isChecked(),
            server_mcp_tools=self.server_mcp_tools.isChecked(), **self.tool_values)
