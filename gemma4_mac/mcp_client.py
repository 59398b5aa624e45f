"""The app's MCP client: configured servers (gemma4_mac.mcp_config) reached with the official `mcp` SDK.

The SDK is asyncio, so `McpHub` runs it on a thread of its own with its own event loop, never on the model
thread nor the window's. Its methods are plain blocking calls for any other thread: each waits for its
coroutine with a timeout and gives up at once when a cancel event is set (the coroutine is cancelled on the
loop). A server is started on first use and kept for later calls; one that crashed is started again on the
next call. A stdio server's stderr goes to a temporary file, so a crash is reported with its last lines.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Optional

from .mcp_config import ServerConfig

CONNECT_TIMEOUT = 30.0  # starting a server (npx may fetch a package first) and listing its tools
CLOSE_TIMEOUT = 8.0  # the SDK's own shutdown of a stdio server takes at most about 6 s
POLL_SECONDS = 0.05  # how often a waiting call looks at its cancel event
RETRY_AFTER = 60.0  # a server that failed to start is not tried again for the next turn's listing before this
# a Mac app started from Finder has a bare PATH: where Homebrew and the usual installers put node, uv, python
EXTRA_PATHS = ("/opt/homebrew/bin", "/usr/local/bin", os.path.expanduser("~/.local/bin"),
               os.path.expanduser("~/.cargo/bin"))
log = logging.getLogger(__name__)


class McpError(RuntimeError):
    """An MCP server or call that failed; the message is for the person (and is what the model is told)."""


class McpUnavailable(McpError):
    """The server could not be started or reached, or it stopped."""


class McpTimeout(McpError):
    """The server did not answer in time."""


class McpCancelled(McpError):
    """The person stopped the call."""


@dataclass
class ToolInfo:
    """A tool a server offers: what the model is told, and whether it only reads.

    MCP's annotations are hints: `readOnlyHint` true marks a tool that changes nothing; a tool without it
    is taken to write (the person is asked before it runs)."""

    server: str
    name: str
    description: str = ""
    input_schema: dict = field(default_factory=dict)
    title: str = ""
    read_only: bool = False
    destructive: Optional[bool] = None

    @property
    def key(self) -> str:
        """"server/tool": how settings and chats name the tool."""
        return f"{self.server}/{self.name}"

    @property
    def writes(self) -> bool:
        return not self.read_only


@dataclass
class ToolOutput:
    """What a tool returned: its text, its images (bytes, MIME type), its structured result, and whether
    the server marked it an error."""

    text: str = ""
    images: list[tuple[bytes, str]] = field(default_factory=list)
    structured: Any = None
    is_error: bool = False


def tool_info(server: str, tool: Any) -> ToolInfo:
    """Our record of an SDK `Tool`."""
    annotations = getattr(tool, "annotations", None)
    schema = getattr(tool, "input_schema", None)
    return ToolInfo(server=server, name=tool.name, description=(tool.description or "").strip(),
                    input_schema=dict(schema) if isinstance(schema, dict) else {"type": "object"},
                    title=(getattr(tool, "title", None) or getattr(annotations, "title", None) or ""),
                    read_only=bool(getattr(annotations, "read_only_hint", False)),
                    destructive=getattr(annotations, "destructive_hint", None))


def tool_output(result: Any) -> ToolOutput:
    """Our record of an SDK `CallToolResult`: text parts joined, images decoded, other parts described."""
    texts, images = [], []
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            texts.append(block.text)
        elif kind == "image":
            try:
                images.append((base64.b64decode(block.data), block.mime_type))
            except (ValueError, TypeError):
                texts.append(f"[an image of type {block.mime_type} that could not be decoded]")
        elif kind == "resource":
            resource = block.resource
            text = getattr(resource, "text", None)
            texts.append(text if text is not None else f"[a file: {resource.uri}, {resource.mime_type or 'binary'}]")
        elif kind == "resource_link":
            texts.append(f"[a link to {block.uri}{': ' + block.description if block.description else ''}]")
        elif kind == "audio":
            texts.append(f"[audio of type {block.mime_type}, not played to the model]")
    structured = getattr(result, "structured_content", None)
    return ToolOutput(text="\n".join(texts), images=images, structured=structured,
                      is_error=bool(getattr(result, "is_error", False)))


def resolve_command(command: str, env: dict[str, str]) -> str:
    """The program to start, found on PATH and the usual install folders; McpUnavailable when it is not."""
    if os.sep in command:
        path = os.path.expanduser(command)
        if os.access(path, os.X_OK):
            return path
        raise McpUnavailable(f"{command} cannot be run: no such program (or it is not executable).")
    search = os.pathsep.join([env.get("PATH") or os.environ.get("PATH", ""), *EXTRA_PATHS])
    found = shutil.which(command, path=search)
    if found is None:
        raise McpUnavailable(f"the program {command!r} was not found; install it, or write its full path "
                             f"(for example /opt/homebrew/bin/{command}) as the server's \"command\".")
    return found


class _Connection:
    """One server's session, kept open by a task on the hub's loop (the SDK's contexts must end in the
    task that entered them)."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.client: Any = None
        self.error: Optional[BaseException] = None
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        self.task: Optional[asyncio.Task] = None
        self.errlog = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") \
            if config.transport == "stdio" else None
        self.errlog_mark = 0  # what the server wrote before the call under way is not its reason to fail

    def mark_stderr(self) -> None:
        """Remember how much the server has written to stderr so far."""
        if self.errlog is not None:
            try:
                self.errlog_mark = os.fstat(self.errlog.fileno()).st_size
            except OSError:
                self.errlog_mark = 0

    def stderr_tail(self, lines: int = 3) -> str:
        """The last lines the server wrote to stderr since `mark_stderr` (empty for an HTTP server)."""
        if self.errlog is None:
            return ""
        try:
            self.errlog.seek(self.errlog_mark)
            text = self.errlog.read()[-4000:]
        except (OSError, ValueError):
            return ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())

    def close_stderr(self) -> None:
        if self.errlog is not None:
            self.errlog.close()

    def transport(self):
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client
        from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

        config = self.config
        if config.url:
            return streamable_http_client(config.url, http_client=create_mcp_http_client(headers=config.headers))
        env = dict(config.env)
        env.setdefault("PATH", os.pathsep.join([os.environ.get("PATH", ""), *EXTRA_PATHS]))
        params = StdioServerParameters(command=resolve_command(config.command, env), args=list(config.args),
                                       env=env, cwd=os.path.expanduser(config.cwd) if config.cwd else None)
        return stdio_client(params, errlog=self.errlog)

    async def keep(self) -> None:
        from mcp import Client
        from mcp.types import Implementation

        try:
            client = Client(self.transport(), read_timeout_seconds=self.config.timeout,
                            client_info=Implementation(name="Gemma", version="1"))
            async with client:
                self.client = client
                self.ready.set()
                await self.stop.wait()
        except BaseException as error:  # noqa: B902 (the reason is kept for the caller; cancellation ends it)
            self.error = error
            if isinstance(error, asyncio.CancelledError):
                raise
        finally:
            self.client = None
            self.ready.set()


