"""Reading a job's stream in a request handler, and sending server-sent events.

`items()` is the one loop every endpoint reads a job with: it yields READY and EVENT items, raises the
job's error, cancels the job when the client leaves (asked every DISCONNECT_POLL_SECONDS) or when the
handler stops reading, and, for streams, yields KEEPALIVE while nothing arrives (a request waiting in
the queue, or a long prompt being read) so that clients and proxies keep the connection open.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Awaitable, Optional, Union

from starlette.requests import Request
from starlette.responses import StreamingResponse

from .errors import APIError
from .service import END, ERROR, EVENT, Output, Stream

DISCONNECT_POLL_SECONDS = 0.25
KEEPALIVE = "keepalive"


class ClientGone(APIError):
    """The client left before its answer was ready (nginx's 499; nobody reads the body)."""

    status, code = 499, "client_closed_request"


class DisconnectWatch:
    """Asks the server whether the client left at most every DISCONNECT_POLL_SECONDS."""

    def __init__(self):
        self.checked = time.monotonic()

    async def gone(self, request: Request) -> bool:
        now = time.monotonic()
        if now - self.checked < DISCONNECT_POLL_SECONDS:
            return False
        self.checked = now
        return await request.is_disconnected()


async def items(stream: Stream, request: Optional[Request] = None, *,
                keepalive: Optional[float] = None) -> AsyncIterator[tuple[str, Any]]:
    """(READY, prompt tokens), (EVENT, Output) ... until the job ends; (KEEPALIVE, None) every `keepalive`
    seconds without news. Raises the job's APIError, or ClientGone once `request`'s client left."""
    watch = DisconnectWatch() if request is not None else None
    quiet_since = time.monotonic()
    try:
        while True:
            try:
                kind, payload = await stream.get(DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                kind, payload = None, None
            if watch is not None and await watch.gone(request):
                raise ClientGone("the client closed the connection; its generation was cancelled")
            if kind is None:
                if keepalive and time.monotonic() - quiet_since >= keepalive:
                    quiet_since = time.monotonic()
                    yield KEEPALIVE, None
                continue
            quiet_since = time.monotonic()
            if kind == ERROR:
                await _drain(stream)
                raise payload
            if kind == END:
                return
            yield kind, payload
    finally:
        stream.cancel()  # the client left or the handler stopped reading (after the end this changes nothing)


async def stream_items(opening: Union[Stream, Awaitable[Stream]], *,
                       keepalive: Optional[float]) -> AsyncIterator[tuple[str, Any]]:
    """`items()` of a stream that may still be opening (a model being loaded for it): KEEPALIVE while it
    opens, then the stream's own items. A stream opened but never read is cancelled."""
    if not isinstance(opening, Stream):
        task = asyncio.ensure_future(opening)
        handed_over = False
        try:
            while not task.done():
                done, _ = await asyncio.wait({task}, timeout=keepalive)
                if not done:
                    yield KEEPALIVE, None
            opening = task.result()
            handed_over = True
        finally:
            if not task.done():
                task.cancel()
            elif not handed_over and not task.cancelled() and task.exception() is None:
                task.result().cancel()
    async for item in items(opening, keepalive=keepalive):
        yield item


async def outputs(opening: Union[Stream, Awaitable[Stream]], *,
                  keepalive: Optional[float]) -> AsyncIterator[Optional[Output]]:
    """For an SSE response: each Output of the stream, and None where a keep-alive is due."""
    async for kind, payload in stream_items(opening, keepalive=keepalive):
        if kind == KEEPALIVE:
            yield None
        elif kind == EVENT:
            yield payload


async def collect(stream: Stream, request: Request) -> list[Output]:
    """Every Output of a job (for a whole, non-streamed answer)."""
    return [payload async for kind, payload in items(stream, request) if kind == EVENT]


async def _drain(stream: Stream) -> None:
    """Wait for the job's END so its attachments are gone before the error is answered."""
    while True:
        kind, _ = await stream.get()
        if kind == END:
            return


def sse(data: dict, event: Optional[str] = None) -> str:
    """One server-sent event (with an `event:` line when the API names its events)."""
    line = "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n"
    return f"event: {event}\n{line}" if event else line


def keepalive_comment() -> str:
    """An SSE comment: clients skip it, connections and proxies see traffic."""
    return ": keep-alive\n\n"


def event_stream(events: AsyncIterator[str]) -> "DisconnectAwareStream":
    """Server-sent events, cancelled when the client leaves; headers go out at once."""
    return DisconnectAwareStream(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class DisconnectAwareStream(StreamingResponse):
    """A streaming response that always listens for the client leaving (Starlette skips that on ASGI 2.4),
    so a generation is cancelled, or a queued one leaves the queue, even while nothing is being sent."""

    async def __call__(self, scope, receive, send) -> None:
        import anyio

        async with anyio.create_task_group() as group:
            async def run_then_stop(step) -> None:
                await step()
                group.cancel_scope.cancel()

            group.start_soon(run_then_stop, lambda: self.stream_response(send))
            await run_then_stop(lambda: self.listen_for_disconnect(receive))

