"""A webhook receiver on loopback that checks every signature with the `standardwebhooks` verifier.

Each request is verified (Webhook(secret).verify) before anything else and recorded
with its headers and body. The answer comes from a script of status codes (one per
request, then 200), optionally after a delay, or held until the test releases it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ._http import FakeHandler, FakeHTTPServer


@dataclass
class Received:
    webhook_id: str
    headers: dict[str, str]
    body: bytes
    payload: Any  # what the verifier returned (the parsed body); None if verification failed
    error: str | None
    answered: int
    at: float


class _Handler(FakeHandler):
    server: WebhookReceiver

    def do_POST(self) -> None:
        body = self.read_body()
        headers = dict(self.headers.items())
        try:
            payload, error = self.server.verifier.verify(body, headers), None
        except WebhookVerificationError as exc:
            payload, error = None, f"{type(exc).__name__}: {exc}"
        status = 400 if error else self.server.next_status()
        with self.server.lock:
            self.server.arrived += 1
        self.server.started.set()
        if self.server.hold_for:
            self.server.release.wait(self.server.hold_for)
        with self.server.lock:
            self.server.received.append(Received(headers.get("webhook-id", ""), headers, body, payload, error,
                                                 status, time.monotonic()))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the sender gave up waiting
            self.reply(status, json.dumps({"ok": status < 300}).encode())


class WebhookReceiver(FakeHTTPServer):
    def __init__(self, secret: str, statuses: list[int] | None = None, hold_for: float = 0.0) -> None:
        super().__init__(_Handler)
        self.verifier = Webhook(secret)
        self.statuses: deque[int] = deque(statuses or [])
        self.received: list[Received] = []
        self.hold_for = hold_for  # seconds each request is held, unless released
        self.release = threading.Event()
        self.started = threading.Event()  # a request arrived
        self.arrived = 0  # requests that arrived, answered or still held

    def next_status(self) -> int:
        with self.lock:
            return self.statuses.popleft() if self.statuses else 200

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def hook_url(self, path: str = "/hook") -> str:
        return f"{self.url}{path}"

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)
