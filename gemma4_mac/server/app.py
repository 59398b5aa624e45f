"""The ASGI app (Starlette) over a GenerationService, a handle that runs it on a thread (uvicorn), and
`python -m gemma4_mac serve`."""

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
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Route

from . import registry
from .errors import APIError, MethodNotAllowed, NotFound
from .guard import OriginError, RequestGuard, accepted_hosts, normalize_origin
from .library import DEFAULT_KEEP_ALIVE, ModelLibrary
from .routes import DEFAULT_MAX_BODY_BYTES, ModelRoutes, ServerOptions, json_error
from .routes_anthropic import AnthropicRoutes
from .routes_openai import OpenAIRoutes
from .routes_responses import ResponsesRoutes
from .scheduler import DEFAULT_MAX_BATCH
from .service import GenerationService
from .sessions import DEFAULT_SESSIONS
from ..links import SPLITS
from ..ringwatch import DEFAULT_TIMEOUT as DEFAULT_PEER_TIMEOUT
from ..worker import ModelSlot, ModelWorker

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080
ENDPOINTS = ("/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages",
             "/v1/messages/count_tokens")
log = logging.getLogger(__name__)


class ServeError(Exception):
    """The server cannot start as asked; printed as one line, exit status 2."""


def create_app(service: GenerationService, options: Optional[ServerOptions] = None) -> Starlette:
    """The app: OpenAI's chat, completions, responses and models endpoints, Anthropic's messages."""
    options = options or ServerOptions()
    models = ModelRoutes(service, options)
    openai_routes = OpenAIRoutes(service, options)
    responses = ResponsesRoutes(service, options)
    anthropic = AnthropicRoutes(service, options)

    def is_anthropic(request: Request) -> bool:
        return request.url.path.startswith("/v1/messages")

    async def api_error(request: Request, error: APIError):
        return json_error(error, is_anthropic(request))

    async def http_error(request: Request, error: HTTPException):
        if error.status_code == 404:
            error = NotFound(f"no route {request.method} {request.url.path}; this server offers "
                             + ", ".join(ENDPOINTS))
        elif error.status_code == 405:
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        else:
            error = APIError(str(error.detail), status=error.status_code)
        return json_error(error, is_anthropic(request))

    allowed = options.allowed_hosts
    return Starlette(
        routes=[
            Route("/v1/models", models.models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", models.model, methods=["GET"]),
            Route("/health", models.health, methods=["GET"]),
            Route("/v1/chat/completions", openai_routes.chat_completions, methods=["POST"]),
            Route("/v1/completions", openai_routes.completions, methods=["POST"]),
            Route("/v1/responses", responses.create, methods=["POST"]),
            Route("/v1/responses/{response_id}", responses.retrieve, methods=["GET"]),
            Route("/v1/responses/{response_id}", responses.delete, methods=["DELETE"]),
            Route("/v1/messages", anthropic.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", anthropic.count_tokens, methods=["POST"]),
        ],
        middleware=[Middleware(RequestGuard, allowed_hosts=allowed, cors_origins=options.cors_origins)],
        exception_handlers={APIError: api_error, HTTPException: http_error},
    )


def options_for(host: str, **fields) -> ServerOptions:
    """ServerOptions for a server listening on `host` (the Host names it answers to follow from it);
    OriginError for a CORS origin that is not one."""
    extra_hosts = fields.pop("extra_hosts", ())
    fields["cors_origins"] = tuple(normalize_origin(o) for o in fields.get("cors_origins", ()))
    return ServerOptions(allowed_hosts=accepted_hosts(host, extra_hosts), **fields)


def _tools_of(config: Optional[str], worker: ModelWorker):
    """The ToolRegistry of `serve --mcp CONFIG.json` (servers start on the first request that asks), or None."""
    if not config:
        return None
    from ..mcp_config import McpConfigError, load_config_file
    from ..toolbox import ToolRegistry

    try:
        return ToolRegistry(load_config_file(config))
    except McpConfigError as error:
        worker.stop()
        raise ServeError(f"--mcp: {error}") from error


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
        self.socket.listen(2048)  # connections wait in the backlog until uvicorn serves: none is refused
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, lifespan="off", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread: Optional[threading.Thread] = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"  # what a client on this computer dials
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


# ------------------------------------------------------------------------------------ the serve command

API_KEY_ENV = "GEMMA4_MAC_API_KEY"


def is_loopback(host: str) -> bool:
    """True for addresses only this computer can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, api_key: Optional[str]) -> None:
    """Refuse to listen beyond this computer without an API key."""
    if not is_loopback(host) and not api_key:
        raise ServeError(f"refusing to listen on {host} without an API key: anyone on the network could use "
                         f"the model. Pass --api-key KEY (or set {API_KEY_ENV}), or keep the default "
                         f"{DEFAULT_HOST}.")


def load_slot(path: Path, group=None, watchdog=None, split: str = "heads") -> ModelSlot:
    """Load a model folder as the worker's slot, with the context this machine can hold. An incomplete
    folder (no tokenizer, chat template or processor settings) raises IncompleteModelError saying so.
    With a `group` (serve --hosts) it is rank 0's shard, leading the other Macs' (gemma4_mac/distributed.py);
    `watchdog` (gemma4_mac/ringwatch.py) bounds each wait for them; `split` says how ("layers" or "heads").
    """
    from mlx_model import load

    from .library import describe_folder

    model, processor = load(path, group=group, split=split)
    if group is not None:
        from mlx_model import ModelLoadError

        from ..distributed import LeaderModel, PeerLostError

        try:
            model = LeaderModel(model, group, watchdog)
        except PeerLostError as error:  # a follower could not load its shard
            raise ModelLoadError(str(error)) from error
    described = describe_folder(path)
    info = {"path": str(path), "name": path.name, "id": described.id, "chat": described.chat}
    if described.context_length:
        info["context_limit"] = described.context_length
    return ModelSlot(model, processor, info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gemma4_mac serve",
        description="A local HTTP server for Gemma models: OpenAI's chat completions, completions and "
                    "responses APIs and Anthropic's messages API (see docs/server.md).")
    parser.add_argument("--model", help="folder of a converted model, loaded at start (default: the app's "
                                        "current model); any model of the app's library loads on demand")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this computer only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0: any free)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require this key as 'Authorization: Bearer KEY' or 'x-api-key: KEY' (default: "
                             f"${API_KEY_ENV}); needed beyond 127.0.0.1")
    parser.add_argument("--model-id", help="another name clients may send for the --model model")
    parser.add_argument("--keep-alive", type=float, default=DEFAULT_KEEP_ALIVE, metavar="SECONDS",
                        help="unload the model after this many idle seconds "
                             "(default %(default)s; negative: never)")
    parser.add_argument("--sessions", type=int, default=DEFAULT_SESSIONS,
                        help="conversation caches kept for resent conversations (default %(default)s)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="most replies decoded together (default %(default)s; 1: one at a time)")
    parser.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_BYTES / 2 ** 20,
                        help="largest request accepted, in MB (default %(default)s)")
    parser.add_argument("--allow-local-files", action="store_true",
                        help="let requests name image files on this computer by path (off: data URLs only)")
    parser.add_argument("--mcp", metavar="CONFIG.json",
                        help="MCP servers (Claude Desktop's JSON) whose read-only tools requests may ask for "
                             "with \"mcp_tools\": true")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="a web origin (scheme://host[:port]) whose pages may call the server; "
                             "repeatable")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="another Host name to answer to (e.g. this Mac's .local name) besides loopback")
    parser.add_argument("--hosts", metavar="HOSTS.JSON",
                        help="split --model across the Macs of this MLX hostfile, this Mac first; the others "
                             "follow this one (docs/distributed.md)")
    parser.add_argument("--ring-port", type=int, default=32323,
                        help="first port of the Macs' ring with --hosts (one per Mac; default %(default)s)")
    parser.add_argument("--split", choices=SPLITS, default="auto",
                        help="with --hosts: split the model by layers (for Ethernet and Wi-Fi) or by heads "
                             "(for Thunderbolt); auto picks by the link (default)")
    parser.add_argument("--peer-timeout", type=float, default=DEFAULT_PEER_TIMEOUT, metavar="SECONDS",
                        help="with --hosts: end a request (and mark the group degraded) when a model step "
                             "waits this long for another Mac (default %(default)s)")
    return parser


def _default_model() -> Optional[str]:
    from ..settings import load_settings

    settings, _warnings = load_settings()
    return settings.model_path or None


def _validated(args) -> Optional[Path]:
    check_binding(args.host, args.api_key)
    if args.sessions < 1:
        raise ServeError("--sessions must be at least 1")
    if args.max_batch < 1:
        raise ServeError("--max-batch must be at least 1")
    if not (0 <= args.port <= 65535):
        raise ServeError("--port must be from 0 to 65535")
    if args.max_body_mb <= 0:
        raise ServeError("--max-body-mb must be above 0")
    for origin in args.cors_origin:
        try:
            normalize_origin(origin)
        except OriginError as error:
            raise ServeError(f"--cors-origin {error}") from error
    model_path = args.model or _default_model()
    if not model_path:
        return None
    path = Path(model_path).expanduser()
    from mlx_model import ModelLoadError
    from mlx_model.model_folder import check_model_path

    try:
        check_model_path(path)  # a GGUF file gets the command that converts it
    except ModelLoadError as error:
        raise ServeError(str(error)) from error
    return path


def _already_serving(err: TextIO) -> bool:
    """Whether the app (or another serve) already serves here; then say where, so no second copy loads."""
    other = registry.running_server()
    if other is None:
        return False
    who = "The app's server" if other.get("kind") == "app" else "Another `serve`"
    model = f" with {other['model']!r} loaded" if other.get("model") else ""
    key = " (it asks for its API key)" if other.get("api_key") else ""
    err.write(f"{who} is already running at {other['url']}{model}{key}; point your client there: it shares "
              "that model, so no second copy is loaded. To run this server instead, turn the app's local "
              "server off in its Settings (or stop the other server).\n")
    return True


def main(argv: Optional[Sequence[str]] = None, err: TextIO = sys.stderr) -> int:
    """`python -m gemma4_mac serve ...`: load the model, serve until Ctrl-C; returns the exit status
    (2: cannot start as asked, 3: the app's server already runs)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    cluster = None
    try:
        path = _validated(args)
        if args.hosts and path is None:
            raise ServeError("--hosts needs --model PATH: the model to split across the Macs")
        if _already_serving(err):
            return 3
        loader, keep_alive = load_slot, args.keep_alive
        if args.hosts:
            cluster, loader = _start_group(args, path, err)
            keep_alive = -1  # the other Macs hold their shards for as long as this server runs
        worker = ModelWorker()
        tools = _tools_of(args.mcp, worker)  # a bad configuration is reported before a model loads
        library = ModelLibrary(worker, owns_model=True, loader=loader, keep_alive=keep_alive,
                               extra_paths=(path,) if path else (), alias=args.model_id)
        if path is None and not library.known():
            worker.stop()
            raise ServeError("no model: pass --model PATH (a folder of a converted model), or add one in "
                             "the app")
        if path is not None:
            err.write(f"loading {path} ...\n")
            from mlx_model import ModelLoadError

            try:
                worker.load(lambda: loader(path), source="server").wait()
            except (ModelLoadError, OSError, ValueError) as error:
                worker.stop()
                raise ServeError(str(error)) from error
        service = GenerationService(worker, sessions=args.sessions, library=library, max_batch=args.max_batch)
        options = options_for(args.host, api_key=args.api_key, max_body_bytes=int(args.max_body_mb * 2 ** 20),
                              allow_local_files=args.allow_local_files, cors_origins=tuple(args.cors_origin),
                              extra_hosts=tuple(args.allowed_host), tools=(lambda: tools) if tools else None)
        handle = ServerHandle(create_app(service, options), args.host, args.port, log_level="info")
        loaded = service.model_id()
        err.write(f"serving {loaded!r} at {handle.base_url}" if loaded else f"serving at {handle.base_url}"
                  + " (models load on demand)")
        err.write((" (API key required)" if args.api_key else "") + "\n")
        registry.record(handle.base_url, kind="serve", api_key=bool(args.api_key))
        try:
            handle.run()
        finally:
            registry.forget(handle.base_url)
            service.close()
            worker.stop()
            if tools is not None:
                tools.close()
        return 0
    except ServeError as error:
        err.write(f"error: {error}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if cluster is not None:
            _stop_group(cluster, loader)


def _start_group(args, path: Path, err: TextIO):
    """Start the other Macs of --hosts (they load their shards); returns them and a loader that gives rank 0's
    slot for --model."""
    from ..cluster import ClusterError, start

    err.write(f"starting the Macs of {args.hosts} ...\n")
    try:
        cluster = start(args.hosts, path, port=args.ring_port, peer_timeout=args.peer_timeout,
                        split=args.split, err=err)
    except ClusterError as error:
        raise ServeError(str(error)) from error
    slots: dict = {}

    def loader(folder: Path) -> ModelSlot:
        if Path(folder) != path:
            return load_slot(folder)  # other models of the library run on this Mac alone
        if "group" not in slots:
            slots["group"] = load_slot(path, group=cluster.group, watchdog=cluster.watchdog, split=cluster.split)
        return slots["group"]

    loader.slots = slots
    return cluster, loader


def _stop_group(cluster, loader) -> None:
    slot = getattr(loader, "slots", {}).get("group")
    if slot is not None:
        slot.model.close()
    cluster.close()
