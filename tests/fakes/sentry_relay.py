"""A fake Sentry ingest endpoint: accepts what the real sentry-sdk sends and parses the envelopes.

Wire format (develop.sentry.dev "Envelopes"): ``POST /api/{project_id}/envelope/``,
body optionally gzip- or brotli-compressed (``Content-Encoding``), made of an
envelope header line (JSON), then items: an item header line (JSON, with ``type``
and an optional ``length`` in bytes) followed by its payload (``length`` bytes, or
up to the next newline when there is none). The SDK authenticates with an
``X-Sentry-Auth: Sentry sentry_key=..., ...`` header naming the DSN's public key.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from typing import Any

from ._http import FakeHandler, FakeHTTPServer


@dataclass
class Envelope:
    project_id: str
    auth: str
    header: dict[str, Any]
    items: list[tuple[dict[str, Any], bytes]]
    raw: bytes  # the decompressed body, for "this never appears anywhere" checks

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(payload) for header, payload in self.items if header.get("type") == "event"]


def parse_envelope(body: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    header_line, _, rest = body.partition(b"\n")
    items: list[tuple[dict[str, Any], bytes]] = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        item = json.loads(item_line)
        if "length" in item:
            payload, rest = rest[: item["length"]], rest[item["length"]:]
            rest = rest[1:] if rest.startswith(b"\n") else rest
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((item, payload))
    return json.loads(header_line), items


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]  # only if the SDK found it installed

        return bytes(brotli.decompress(body))
    return body


class _Handler(FakeHandler):
    server: SentryRelay

    def do_POST(self) -> None:
        body = _decompress(self.read_body(), self.headers.get("Content-Encoding", "").lower())
        parts = self.path.strip("/").split("/")  # api/{project}/envelope
        if len(parts) != 3 or parts[0] != "api" or parts[2] != "envelope":
            self.reply_json(404, {"detail": f"not an envelope endpoint: {self.path}"})
            return
        header, items = parse_envelope(body)
        with self.server.lock:
            self.server.envelopes.append(Envelope(parts[1], self.headers.get("X-Sentry-Auth", ""), header, items, body))
        self.reply_json(200, {"id": header.get("event_id")})


class SentryRelay(FakeHTTPServer):
    def __init__(self, public_key: str = "publickey", project_id: str = "42") -> None:
        super().__init__(_Handler)
        self.public_key = public_key
        self.project_id = project_id
        self.envelopes: list[Envelope] = []

    @property
    def dsn(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{self.public_key}@{host!s}:{port}/{self.project_id}"

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [event for envelope in self.envelopes for event in envelope.events()]

    def raw(self) -> bytes:
        with self.lock:
            return b"\n".join(envelope.raw for envelope in self.envelopes)
