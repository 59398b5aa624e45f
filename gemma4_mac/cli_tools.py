"""The command line's tools: `python -m gemma4_mac mcp list CONFIG.json` and `ask --mcp CONFIG.json`.

`ask` with tools runs the app's agent loop (gemma4_mac.agent) in the terminal: the answer goes to stdout,
each tool call and its result to stderr, and a call of a tool that writes is asked on the terminal
(`--yes` allows them all; without a terminal and without `--yes` they are refused).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional, TextIO

from .agent import AgentRun, StepResult
from .cli_stream import print_events
from .mcp_client import ToolInfo
from .mcp_config import McpConfigError, load_config_file
from .toolbox import ToolCallRecord, ToolRegistry

RESULT_PREVIEW = 300  # characters of a tool's result printed on stderr


class ToolSetupError(Exception):
    """The tools cannot be set up as asked (a bad configuration file); printed as one line."""


def registry_for(config: Optional[str], builtins: Iterable[str] = (), *,
                 approval: Optional[dict[str, str]] = None) -> ToolRegistry:
    """The tools of a configuration file (and the named built-in tools)."""
    try:
        servers = load_config_file(config) if config else []
    except McpConfigError as error:
        raise ToolSetupError(str(error)) from error
    return ToolRegistry(servers, approval=approval, builtins=builtins)


def _schema_line(schema: dict) -> str:
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = set(schema.get("required") or [])
    parts = []
    for name, spec in properties.items():
        kind = spec.get("type", "any") if isinstance(spec, dict) else "any"
        kind = "|".join(kind) if isinstance(kind, list) else str(kind)
        parts.append(f"{name}: {kind}" + (" (required)" if name in required else ""))
    return ", ".join(parts) or "no arguments"


def format_tools(tools: list[ToolInfo]) -> str:
    """Tools as `mcp list` prints them: name, whether it writes, description, arguments."""
    lines = []
    for tool in tools:
        kind = "read-only" if tool.read_only else "destructive" if tool.destructive else "writes"
        lines.append(f"  {tool.name}  [{kind}]  {tool.description.splitlines()[0] if tool.description else ''}"
                     .rstrip())
        lines.append(f"      {_schema_line(tool.input_schema)}")
    return "\n".join(lines)


def run_mcp_list(config: str, out: TextIO, err: TextIO) -> int:
    """Start each configured server, print its tools; 1 when a server could not be listed."""
    registry = registry_for(config)
    try:
        tools, problems = registry.available()
    finally:
        registry.close()
    servers = registry.hub.servers if registry.hub is not None else {}
    for name, server in servers.items():
        out.write(f"{name} ({server.describe()})\n")
        mine = [t for t in tools if t.server == name]
        if name in problems:
            out.write(f"  error: {problems[name]}\n")
        elif not mine:
            out.write("  (no tools)\n")
        else:
            out.write(format_tools(mine) + "\n")
    for name, why in problems.items():
        err.write(f"error: {why}\n")
    return 1 if problems else 0


class TerminalAgent:
    """What `ask --mcp` prints and asks while the agent runs."""

    def __init__(self, out: TextIO, err: TextIO, *, allow_writes: bool, ask: Callable[[str], str] = input,
                 interactive: Optional[bool] = None):
        self.out, self.err, self.allow_writes, self.ask = out, err, allow_writes, ask
        self.interactive = sys.stdin.isatty() if interactive is None else interactive

    def report(self, kind: str, record: dict) -> None:
        name = f"{record['server']}/{record['tool']}" if record.get("server") else record.get("name", "?")
        if kind == "tool_call":
            arguments = json.dumps(record.get("arguments") or {}, ensure_ascii=False)
            self.err.write(f"[tool] {name} {arguments}\n")
        elif record["status"] in ("done", "failed", "denied", "cancelled"):
            result = " ".join(str(record.get("result", "")).split())
            if len(result) > RESULT_PREVIEW:
                result = result[:RESULT_PREVIEW] + "…"
            took = f" in {record['seconds']:.1f} s" if record.get("seconds") is not None else ""
            images = f" [{len(record['images'])} image(s)]" if record.get("images") else ""
            self.err.write(f"[{record['status']}{took}] {result}{images}\n")
        self.err.flush()

    def approve(self, record: ToolCallRecord) -> bool:
        if self.allow_writes:
            return True
        if not self.interactive:
            self.err.write(f"[refused] {record.server}/{record.tool} writes; pass --yes to allow tools that "
                           "write\n")
            return False
        arguments = json.dumps(record.arguments, ensure_ascii=False)
        try:
            answer = self.ask(f"Allow {record.server}/{record.tool} {arguments}? [y/N] ")
        except EOFError:
            return False
        return answer.strip().lower() in ("y", "yes")


def ask_with_tools(registry: ToolRegistry, messages: list[dict], *, step_events: Callable, out: TextIO,
                   err: TextIO, allow_writes: bool, max_steps: int, can_see: bool,
                   interactive: Optional[bool] = None) -> dict:
    """Answer `messages` with the registry's tools; `step_events(messages, tools, schemas, allow_calls)`
    streams one model turn's events (printed as `ask` prints them). Returns the run's figures."""
    toolbox, problems = registry.toolbox()
    for server, why in problems.items():
        err.write(f"[mcp] {why}\n")
    terminal = TerminalAgent(out, err, allow_writes=allow_writes, interactive=interactive)
    person = [m["content"] for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]

    def step(conversation: list[dict], allow_calls: bool) -> StepResult:
        events = step_events(conversation, toolbox.offered() or None, toolbox.shapes(), allow_calls)
        return print_events(events, out, err)

    with tempfile.TemporaryDirectory(prefix="gemma-tool-images-") as images:
        run = AgentRun(toolbox, step=step, approve=terminal.approve, report=terminal.report,
                       max_steps=max_steps, person_texts=person, can_see=can_see, image_dir=Path(images))
        outcome = run.run(messages)
    return outcome.stats
