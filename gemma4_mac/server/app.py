"""The ASGI app (Starlette), a handle that runs it on a thread (uvicorn), and `python -m gemma4_mac serve`."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence, TextIO

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Route

from .errors import APIError, MethodNotAllowed, NotFound
from .routes import Routes, ServerOptions, json_error
from .service import GenerationService
from .sessions import DEFAULT_SESSIONS
from ..worker import ModelSlot, ModelWorker

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080
API_KEY_ENV = "GEMMA4_MAC_API_KEY"
log = logging.getLogger(__name__)


class ServeError(Exception):
    """The server cannot start as asked; printed as one line, exit status 2."""


def create_app(service: GenerationService, options: Optional[ServerOptions] = None) -> Starlette:
    """The OpenAI-compatible app over a GenerationService."""
    routes = Routes(service, options or ServerOptions())

    async def api_error(request: Request, error: APIError):
        return json_error(error)

    async def http_error(request: Request, error: HTTPException):
        if error.status_code == 404:
            return json_error(NotFound(f"no route {request.method} {request.url.path}; this server offers "
                                       "/v1/models, /v1/chat/completions and /v1/completions"))
        if error.status_code == 405:
            return json_error(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
        return json_error(APIError(str(error.detail), status=error.status_code))

    return Starlette(
        routes=[
            Route("/v1/models", routes.models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", routes.model, methods=["GET"]),
            Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
            Route("/v1/completions", routes.completions, methods=["POST"]),
            Route("/health", routes.health, methods=["GET"]),
        ],
        exception_handlers={APIError: api_error, HTTPException: http_error},
    )


def is_loopback(host: str) -> bool:
    """True for addresses only this computer can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, api_key: Optional[str]) -> None:
    """Refuse to listen beyond this computer without an API key."""
    if not is_loopback(host) and not api_key:
        raise ServeError(f"refusing to listen on {host} without an API key: anyone on the network could use "
                         f"the model. Pass --api-key KEY (or set {API_KEY_ENV}), or keep the default "
                         f"{DEFAULT_HOST}.")


class ServerHandle:
    """uvicorn serving an app on a thread; `start()` returns once it accepts connections."""

    def __init__(self, app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 log_level: str = "warning"):
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError as error:
            self.socket.close()
            raise ServeError(f"cannot listen on {host}:{port} ({error.strerror}); "
                             "choose another port") from error
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, lifespan="off", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread: Optional[threading.Thread] = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def run(self) -> None:
        """Serve on this thread until stopped (Ctrl-C ends it)."""
        self.server.run(sockets=[self.socket])

    def start(self, timeout: float = 10.0) -> "ServerHandle":
        self.thread = threading.Thread(target=self.run, name="gemma-server", daemon=True)
        self.thread.start()
        waited = 0.0
        while not self.server.started and waited < timeout and self.thread.is_alive():
            threading.Event().wait(0.02)
            waited += 0.02
        if not self.server.started:
            raise ServeError(f"the server did not start within {timeout} s")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
        self.socket.close()


def load_slot(path: Path) -> ModelSlot:
    """Load a model folder as the worker's slot, with the context this machine can hold. An incomplete
    folder (no tokenizer, chat template or processor settings) raises IncompleteModelError saying so."""
    from mlx_model import load

    model, processor = load(path)
    info = {"path": str(path), "name": path.name, "id": path.name}
    try:
        from mlx_model.planner import largest_context

        from ..model_manager import total_memory, weight_bytes

        info["context_limit"] = int(largest_context(model.config.text_config, total_memory(),
                                                    weights=weight_bytes(path)))
    except (ImportError, AttributeError, ValueError, TypeError, OSError) as error:
        log.info("no context limit for %s (%s): requests are not checked against one", path, error)
    return ModelSlot(model, processor, info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gemma4_mac serve",
                                     description="An OpenAI-compatible HTTP server for a Gemma model.")
    parser.add_argument("--model", help="folder of a converted model (default: the app's current model)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this computer only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0: any free)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}); "
                             "needed beyond 127.0.0.1")
    parser.add_argument("--model-id", help="the model name clients send (default: the folder's name)")
    parser.add_argument("--sessions", type=int, default=DEFAULT_SESSIONS,
                        help="conversation caches kept for resent conversations (default %(default)s)")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request accepted, in MB")
    return parser


def _default_model() -> Optional[str]:
    from ..settings import load_settings

    settings, _warnings = load_settings()
    return settings.model_path or None


def main(argv: Optional[Sequence[str]] = None, err: TextIO = sys.stderr) -> int:
    """`python -m gemma4_mac serve ...`: load the model, serve until Ctrl-C; returns the exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        check_binding(args.host, args.api_key)
        if args.sessions < 1:
            raise ServeError("--sessions must be at least 1")
        if not (0 <= args.port <= 65535):
            raise ServeError("--port must be from 0 to 65535")
        model_path = args.model or _default_model()
        if not model_path:
            raise ServeError("no model: pass --model PATH (a folder of a converted model)")
        path = Path(model_path).expanduser()
        from mlx_model import ModelLoadError
        from mlx_model.model_folder import check_model_path

        try:
            check_model_path(path)  # a GGUF file gets the command that converts it
        except ModelLoadError as error:
            raise ServeError(str(error)) from error
        worker = ModelWorker()

        err.write(f"loading {path} ...\n")
        try:
            worker.load(lambda: load_slot(path), source="server").wait()
        except (ModelLoadError, OSError, ValueError) as error:
            raise ServeError(str(error)) from error
        service = GenerationService(worker, sessions=args.sessions, model_id=args.model_id)
        options = ServerOptions(api_key=args.api_key, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                                allow_local_files=is_loopback(args.host))
        handle = ServerHandle(create_app(service, options), args.host, args.port, log_level="info")
        err.write(f"serving {service.model_id()!r} at {handle.base_url}"
                  + (" (API key required)" if args.api_key else "") + "\n")
        try:
            handle.run()
        finally:
            worker.stop()
        return 0
    except ServeError as error:
        err.write(f"error: {error}\n")
        return 2
    except KeyboardInterrupt:
        return 130
