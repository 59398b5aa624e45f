"""MCP servers as people configure them: the `mcpServers` JSON that Claude Desktop, LM Studio and Cursor use.

    {"mcpServers": {"files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem",
                                                         "/Users/me/Documents"], "env": {}},
                    "notes": {"url": "http://127.0.0.1:8765/mcp", "headers": {"Authorization": "Bearer …"}}}}

A server has a `command` (started as a child process, spoken to over its stdin and stdout) or a `url`
(streamable HTTP). `disabled: true` keeps an entry without starting it; `timeout` (seconds) bounds each of
its tool calls. The bare inner object (without "mcpServers") is accepted too. Checking needs no network
and starts nothing: each problem comes back as a sentence naming the server and the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

DEFAULT_CALL_TIMEOUT = 60.0  # seconds a tool call may take before it is given up
MAX_CALL_TIMEOUT = 3600.0
APPROVAL_MODES = ("always", "once", "never")  # ask before each write / once per chat / never
DEFAULT_APPROVAL = "always"
APPROVAL_LABELS = {"always": "Ask every time", "once": "Ask once per chat", "never": "Never ask"}
BUILTIN_SERVER = "built-in"  # the app's own tools are keyed "built-in/read_file": no MCP server may take the name


class McpConfigError(ValueError):
    """An MCP configuration that cannot be used; the message names the server and what to change."""


@dataclass
class ServerConfig:
    """One configured MCP server."""

    name: str
    command: str = ""
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_CALL_TIMEOUT
    disabled: bool = False

    @property
    def transport(self) -> str:
        """"stdio" (a command) or "http" (a URL)."""
        return "http" if self.url else "stdio"

    def describe(self) -> str:
        """How the server is reached, for a person: the command line or the URL."""
        if self.url:
            return self.url
        return " ".join([self.command, *self.args])


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _server(name: str, entry: Any) -> tuple[Optional[ServerConfig], list[str]]:
    """A server from its entry, or None with the reasons it cannot be used."""
    where = f"MCP server {name!r}"
    if not isinstance(entry, dict):
        return None, [f"{where} must be an object with a \"command\" or a \"url\"."]
    problems = []
    kind = entry.get("type", entry.get("transport"))
    if kind == "sse":
        problems.append(f"{where} uses the old SSE transport, which this app does not speak; use the server's "
                        "streamable HTTP address (often ending in /mcp) or its command.")
    command, url = entry.get("command"), entry.get("url")
    if command is not None and not (isinstance(command, str) and command.strip()):
        problems.append(f"{where}: \"command\" must be the program to start, as text.")
    if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
        problems.append(f"{where}: \"url\" must be an http:// or https:// address.")
    if not command and not url:
        problems.append(f"{where} needs a \"command\" (a program to start) or a \"url\" (a streamable HTTP "
                        "server).")
    if command and url:
        problems.append(f"{where} has both a \"command\" and a \"url\"; keep one.")
    for key, check, what in (("args", _strings, "a list of text"), ("env", _string_map, "an object of text values"),
                             ("headers", _string_map, "an object of text values")):
        if key in entry and not check(entry[key]):
            problems.append(f"{where}: \"{key}\" must be {what}.")
    cwd = entry.get("cwd", "")
    if not isinstance(cwd, str):
        problems.append(f"{where}: \"cwd\" must be a folder path, as text.")
    timeout = entry.get("timeout", DEFAULT_CALL_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_CALL_TIMEOUT:
        problems.append(f"{where}: \"timeout\" must be a number of seconds above 0 and at most "
                        f"{MAX_CALL_TIMEOUT:.0f}.")
    disabled = entry.get("disabled", False)
    if not isinstance(disabled, bool):
        problems.append(f"{where}: \"disabled\" must be true or false.")
    if problems:
        return None, problems
    return ServerConfig(name=name, command=(command or "").strip(), args=list(entry.get("args") or []),
                        env=dict(entry.get("env") or {}), cwd=cwd, url=url or "",
                        headers=dict(entry.get("headers") or {}), timeout=float(timeout),
                        disabled=disabled), []


def server_entries(data: Any) -> Any:
    """The {name: entry} object of a configuration: the value of "mcpServers", or the object itself."""
    if isinstance(data, dict) and "mcpServers" in data:
        return data["mcpServers"]
    return data


def parse_servers(data: Any) -> tuple[list[ServerConfig], list[str]]:
    """The usable servers of a decoded configuration, and a sentence for each problem (a bad entry is left
    out; the others still work)."""
    entries = server_entries(data)
    if entries is None or entries == {}:
        return [], []
    if not isinstance(entries, dict):
        return [], ["The MCP configuration must be a JSON object such as {\"mcpServers\": {\"name\": "
                    "{\"command\": \"…\", \"args\": […]}}}."]
    servers, problems = [], []
    for name, entry in entries.items():
        if not isinstance(name, str) or not name.strip() or "/" in name or name.strip() == BUILTIN_SERVER:
            problems.append(f"MCP server name {name!r} must be non-empty text without a slash, and not "
                            f"{BUILTIN_SERVER!r} (the app's own tools).")
            continue
        server, found = _server(name.strip(), entry)
        problems += found
        if server is not None:
            servers.append(server)
    return servers, problems


def parse_text(text: str) -> tuple[list[ServerConfig], list[str]]:
    """`parse_servers` of JSON text (as pasted into the settings); unreadable JSON is one problem."""
    if not text.strip():
        return [], []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return [], [f"The MCP configuration is not valid JSON: {error.msg} at line {error.lineno}, "
                    f"column {error.colno}."]
    return parse_servers(data)


def load_config_file(path: Path | str) -> list[ServerConfig]:
    """The servers of a configuration file (the CLI's and the server's --mcp); McpConfigError if any entry
    is wrong, so a typo is never silently a missing tool."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise McpConfigError(f"cannot read the MCP configuration {path}: {error}") from error
    servers, problems = parse_text(text)
    if problems:
        raise McpConfigError(f"{path}: " + " ".join(problems))
    if not servers:
        raise McpConfigError(f"{path} configures no MCP server; write "
                             '{"mcpServers": {"NAME": {"command": "…", "args": […]}}}')
    return [s for s in servers if not s.disabled]


def check_settings_value(value: Any) -> Optional[str]:
    """Why a settings value for the MCP servers is unacceptable (None when it is): the app keeps the
    `mcpServers` object as pasted."""
    if not isinstance(value, dict):
        return "must be an object of MCP servers ({\"name\": {\"command\": …}})"
    _servers, problems = parse_servers(value)
    return " ".join(problems) or None