class McpHub:
    """Connections to the configured MCP servers on a thread with its own event loop.

    `tools(name)` lists a server's tools (starting it if need be); `call(name, tool, arguments)` runs one.
    Both block the calling thread (never call them on the window's thread) and raise McpError subclasses
    with a message for the person. `close()` stops every server."""

    THREAD_NAME = "gemma-mcp"

    def __init__(self, servers: list[ServerConfig], *, connect_timeout: float = CONNECT_TIMEOUT):
        self.servers = {s.name: s for s in servers if not s.disabled}
        self.connect_timeout = connect_timeout
        self._connections: dict[str, _Connection] = {}
        self._tools: dict[str, list[ToolInfo]] = {}
        self._failed: dict[str, tuple[float, str]] = {}  # server: (when, why) its last listing failed
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._closed = False
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.THREAD_NAME, daemon=True)
        self._thread.start()

    # -- any thread but the hub's -------------------------------------------------------------------------

    def tools(self, server: str, *, refresh: bool = False,
              cancel: Optional[threading.Event] = None) -> list[ToolInfo]:
        """The tools `server` offers (cached after the first listing unless `refresh`)."""
        with self._lock:
            cached = self._tools.get(server)
        if cached is not None and not refresh:
            return list(cached)
        config = self._config(server)
        listed = self._wait(self._list(config), self.connect_timeout + config.timeout, cancel,
                            f"{server} did not list its tools within {self.connect_timeout + config.timeout:.0f} s")
        with self._lock:
            self._tools[server] = listed
        return list(listed)

    def all_tools(self, cancel: Optional[threading.Event] = None, *,
                  refresh: bool = False) -> tuple[list[ToolInfo], dict[str, str]]:
        """Every server's tools (listed side by side; cached unless `refresh`); (tools, {server: why it has
        none})."""
        now = time.monotonic()
        with self._lock:
            cached = {} if refresh else {name: list(self._tools[name]) for name in self.servers
                                         if name in self._tools}
            problems = {} if refresh else {name: why for name, (when, why) in self._failed.items()
                                           if now - when < RETRY_AFTER}
        futures = {name: self._submit(self._list(config)) for name, config in self.servers.items()
                   if name not in cached and name not in problems}
        found = dict(cached)
        for name, future in futures.items():
            timeout = self.connect_timeout + self.servers[name].timeout
            try:
                found[name] = self._result(future, timeout, cancel,
                                           f"{name} did not list its tools within {timeout:.0f} s")
            except McpCancelled:
                raise
            except McpError as error:
                problems[name] = str(error)
                with self._lock:
                    self._failed[name] = (time.monotonic(), str(error))
                continue
            with self._lock:
                self._tools[name] = found[name]
                self._failed.pop(name, None)
        # the configuration's order, whatever answered first: the prompt (and its cache) stays the same
        return [t for name in self.servers for t in found.get(name, [])], problems

    def call(self, server: str, tool: str, arguments: dict, *, cancel: Optional[threading.Event] = None,
             timeout: Optional[float] = None) -> ToolOutput:
        """Run one tool; McpTimeout after the server's timeout (or `timeout`), McpCancelled when `cancel` is
        set meanwhile, McpUnavailable when the server cannot be reached or stops during the call."""
        config = self._config(server)
        limit = timeout if timeout is not None else config.timeout
        return self._wait(self._call(config, tool, arguments, limit), limit + self.connect_timeout, cancel,
                          f"{tool} on {server} did not answer within {limit:.0f} s")

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop every server and the hub's thread (servers get the SDK's orderly shutdown)."""
        if self._closed:
            return
        self._closed = True
        try:
            future = asyncio.run_coroutine_threadsafe(self._close_all(), self._loop)
            future.result(timeout)
        except (FutureTimeout, RuntimeError) as error:
            log.warning("MCP servers did not all stop within %.0f s: %s", timeout, error)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2.0)

    # -- waiting ------------------------------------------------------------------------------------------

    def _config(self, server: str) -> ServerConfig:
        config = self.servers.get(server)
        if config is None:
            raise McpUnavailable(f"no MCP server named {server!r} is configured (or it is disabled).")
        return config

    def _submit(self, coroutine) -> Future:
        if self._closed:
            coroutine.close()
            raise McpUnavailable("the MCP client has been closed.")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def _wait(self, coroutine, timeout: float, cancel: Optional[threading.Event], late: str) -> Any:
        return self._result(self._submit(coroutine), timeout, cancel, late)

    @staticmethod
    def _result(future: Future, timeout: float, cancel: Optional[threading.Event], late: str) -> Any:
        """The future's result, polling `cancel`; the coroutine is cancelled on timeout or cancel."""
        waited = 0.0
        while True:
            try:
                return future.result(POLL_SECONDS)
            except FutureTimeout:
                waited += POLL_SECONDS
            if cancel is not None and cancel.is_set():
                future.cancel()
                raise McpCancelled("stopped before the tool answered.")
            if waited >= timeout:
                future.cancel()
                raise McpTimeout(late + ".")

    # -- the hub's loop -----------------------------------------------------------------------------------

    async def _connected(self, config: ServerConfig) -> Any:
        """The server's open client, starting the server when it has none (or its last one ended)."""
        connection = self._connections.get(config.name)
        if connection is not None and connection.task is not None and connection.task.done():
            self._connections.pop(config.name, None)
            connection = None
        if connection is None:
            connection = self._connections[config.name] = _Connection(config)
            connection.task = asyncio.get_running_loop().create_task(connection.keep())
        try:
            await asyncio.wait_for(connection.ready.wait(), self.connect_timeout)
        except asyncio.TimeoutError:
            await self._drop(connection)
            raise McpTimeout(f"{config.name} did not start within {self.connect_timeout:.0f} s"
                             + self._tail(connection)) from None
        if connection.client is None:
            self._connections.pop(config.name, None)
            raise McpUnavailable(self._start_failure(connection)) from None
        return connection.client

    async def _list(self, config: ServerConfig) -> list[ToolInfo]:
        client = await self._connected(config)
        tools, cursor = [], None
        try:
            for _page in range(100):  # a server that pages forever cannot hang the listing
                listed = await client.list_tools(cursor=cursor)
                tools += [tool_info(config.name, tool) for tool in listed.tools]
                cursor = listed.next_cursor
                if not cursor:
                    break
        except Exception as error:  # the SDK's MCPError, a broken pipe, a reply that fails validation
            raise await self._failure(config, error, "listing its tools") from error
        return tools

    async def _call(self, config: ServerConfig, tool: str, arguments: dict, timeout: float) -> ToolOutput:
        client = await self._connected(config)
        connection = self._connections.get(config.name)
        if connection is not None:
            connection.mark_stderr()
        try:
            result = await client.call_tool(tool, arguments, read_timeout_seconds=timeout)
        except Exception as error:  # the SDK's MCPError (timeouts too), a broken pipe, a reply that fails validation
            raise await self._failure(config, error, f"running {tool}") from error
        return tool_output(result)

    async def _failure(self, config: ServerConfig, error: BaseException, doing: str) -> McpError:
        """The McpError for an error the SDK raised; a server that stopped is let go (restarted on next use)."""
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        connection = self._connections.get(config.name)
        if isinstance(error, MCPError) and error.code == REQUEST_TIMEOUT:
            return McpTimeout(f"{config.name} did not answer within {config.timeout:.0f} s while {doing}.")
        alive = connection is not None and connection.task is not None and not connection.task.done()
        if isinstance(error, MCPError) and error.code != CONNECTION_CLOSED and alive:
            return McpError(f"{config.name} answered with an error while {doing}: {error}")
        said = self._tail(connection)
        if connection is not None:
            await self._drop(connection)
        return McpUnavailable(f"{config.name} stopped while {doing}{said}; it will be started again for the "
                              "next call.")

    @staticmethod
    def _tail(connection: Optional[_Connection]) -> str:
        tail = connection.stderr_tail() if connection is not None else ""
        return f" (it said: {tail})" if tail else ""

    def _start_failure(self, connection: _Connection) -> str:
        error, config = connection.error, connection.config
        if isinstance(error, McpError):
            return f"{config.name}: {error}"
        reason = _reason(error)
        return f"{config.name} could not be started ({config.describe()}): {reason}{self._tail(connection)}."

    async def _drop(self, connection: _Connection) -> None:
        """End a connection's task (the SDK stops the server process) and forget it."""
        if self._connections.get(connection.config.name) is connection:
            self._connections.pop(connection.config.name)
        with self._lock:
            self._tools.pop(connection.config.name, None)
        connection.stop.set()
        task = connection.task
        if task is not None and not task.done():
            if connection.client is None:
                task.cancel()  # still starting (a server that never answers): the SDK's cleanup is bounded
            try:
                await asyncio.wait_for(asyncio.shield(task), CLOSE_TIMEOUT)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                task.cancel()
            except Exception as error:  # already recorded as connection.error by `keep`
                log.debug("MCP server %s ended with %s", connection.config.name, error)
        connection.close_stderr()

    async def _close_all(self) -> None:
        await asyncio.gather(*(self._drop(c) for c in list(self._connections.values())), return_exceptions=True)


def _reason(error: Optional[BaseException]) -> str:
    """A short reason from an exception the SDK raised (task groups wrap them in ExceptionGroups)."""
    from mcp import MCPError
    from mcp.types import CONNECTION_CLOSED

    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if error is None or (isinstance(error, MCPError) and error.code == CONNECTION_CLOSED):
        return "it stopped before answering"
    text = str(error).strip()
    return text or type(error).__name__
