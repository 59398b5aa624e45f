"""No way in from a web page: every request's Host and Origin are checked before any route sees it.

- Host: only loopback names (localhost, 127.0.0.1, ::1) unless the server listens beyond this computer
  (then also that address and the names given with --allowed-host; on 0.0.0.0 / :: any name, since an
  API key is required there). A DNS-rebinding page reaches 127.0.0.1 under its own name, so it fails here.
- Origin: browsers send it on cross-origin requests (and on same-origin POSTs); a request with an Origin
  that was not allowed with --cors-origin (or the app's setting) is refused, as is one a browser marks
  cross-site without an Origin. Programs (the openai and anthropic clients, curl, agents) send neither.
- CORS: off unless origins are allowed; then preflights from those origins are answered (204) and their
  responses carry Access-Control-Allow-Origin for that origin alone.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Optional
from urllib.parse import urlsplit

from starlette.responses import Response

from .errors import BadRequest, Forbidden
from .routes import json_error

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"
EXPOSED_HEADERS = "Retry-After, Content-Type"
HEADER_LIST = re.compile(r"^[A-Za-z0-9\-_, ]*$")


class OriginError(ValueError):
    """A --cors-origin value that is not an origin (scheme://host[:port])."""


def normalize_origin(origin: str) -> str:
    """`scheme://host[:port]` in lower case; OriginError for anything else (a path, '*', no scheme)."""
    text = origin.strip().rstrip("/")
    if text == "*":
        raise OriginError("'*' would let every web page use the model; name each origin, e.g. "
                          "http://localhost:3000")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise OriginError(f"{origin!r} is not an origin: write it as scheme://host[:port], e.g. "
                          "http://localhost:3000")
    return text.lower()


def host_name(header: str) -> str:
    """The name in a Host header, without port, brackets or a trailing dot, in lower case."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        name, _, port = value.partition(":")
        if port.isdigit() or not port:
            value = name
    return value.rstrip(".")


def accepted_hosts(bind_host: str, extra: Iterable[str] = ()) -> Optional[tuple[str, ...]]:
    """The Host names a server on `bind_host` answers to; None: any (it listens on every address)."""
    host = bind_host.strip("[]").lower()
    try:
        if ipaddress.ip_address(host).is_unspecified:
            return None
    except ValueError:
        pass
    names = set(LOOPBACK_NAMES) | {host} | {host_name(name) for name in extra if name}
    return tuple(sorted(names))


class RequestGuard:
    """ASGI middleware for the checks above; errors come in the called API's shape."""

    def __init__(self, app, *, allowed_hosts: Optional[tuple[str, ...]], cors_origins: Iterable[str] = ()):
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else frozenset(allowed_hosts)
        self.cors_origins = frozenset(normalize_origin(o) for o in cors_origins)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        origin = headers.get("origin")
        normalized = origin.lower().rstrip("/") if origin else None
        allowed = normalized if normalized in self.cors_origins else None
        problem = self._problem(headers, origin, allowed)
        if problem is not None:
            anthropic = scope.get("path", "").startswith("/v1/messages")
            await json_error(problem, anthropic)(scope, receive, send)
            return
        if allowed and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(allowed, headers)(scope, receive, send)
            return
        if not allowed:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [
                    (b"access-control-allow-origin", allowed.encode("latin-1")), (b"vary", b"Origin"),
                    (b"access-control-expose-headers", EXPOSED_HEADERS.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _problem(self, headers: dict, origin: Optional[str], allowed: Optional[str]):
        host = headers.get("host")
        if host is None:
            return BadRequest("the request has no Host header")
        if self.allowed_hosts is not None and host_name(host) not in self.allowed_hosts:
            return Forbidden(f"this server does not answer to the name {host_name(host)!r} (only "
                             f"{', '.join(sorted(self.allowed_hosts))}); a web page cannot reach it through "
                             "another name", code="forbidden_host")
        if origin is not None and allowed is None:
            return Forbidden(f"requests from web pages ({origin}) are refused; to let that page use the "
                             "model, start the server with --cors-origin ORIGIN (in the app: the server "
                             "settings)", code="forbidden_origin")
        if origin is None and headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return Forbidden("requests a browser sends from another site are refused",
                             code="forbidden_origin")
        return None

    @staticmethod
    def _preflight(origin: str, headers: dict) -> Response:
        wanted = headers.get("access-control-request-headers", "")
        allow_headers = wanted if HEADER_LIST.match(wanted) else "authorization, content-type, x-api-key"
        return Response(status_code=204, headers={
            "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": allow_headers or "authorization, content-type, x-api-key",
            "Access-Control-Max-Age": "600", "Vary": "Origin"})
