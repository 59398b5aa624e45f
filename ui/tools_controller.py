"""Tools for ChatController (a mixin sharing its state): the MCP servers and built-in tools of the settings
handed to the engine, each chat's tools switched on or off (the composer's Tools menu), tool calls streaming
into the transcript, and the person's Allow / Deny going back to the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtWidgets import QMenu

from gemma4_mac.engine import AgentOptions
from gemma4_mac.history import Message
from gemma4_mac.mcp_config import BUILTIN_SERVER, parse_servers

TOOL_FIELDS = ("mcp_servers", "mcp_approval", "builtin_tools")


class ToolsMixin:
    """See the module docstring. Chats start with every tool on except the settings' `tools_off`; what the
    person switches in a chat holds for that chat while the app runs."""

    def _init_tools(self) -> None:
        self.chat_tools_off: dict[Optional[int], set[str]] = {}  # None: the new chat not yet created
        self.chat_approved: dict[int, set[str]] = {}  # servers allowed in a chat ("ask once" mode)
        self.known_tools: list = []  # ToolInfo of every configured tool, once listed
        self.tool_problems: dict[str, str] = {}
        self.tools_listed = False  # the servers were asked for their tools (known_tools is the answer)
        self.tools_menu: Optional[QMenu] = None
        self.engine.toolsListed.connect(self._on_tools_listed)
        self.engine.toolCallUpdated.connect(self._on_tool_update)
        self.engine.toolsUnavailable.connect(self._on_tools_unavailable)
        self.window.transcript.approvalAnswered.connect(self.engine.answer_approval)
        # Allow or Deny clicked: typing goes on in the composer, not on the card's button
        self.window.transcript.approvalAnswered.connect(lambda *_: self.window.composer.edit.setFocus())
        self.window.composer.toolsClicked.connect(self.open_tools_menu)
        self.settingsChanged.connect(self._tools_settings_changed)
        self.configure_tools()

    def configure_tools(self) -> None:
        """Hand the settings' servers and built-in tools to the engine (servers start when first used)."""
        servers, problems = parse_servers(self.settings.mcp_servers)
        self.engine.configure_tools(servers, approval=self.settings.mcp_approval,
                                    builtins=self.settings.builtin_tools)
        self.known_tools, self.tool_problems, self.tools_listed = [], {}, False
        self.window.composer.set_tools_available(self.engine.tools is not None)
        if problems:
            self.window.banner.show_message("Some MCP servers were left out: " + " ".join(problems), "warning")

    def _tools_settings_changed(self, old, new) -> None:
        if any(getattr(old, f) != getattr(new, f) for f in TOOL_FIELDS):
            self.configure_tools()

    # each chat's tools

    def tools_off_here(self) -> set[str]:
        """The tools switched off in the chat on screen (a new chat starts from the settings)."""
        return self.chat_tools_off.setdefault(self.conversation_id, set(self.settings.tools_off))

    def set_tool_enabled(self, key: str, enabled: bool) -> None:
        off = self.tools_off_here()
        if enabled:
            off.discard(key)
        else:
            off.add(key)

    def agent_options(self, conversation_id: int, messages: list[Message]) -> Optional[AgentOptions]:
        """The tools of this turn, or None when the app has none (the turn is then a plain answer)."""
        if self.engine.tools is None:
            return None
        if None in self.chat_tools_off and conversation_id not in self.chat_tools_off:
            self.chat_tools_off[conversation_id] = self.chat_tools_off.pop(None)  # chosen before it existed
        off = self.chat_tools_off.setdefault(conversation_id, set(self.settings.tools_off))
        folder: Optional[Path] = None
        try:
            folder = self.attachments.conversation_dir(conversation_id) / "tool-images"
        except OSError:
            folder = None  # a read-only data folder: images still reach the model as text notes
        return AgentOptions(tools_off=sorted(off), max_steps=self.settings.agent_max_steps,
                            person_texts=[m.content for m in messages if m.role == "user" and m.content],
                            image_dir=str(folder) if folder else None,
                            approved=self.chat_approved.setdefault(conversation_id, set()))

    # the Tools menu

    def open_tools_menu(self) -> QMenu:
        """A menu of every tool, by server, each checkable for this chat; lists the servers the first time."""
        menu = QMenu(self.window)
        self.tools_menu = menu
        self._fill_tools_menu(menu)
        if not self.tools_listed:
            self.engine.list_tools()
        button = self.window.composer.tools_button
        menu.popup(button.mapToGlobal(button.rect().topLeft()))
        return menu

    def _fill_tools_menu(self, menu: QMenu) -> None:
        menu.clear()
        if not self.tools_listed:
            menu.addAction("Starting the tool servers…").setEnabled(False)
            menu.addAction("Set up tools…", self.open_tools_setup)
            return
        off = self.tools_off_here()
        servers: dict[str, list] = {}
        for tool in self.known_tools:
            servers.setdefault(tool.server, []).append(tool)
        for server, tools in servers.items():
            _menu_header(menu, "Built-in" if server == BUILTIN_SERVER else server)
            for tool in tools:
                label = tool.title or tool.name
                action = menu.addAction(label + ("" if tool.read_only else "  (writes: asks first)"))
                action.setCheckable(True)
                action.setChecked(tool.key not in off)
                action.setToolTip(tool.description)
                action.toggled.connect(lambda on, key=tool.key: self.set_tool_enabled(key, on))
        for server, why in self.tool_problems.items():
            _menu_header(menu, server)
            menu.addAction(f"Unavailable: {why[:120]}").setEnabled(False)
        menu.addSeparator()
        menu.addAction("Set up tools…", self.open_tools_setup)

    def open_tools_setup(self) -> None:
        """Settings, with the tools editor open on top."""
        self.open_settings().open_tools()

    def check_tools(self, servers: list, builtins: list) -> None:
        """The tools editor's "Check servers": list the edited configuration's tools."""
        self.engine.list_tools(preview=(servers, builtins))

    def _on_tools_listed(self, listed: dict) -> None:
        if listed.get("preview"):
            dialog = self.settings_dialog
            if dialog is not None and dialog.isVisible():
                dialog.show_tools(list(listed["tools"]), dict(listed["problems"]))
            return
        self.known_tools, self.tool_problems = list(listed["tools"]), dict(listed["problems"])
        self.tools_listed = True
        if self.tools_menu is not None and self.tools_menu.isVisible():
            self._fill_tools_menu(self.tools_menu)

    # tool calls of the answer being written

    def _on_tools_unavailable(self, problems: dict) -> None:
        """Servers that could not start (or list their tools) for this answer: say which and why."""
        if not self._streaming_ours():
            return
        self.tool_problems.update(problems)
        lines = "\n".join(f"• {why}" for why in problems.values())
        self.window.banner.show_message(
            f"Some tools are unavailable, so Gemma answers without them:\n{lines}\n"
            "Check the server's command in Settings › Tools › Set up.", "warning")


    def _on_tool_update(self, request_id: int, record: dict) -> None:
        """A call of our answer started, waits for the person, ran or failed: keep it and show it."""
        stream = self.stream
        if stream is None or stream.request_id != request_id:
            return  # a request of the quick-ask panel, or of a chat deleted meanwhile
        record = dict(record)
        index = next((i for i, c in enumerate(stream.tool_calls) if c.get("id") == record.get("id")), None)
        if index is None:
            record["at"] = len(stream.answer)  # where it came in the answer's text
            stream.tool_calls.append(record)
        else:
            record["at"] = stream.tool_calls[index].get("at", 0)
            stream.tool_calls[index] = record
        stream.changes += 1
        if stream.widget is not None:
            stream.widget.show_tool_call(record)
            if record.get("status") == "waiting":
                self.window.transcript.scroll_to_bottom()  # the question must be in view


def _menu_header(menu: QMenu, title: str) -> None:
    """A server's name above its tools (a QMenu section's title is not drawn by every style)."""
    if menu.actions():
        menu.addSeparator()
    header = menu.addAction(title)
    header.setEnabled(False)
    font = header.font()
    font.setBold(True)
    header.setFont(font)
