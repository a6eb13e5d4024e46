"""The console against a hostile client (issue 22, item 5), on two real `serve` processes sharing a database.

* A spoofed `X-Forwarded-For` per attempt no longer escapes the sign-in limit:
  uvicorn believes the header only from FORWARDED_ALLOW_IPS (empty by default).
* Behind a listed proxy the limit is per real client, the address the proxy appended.
* Signing out revokes the session on every worker: the old cookie gets the sign-in page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hostile import Answer, request_bytes, send_raw
from serving import free_port, running_serve, serve_env

KEY = "alice:console-hostile-key-0123456789"
OPERATOR_KEY = KEY.split(":", 1)[1]


def sign_in(port: int, key: str, forwarded_for: str | None = None) -> Answer:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    body = urlencode({"key": key, "next": "/console/"}).encode()
    return send_raw(port, request_bytes("POST", "/console/login", body=body, headers=headers))


def page(port: int, cookie: str, path: str = "/console/") -> Answer:
    return send_raw(port, request_bytes("GET", path, headers={"Cookie": f"console_session={cookie}"}))


def refused_clients(log: Path) -> list[str]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line.get("client", "") for line in lines if line.get("message") == "console sign-in refused"]


@pytest.mark.timeout(240)
def test_sign_in_limit_and_sign_out_hold_across_workers(db_url: str, tmp_path: Path) -> None:
    proxied, direct = free_port(), free_port()
    env_proxied = serve_env(db_url, tmp_path / "a", proxied, CONSOLE_KEYS=KEY, FORWARDED_ALLOW_IPS="127.0.0.1")
    env_direct = serve_env(db_url, tmp_path / "b", direct, CONSOLE_KEYS=KEY)
    log_proxied, log_direct = tmp_path / "proxied.log", tmp_path / "direct.log"
    with running_serve(env_proxied, log_proxied), running_serve(env_direct, log_direct):
        # 1. No proxy configured: 30 wrong keys, each claiming another address, are one client.
        statuses = [sign_in(direct, "wrong-key-0123456789", f"198.51.100.{i}").status for i in range(30)]
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
        assert set(refused_clients(log_direct)) == {"127.0.0.1"}, "the log records the real peer, not the header"

        # 2. Behind a listed proxy: the address it appended counts, not what the client wrote before it.
        statuses = [sign_in(proxied, "wrong-key-0123456789", f"10.9.9.{i}, 203.0.113.7").status for i in range(6)]
        assert statuses == [401] * 5 + [429], statuses
        assert sign_in(proxied, "wrong-key-0123456789", "203.0.113.8").status == 401, "another client is not limited"
        assert set(refused_clients(log_proxied)) == {"203.0.113.7", "203.0.113.8"}

        # 3. Sign out on one worker: the cookie is refused by both.
        signed_in = sign_in(proxied, OPERATOR_KEY, "203.0.113.50")
        assert signed_in.status == 303, signed_in.body[:300]
        cookie = re.search(r"console_session=([^;]+)", signed_in.headers["set-cookie"])
        assert cookie is not None, signed_in.headers
        session = cookie.group(1)
        overview = page(proxied, session)
        assert overview.status == 200 and page(direct, session).status == 200
        csrf = re.search(rb'name="csrf" value="([^"]+)"', overview.body)
        assert csrf is not None, overview.body[:500]
        out = send_raw(proxied, request_bytes(
            "POST", "/console/logout", body=urlencode({"csrf": csrf.group(1).decode()}).encode(),
            headers={"Cookie": f"console_session={session}", "Content-Type": "application/x-www-form-urlencoded"}))
        assert out.status == 303 and out.headers["location"].endswith("/console/login"), out
        for port in (proxied, direct):
            again = page(port, session)
            assert again.status == 303 and "/console/login" in again.headers["location"], (port, again)
            live = page(port, session, "/console/live?counts=1")
            assert live.status == 401, (port, live)
        login = send_raw(direct, request_bytes("GET", again.headers["location"]))
        assert login.status == 200 and b'name="key"' in login.body
        # A new sign-in works as before, on either worker.
        fresh = sign_in(proxied, OPERATOR_KEY, "203.0.113.51")
        fresh_cookie = re.search(r"console_session=([^;]+)", fresh.headers.get("set-cookie", ""))
        assert fresh_cookie is not None and page(direct, fresh_cookie.group(1)).status == 200
