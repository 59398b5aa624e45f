"""The app's switch for the local OpenAI-compatible server: start and stop it in-process.

Qt-free. The server submits its requests to the engine's `ModelWorker` as "server" jobs, so the one
model in memory serves the window and the API, taking turns fairly, and a model loaded in the window
is the one the API serves. The web framework (and MLX, through the server) is imported only when a
server starts, so an app that never turns it on never pays for it.

    control = LocalServer(engine)          # once, next to the engine
    url = control.apply(settings)          # at start-up and after each settings change; None when off
    control.stop()                         # before engine.shutdown()
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

log = logging.getLogger(__name__)


class ServerControlError(Exception):
    """The server cannot start as configured; the message says what to change in Settings."""


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens, who may call it, and from which web pages."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str = ""
    cors_origins: tuple[str, ...] = ()
    allow_local_files: bool = False
    mcp_tools: bool = False  # requests may ask for the person's read-only MCP tools (server/mcp_tools.py)

    @classmethod
    def from_settings(cls, settings: Any) -> "ServerConfig":
        """The server fields of an `AppSettings`."""
        return cls(settings.server_host, settings.server_port, settings.server_api_key,
                   tuple(split_origins(getattr(settings, "server_cors_origins", ""))),
                   bool(getattr(settings, "server_allow_local_files", False)),
                   bool(getattr(settings, "server_mcp_tools", False)))


def split_origins(text: str) -> list[str]:
    """The origins of a settings field (separated by spaces or commas)."""
    return [part for part in text.replace(",", " ").split() if part]


class LocalServer:
    """The in-process server over the engine's model thread (`owner` is an Engine or a ModelWorker)."""

    def __init__(self, owner: Any):
        self.worker = getattr(owner, "worker", owner)
        self.owner = owner  # an Engine's `tools` (its ToolRegistry) are what requests with mcp_tools get
        self.config: Optional[ServerConfig] = None
        self._handle = None
        self._service = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    @property
    def base_url(self) -> Optional[str]:
        """What clients use as `base_url` (http://HOST:PORT/v1), or None while stopped."""
        return self._handle.base_url if self._handle is not None else None

    def start(self, config: ServerConfig) -> str:
        """Listen as configured (restarting if already serving); returns the base URL.

        Raises ServerControlError when the address is beyond this computer without an API key, or the
        port is taken.
        """
        self.stop()
        from ..runtime import import_server

        import_server()  # after the model thread's imports, never racing them (waits if they still run)
        from . import registry
        from .app import ServeError, ServerHandle, create_app, is_loopback, options_for
        from .guard import OriginError
        from .service import GenerationService

        if not is_loopback(config.host) and not config.api_key:
            raise ServerControlError(f"The server was not started: listening on {config.host} lets anyone on "
                                     "the network use the model. Set an API key in Settings, or use "
                                     "127.0.0.1.")
        service = GenerationService(self.worker)  # serves the window's model; never swaps it
        try:
            options = options_for(config.host, api_key=config.api_key or None,
                                  cors_origins=config.cors_origins,
                                  allow_local_files=config.allow_local_files,
                                  tools=(lambda: getattr(self.owner, "tools", None)) if config.mcp_tools else None)
            handle = ServerHandle(create_app(service, options), config.host, config.port).start()
        except OriginError as error:
            service.close()
            raise ServerControlError(f"The server was not started: allowed web origins: {error}.") from error
        except ServeError as error:
            service.close()
            raise ServerControlError(f"The server was not started: {error}.") from error
        self._handle, self._service, self.config = handle, service, config
        registry.record(handle.base_url, kind="app", api_key=bool(config.api_key))
        log.info("serving the app's model at %s", handle.base_url)
        return handle.base_url

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening (open streams are cancelled) and free the server's conversation caches."""
        handle, service = self._handle, self._service
        self._handle, self._service, self.config = None, None, None
        if handle is not None:
            from . import registry

            registry.forget(handle.base_url)
            handle.stop(timeout)
        if service is not None:
            service.close()

    def apply(self, settings: Any) -> Optional[str]:
        """Start, stop or restart to match `settings` (server_enabled, host, port, api key).

        Returns the base URL while serving, None when switched off; raises ServerControlError when it
        cannot start (then it is stopped).
        """
        if not settings.server_enabled:
            self.stop()
            return None
        wanted = ServerConfig.from_settings(settings)
        if self.running and wanted == self.config:
            return self.base_url
        return self.start(wanted)


def start(owner: Any, settings: Any) -> LocalServer:
    """Start a server for `owner` (an Engine or ModelWorker) as `settings` say, whatever server_enabled says."""
    server = LocalServer(owner)
    server.start(ServerConfig.from_settings(settings))
    return server
