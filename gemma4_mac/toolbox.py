"""The tools of one chat: MCP tools of the configured servers and the built-in ones, as the model is told of
them, with the rule for asking the person first, and the record of each call the transcript shows.

Approval is per server (`mcp_config.APPROVAL_MODES`): "always" asks before every call of a tool that
writes, "once" asks the first time in a chat (a yes covers the server's other writing tools in that chat),
"never" does not ask. A tool writes unless its server marks it read-only (MCP's readOnlyHint).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

from .builtin_tools import builtin_tools, run_builtin
from .mcp_client import McpHub, McpUnavailable, ToolInfo, ToolOutput
from .mcp_config import BUILTIN_SERVER, DEFAULT_APPROVAL, ServerConfig

# what a call is doing, in order; the last four end it
STATUSES = ("asked", "waiting", "running", "done", "failed", "denied", "cancelled")
_UNSAFE_NAME = re.compile(r"[^\w\-.]")  # what Gemma's call syntax reads as a function name


@dataclass
class ToolCallRecord:
    """One call the model made, as the transcript shows it and the history keeps it.

    `result` is what the tool answered (or why it did not run), `seconds` how long it ran, `images` the
    files of the pictures it returned."""

    id: str
    name: str  # as the model called it
    server: str
    tool: str
    arguments: dict = field(default_factory=dict)
    writes: bool = False
    status: str = "asked"
    result: str = ""
    seconds: Optional[float] = None
    images: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def ended(self) -> bool:
        return self.status in ("done", "failed", "denied", "cancelled")


def output_text(output: ToolOutput) -> str:
    """A tool's answer as text: its text parts, or its structured result as JSON."""
    if output.text.strip() or output.structured is None:
        return output.text
    return json.dumps(output.structured, ensure_ascii=False)


class ToolBox:
    """The tools offered in one chat and how to run them.

    Names the model sees are the tools' own, unless two servers offer the same one: then both are named
    "server.tool". `approval` maps a server to its approval mode."""

    def __init__(self, tools: Iterable[ToolInfo], *, hub: Optional[McpHub] = None,
                 approval: Optional[dict[str, str]] = None):
        self.hub = hub
        self.approval = dict(approval or {})
        tools = list(tools)
        counts: dict[str, int] = {}
        for tool in tools:
            counts[tool.name] = counts.get(tool.name, 0) + 1
        self.by_name: dict[str, ToolInfo] = {}
        for tool in tools:
            name = tool.name if counts[tool.name] == 1 else f"{tool.server}.{tool.name}"
            self.by_name[_UNSAFE_NAME.sub("_", name)] = tool

    def __bool__(self) -> bool:
        return bool(self.by_name)

    def offered(self) -> list[dict]:
        """The tools as the chat format declares them (OpenAI-style function specs)."""
        return [{"type": "function", "function": {"name": name, "description": _description(tool),
                                                  "parameters": _parameters(tool.input_schema)}}
                for name, tool in self.by_name.items()]

    def shapes(self) -> list[tuple[str, Optional[dict]]]:
        """(name, parameters schema) of each tool, for constrained decoding."""
        return [(name, _parameters(tool.input_schema)) for name, tool in self.by_name.items()]

    def find(self, name: str) -> Optional[ToolInfo]:
        return self.by_name.get(name)

    def needs_approval(self, tool: ToolInfo, approved: set[str]) -> bool:
        """Whether the person is asked before `tool` runs; `approved` holds the servers already allowed in
        this chat ("once" mode)."""
        if not tool.writes:
            return False
        mode = self.approval.get(tool.server, DEFAULT_APPROVAL)
        if mode == "never":
            return False
        return not (mode == "once" and tool.server in approved)

    def run(self, tool: ToolInfo, arguments: dict, *, cancel: Optional[threading.Event] = None,
            person_texts: list[str] = ()) -> ToolOutput:
        """Run a tool (blocking); McpError subclasses say why an MCP call did not answer."""
        if tool.server == BUILTIN_SERVER:
            return run_builtin(tool.name, arguments, list(person_texts))
        if self.hub is None:
            raise McpUnavailable(f"{tool.server} is not connected.")
        return self.hub.call(tool.server, tool.name, arguments, cancel=cancel)


class ToolRegistry:
    """Every tool configured for the app (or for one CLI run): the MCP servers (an McpHub, started on first
    use), the built-in tools switched on, and each server's approval mode."""

    def __init__(self, servers: Iterable[ServerConfig] = (), *, approval: Optional[dict[str, str]] = None,
                 builtins: Iterable[str] = (), connect_timeout: Optional[float] = None):
        servers = [s for s in servers if not s.disabled]
        options = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
        self.hub = McpHub(servers, **options) if servers else None
        self.approval = dict(approval or {})
        self.builtins = list(builtins)

    def __bool__(self) -> bool:
        return self.hub is not None or bool(self.builtins)

    def available(self, cancel: Optional[threading.Event] = None) -> tuple[list[ToolInfo], dict[str, str]]:
        """Every tool (servers are started and asked, side by side), and why a server has none."""
        tools, problems = [], {}
        if self.hub is not None:
            tools, problems = self.hub.all_tools(cancel)
        return builtin_tools(self.builtins) + tools, problems

    def toolbox(self, off: Iterable[str] = (),
                cancel: Optional[threading.Event] = None) -> tuple[ToolBox, dict[str, str]]:
        """Every tool but those in `off` ("server/tool") as a ToolBox, and the servers' problems."""
        tools, problems = self.available(cancel)
        left_out = set(off)
        return ToolBox([t for t in tools if t.key not in left_out], hub=self.hub, approval=self.approval), problems

    def close(self) -> None:
        if self.hub is not None:
            self.hub.close()


def _description(tool: ToolInfo) -> str:
    text = tool.description or tool.title or tool.name
    return text if tool.server == BUILTIN_SERVER else f"{text} (from {tool.server})"


def _parameters(schema: Optional[dict]) -> dict:
    """An object schema (a tool without parameters gets an empty one)."""
    if not isinstance(schema, dict) or not schema:
        return {"type": "object", "properties": {}}
    out = {k: v for k, v in schema.items() if k not in ("$schema", "title")}
    out.setdefault("type", "object")
    return out
