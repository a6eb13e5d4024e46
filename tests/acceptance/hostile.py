"""Raw HTTP for the hostile-caller tests: bytes on a socket, tokens, a JWKS server."""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

JWT_SECRET = "hostile-tests-jwt-secret-with-at-least-32-characters"
API_KEY = "hostile-tests-trusted-key-0123456789"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request_bytes(
    method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None, length: bool = True
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if length and body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def send_raw(port: int, data: bytes, timeout: float = 15) -> Answer:
    """Send `data`, read one response (the server may stop reading early: that is fine)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered and closed before the end
            sock.sendall(data)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())


def user_token(sub: Any, *, role: str | None = "authenticated", **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "aud": "authenticated", "iat": now, "exp": now + 600}
    if role is not None:
        payload["role"] = role
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}  # None: leave the claim out
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


def forged_token(header: dict[str, Any], payload: dict[str, Any] | None = None) -> str:
    """A token with any header at all (unsigned garbage signature)."""

    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = payload or {"sub": "3f1c2b9e-7f5a-4c51-9a43-0a8f4f1d2e11", "aud": "authenticated",
                         "exp": int(time.time()) + 600, "role": "authenticated"}
    return f"{part(header)}.{part(claims)}.c2lnbmF0dXJl"


@contextmanager
def jwks_server() -> Iterator[str]:
    """A JWKS endpoint serving one RSA key, kid "rsa-1"; yields its URL."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "rsa-1", "use": "sig", "alg": "RS256"})
    document = json.dumps({"keys": [jwk]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")
