"""What every endpoint shares (options, API keys, reading a bounded JSON body) and the endpoints that are
not about generating: GET /v1/models, GET /v1/models/{id}, GET /health.

The generating endpoints are split by API: routes_openai.py (chat and text completions),
routes_responses.py (OpenAI's Responses API) and routes_anthropic.py (Anthropic's Messages API).
"""

from __future__ import annotations

import asyncio
import hmac
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from .errors import APIError, AuthenticationError, BadRequest, PayloadTooLarge
from .schemas import parse_request
from .service import GenerationService

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
SERVER_NAME = "gemma4-mac"


@dataclass
class ServerOptions:
    """How the app behaves beyond the model: who may call it, from where, and how large a request may be."""

    api_key: Optional[str] = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allow_local_files: bool = False  # image_url with a path on this computer (opt-in)
    default_max_tokens: int = 2048
    cors_origins: tuple[str, ...] = ()  # web origins allowed to call (CORS); none by default
    allowed_hosts: Optional[tuple[str, ...]] = ("localhost", "127.0.0.1", "::1")  # Host names; None: any
    keepalive_seconds: float = 10.0  # SSE comments while a stream waits
    stored_responses: int = 64  # /v1/responses kept for previous_response_id
    stored_bytes: int = 32 * 1024 * 1024
    # the person's MCP tools for requests with "mcp_tools": true (server/mcp_tools.py): returns the current
    # gemma4_mac.toolbox.ToolRegistry, or None; None here: programs get none
    tools: Optional[Callable[[], Any]] = None


class Endpoint:
    """The steps every handler takes before its own work."""

    def __init__(self, service: GenerationService, options: ServerOptions):
        self.service, self.options = service, options

    def authorize(self, request: Request) -> None:
        """With an API key set: 'Authorization: Bearer KEY' (OpenAI's clients) or 'x-api-key: KEY'
        (Anthropic's)."""
        if not self.options.api_key:
            return
        expected = self.options.api_key.encode()
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected):
            return
        if hmac.compare_digest(request.headers.get("x-api-key", "").strip().encode(), expected):
            return
        raise AuthenticationError("missing or wrong API key: send it as 'Authorization: Bearer KEY' or "
                                  "'x-api-key: KEY'")

    async def read_body(self, request: Request) -> bytearray:
        """The body, refused (413) past max_body_bytes from its Content-Length or as it arrives."""
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"the request is {int(declared)} bytes; the most accepted is {limit}")
        # one buffer of the declared size: growing one would copy it, twice the memory for a moment
        buffer = bytearray(int(declared)) if declared.isdigit() else bytearray()
        size = 0
        async for chunk in request.stream():
            if size + len(chunk) > limit:
                raise PayloadTooLarge(f"the request is larger than {limit} bytes, the most accepted here")
            if size + len(chunk) <= len(buffer):
                buffer[size:size + len(chunk)] = chunk
            else:
                del buffer[size:]
                buffer += chunk
            size += len(chunk)
        del buffer[size:]
        return buffer

    async def read_json(self, request: Request, model_class: type[BaseModel]):
        """The body parsed as `model_class`; BadRequest names the faulty field."""
        buffer = await self.read_body(request)
        try:
            text = buffer.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadRequest(f"the request body is not UTF-8 ({error})") from error
        finally:
            buffer.clear()  # the decoded text replaces it: one copy in memory, not two
        return parse_request(model_class, text)


    async def begin(self, job, model: str, streaming: bool):
        """The job's stream, opened now so that refusals go out with their HTTP status; for a stream whose
        model must first be loaded, a task that opens it while the stream sends keep-alives."""
        try:
            later = streaming and self.service.library.needs_load(model)
        except APIError:
            job.media.cleanup()
            raise
        if later:
            return asyncio.ensure_future(self.service.open(job, model))
        return await self.service.open(job, model)


class ModelRoutes(Endpoint):
    """GET /v1/models (OpenAI's list, or Anthropic's when the client sends anthropic-version), one model,
    and /health."""

    async def models(self, request: Request) -> JSONResponse:
        self.authorize(request)
        loaded = self.service.model_id()
        cards = [m.card(self.service.created, m.id == loaded) for m in self.service.library.listed()]
        if "anthropic-version" in request.headers:
            data = [{"type": "model", "id": c["id"], "display_name": c["name"],
                     "created_at": _iso(c["created"]),
                     **{k: c[k] for k in ("context_length", "capabilities", "loaded")}} for c in cards]
            return JSONResponse({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                                 "last_id": data[-1]["id"] if data else None})
        return JSONResponse({"object": "list", "data": cards})

    async def model(self, request: Request) -> JSONResponse:
        self.authorize(request)
        known = self.service.library.find(request.path_params["model_id"])
        return JSONResponse(known.card(self.service.created, known.id == self.service.model_id()))

    async def health(self, request: Request) -> JSONResponse:
        """Liveness and who this is (the serve command asks it before starting a second server); "degraded"
        with the reason when the model is split across Macs and one of them stopped answering."""
        body = {"status": "ok", "server": SERVER_NAME, "pid": os.getpid(), "model": self.service.model_id(),
                "queued": self.service.waiting()}
        lost = getattr(getattr(self.service.slot, "model", None), "lost", None)
        if isinstance(lost, str):
            body.update(status="degraded", error=lost)
        return JSONResponse(body)


def _iso(timestamp: int) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def json_error(error: APIError, anthropic: bool = False) -> JSONResponse:
    """The error in the shape of the API that was called, with its status and headers."""
    body = error.anthropic_body() if anthropic else error.body()
    return JSONResponse(body, status_code=error.status, headers=error.headers or None)

