"""What one caller can hold on the HTTP port: bytes of body, seconds of a connection.

* :class:`ContentLengthGuard` (ASGI middleware): a declared ``Content-Length``
  over ``MAX_BODY_BYTES`` is a 413 before a byte of the body is read; headers
  over 16 KiB are a 431.
* :func:`read_body`: a chunked (or lying) body is cut off at the limit (413).
  Both answer with ``Connection: close``, so the rest is never read.
* :class:`BoundedH11Protocol`: the request's headers must arrive within
  ``HEADER_TIMEOUT_SECONDS`` and its body within ``BODY_TIMEOUT_SECONDS`` after
  them, or the connection is closed (uvicorn itself only times out idle
  keep-alive connections). While the app does not read, uvicorn stops reading the
  socket after 64 KiB, so an unread body costs no memory.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from supervisor.http.problems import ApiProblem

log = logging.getLogger(__name__)


def too_large(limit: int, detail: str) -> ApiProblem:
    return ApiProblem(
        413, f"{detail}; the limit is {limit} bytes (MAX_BODY_BYTES)", slug="too-large", headers={"Connection": "close"}
    )


# h11 refuses headers past this while they arrive in pieces; headers that come in one read are held to it here.
MAX_HEADER_BYTES = 16 * 1024


class ContentLengthGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self._refusal(scope["headers"])
            if problem is not None:
                await problem.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


    def _refusal(self, headers: list[tuple[bytes, bytes]]) -> ApiProblem | None:
        size = 0
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return too_large(self.max_body_bytes, f"the body is {int(value)} bytes")
        if size > MAX_HEADER_BYTES:
            return ApiProblem(431, f"the request headers are {size} bytes; the limit is {MAX_HEADER_BYTES}",
                              slug="headers-too-large", headers={"Connection": "close"})
        return None


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or a 413 as soon as it passes `limit` (the rest is never read)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit, "the body is larger")
    return bytes(body)


class BoundedConfig(uvicorn.Config):
    """uvicorn's Config plus the two request deadlines :class:`BoundedH11Protocol` enforces."""

    def __init__(self, app: Any, *, header_timeout: float, body_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, http=BoundedH11Protocol, **kwargs)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers, then on its body."""

    _deadline: asyncio.TimerHandle | None = None
    _phase: Any = None  # the h11 client state the deadline was set for

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def _track(self) -> None:
        """Arm the deadline of the phase the client is in: headers (IDLE), body (SEND_BODY), none after."""
        state = self.conn.their_state
        if state is self._phase:
            return
        self._disarm()
        self._phase = state
        config = self.config
        if state is h11.IDLE:
            self._deadline = self.loop.call_later(config.header_timeout, self._expire, "headers")  # type: ignore[attr-defined]
        elif state is h11.SEND_BODY:
            self._deadline = self.loop.call_later(config.body_timeout, self._expire, "body")  # type: ignore[attr-defined]

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, phase: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        log.info("closing a connection that did not send its request %s in time", phase,
                 extra={"client": f"{self.client[0]}:{self.client[1]}" if self.client else None})
        self.transport.close()
