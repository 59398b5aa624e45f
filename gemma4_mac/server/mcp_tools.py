"""The person's MCP tools for programs that use the local server, opt-in twice: the person allows it (the
app's Settings, "Programs may use my read-only tools", or `serve --mcp CONFIG.json`) and a chat completions
request asks with `"mcp_tools": true`.

Only tools that run without asking are offered (those a server marks read-only, and every tool of a server
set to "never ask"): nobody is at the window to approve a write for a program, and the built-in tools (a
file the person names) are the window's alone. They are offered beside the request's own tools. The server
runs the model's calls of them itself (gemma4_mac.agent, as the window does) and the model goes on, up to a
step limit; the first turn that calls none of them is the answer. What the server ran comes back beside it:
`mcp_calls` (each call: tool, server, arguments, status, result, seconds) and `mcp_messages` (the assistant
turns and tool results, in the chat format, for a client that keeps the conversation going). A turn that
calls the request's own tools is returned at once; calls of MCP tools in that same turn are not run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import threading
import uuid
from typing import Any, Awaitable, Callable, Optional

from ..agent import AgentRun, StepResult
from ..mcp_config import BUILTIN_SERVER
from ..toolbox import ToolBox
from .errors import BadRequest
from .schemas import openai_finish_reason

MAX_STEPS = 8


def program_toolbox(registry: Any) -> tuple[ToolBox, dict[str, str]]:
    """The tools a program may use (see the module docstring) and why a server offers none (blocking:
    servers start)."""
    toolbox, problems = registry.toolbox()
    allowed = [tool for tool in toolbox.by_name.values()
               if tool.server != BUILTIN_SERVER and not toolbox.needs_approval(tool, set())]
    return ToolBox(allowed, hub=toolbox.hub, approval=toolbox.approval), problems


def check_request(spec: Any, stream: bool, registry: Any) -> None:
    """BadRequest (with what to do) when this request cannot have MCP tools."""
    if registry is None:
        raise BadRequest("this server offers no MCP tools: allow programs to use them in the app's Settings "
                         "(Local server), or start `serve` with --mcp CONFIG.json", param="mcp_tools")
    if stream:
        raise BadRequest("mcp_tools needs stream: false (the server runs the tools between turns)",
                         param="mcp_tools")
    if spec.n != 1:
        raise BadRequest("mcp_tools needs n: 1", param="mcp_tools")


Turn = Callable[[list[dict], Optional[list[dict]]], Awaitable[Any]]  # (messages, tools) -> Choices


async def answer_with_tools(spec: Any, registry: Any, turn: Turn) -> tuple[dict, str, dict, list, list[dict]]:
    """Run the model with the request's tools and the person's MCP tools until a turn calls none of the
    latter. `turn(messages, tools)` generates one reply (a routes_openai.Choices). Returns the answer (the
    last turn's message, its finish reason, the usage of all turns) and the calls run and the messages they
    added (see the module docstring)."""
    toolbox, _problems = await asyncio.to_thread(program_toolbox, registry)
    own = list(spec.tools or [])
    clash = sorted({t["function"]["name"] for t in own} & set(toolbox.by_name))
    if clash:
        raise BadRequest(f"the request's tool {clash[0]!r} has the name of an MCP tool; rename it",
                         param="tools")
    loop = asyncio.get_running_loop()
    last: list = [None]
    turns: list[dict] = []

    def step(messages: list[dict], allow_calls: bool) -> StepResult:
        offered = own + (toolbox.offered() if allow_calls else [])
        choices = asyncio.run_coroutine_threadsafe(turn(messages, offered or None), loop).result()
        last[0] = choices
        turns.append(choices.usage())
        message = choices.replies[0].message()
        calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                 for c in message.get("tool_calls") or []]
        if any(toolbox.find(c["name"]) is None for c in calls):
            calls = []  # the program's own tools were called: this turn is the answer
        return StepResult(answer=message.get("content") or "", calls=calls)

    ids = (uuid.uuid4().hex[:24] for _ in itertools.count())
    run = AgentRun(toolbox, step=step, approve=lambda record: False, report=lambda kind, record: None,
                   cancel=threading.Event(), max_steps=MAX_STEPS, call_ids=ids)
    outcome = await asyncio.to_thread(run.run, list(spec.messages))
    choices = last[0]
    message = choices.replies[0].message()
    if message.get("tool_calls"):  # the program's calls only (MCP calls of the same turn are not run)
        message["tool_calls"] = [c for c in message["tool_calls"] if toolbox.find(c["function"]["name"]) is None]
        if not message["tool_calls"]:
            del message["tool_calls"]
    reason = "tool_calls" if message.get("tool_calls") else openai_finish_reason(choices.stats[0], False)
    calls = [{k: v for k, v in r.as_dict().items() if k != "images"} for r in outcome.records]
    return message, reason, _total(turns), calls, [_wire(m) for m in outcome.messages]


def _total(turns: list[dict]) -> dict:
    """The usage of every turn, added up (each turn read its prompt: most of it from the cache)."""
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    total = {k: sum(int(t.get(k, 0)) for t in turns) for k in keys}
    total["prompt_tokens_details"] = {"cached_tokens": sum(
        int((t.get("prompt_tokens_details") or {}).get("cached_tokens", 0)) for t in turns)}
    return total


def _wire(message: dict) -> dict:
    """A message as a client sends it back: tool call arguments as JSON strings."""
    if not message.get("tool_calls"):
        return message
    calls = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"],
                                                                         ensure_ascii=False)}}
             for c in message["tool_calls"]]
    return {**message, "tool_calls": calls}


def with_tools(spec: Any, messages: list[dict], tools: Optional[list[dict]]) -> Any:
    """The request's spec for one turn of the loop."""
    return dataclasses.replace(spec, messages=messages, tools=tools,
                               tool_choice=spec.tool_choice if tools else None)
