"""A fake SendGrid v3 API: ``POST /v3/mail/send``.

202 with an empty body on success; errors are ``{"errors": [{"message", "field", "help"}]}``,
SendGrid's documented shape. Records each JSON body and the Authorization header.
"""

from __future__ import annotations

import json
from typing import Any

from ._http import FakeHandler, FakeHTTPServer


class _Handler(FakeHandler):
    server: FakeSendGrid

    def do_POST(self) -> None:
        s = self.server
        body = self.read_body()
        with s.lock:
            s.request_count += 1
            mode = s.mode
            error = s.error
        if self.path != "/v3/mail/send":
            self.reply_json(404, {"errors": [{"message": "resource not found", "field": None, "help": None}]})
            return
        if mode == "503":
            self.reply(503, b'{"errors":[{"message":"Service Unavailable","field":null,"help":null}]}')
            return
        if mode == "429":
            self.reply(429, b'{"errors":[{"message":"too many requests","field":null,"help":null}]}')
            return
        if mode == "400":
            message, fld = error
            self.reply_json(400, {"errors": [{"message": message, "field": fld, "help": None}]})
            return
        if s.api_key and self.headers.get("Authorization") != f"Bearer {s.api_key}":
            self.reply_json(
                401,
                {
                    "errors": [
                        {
                            "message": "The provided authorization grant is invalid, expired, or revoked",
                            "field": None,
                            "help": None,
                        }
                    ]
                },
            )
            return
        try:
            data = json.loads(body)
        except ValueError:
            self.reply_json(400, {"errors": [{"message": "Invalid JSON", "field": None, "help": None}]})
            return
        with s.lock:
            s.messages.append(data)
            s.authorizations.append(self.headers.get("Authorization", ""))
            s.headers.append({k.lower(): v for k, v in self.headers.items()})
        self.reply(202)


class FakeSendGrid(FakeHTTPServer):
    def __init__(self, api_key: str = "SG.test-key") -> None:
        super().__init__(_Handler)
        self.api_key = api_key
        self.messages: list[dict[str, Any]] = []
        self.authorizations: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.request_count = 0
        self.mode = "ok"  # "ok" | "503" | "429" | "400"
        self.error: tuple[str, str | None] = (
            "The from address does not match a verified Sender Identity.",
            "from",
        )

    def set_mode(self, mode: str, message: str | None = None, field: str | None = None) -> None:
        with self.lock:
            self.mode = mode
            if message is not None:
                self.error = (message, field)
