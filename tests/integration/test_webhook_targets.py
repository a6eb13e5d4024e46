"""Webhook targets refused at creation, with 422 naming `webhook_url`: in the HTTP API, the
CLI and (non-http(s) values) the SQL function. The rules are the render fetcher's
(render_child/netpolicy.py), applied to the resolved addresses."""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from shared.config import Settings, WebhookSettings
from supervisor.delivery.webhook_targets import TargetRefused, resolve_target
from supervisor.http.app import build_app
from supervisor.queue.jobs import JobQueue
from supervisor.queue.store import InvalidJob
from tests.integration.test_http_api import BASE, KEY_H, assert_problem, html_body, make_state

pytestmark = pytest.mark.timeout(300)

SECRET = "whsec_" + base64.b64encode(b"webhook-target-secret-0123456789").decode()
TRUSTED_PORT = 8787
ROOT = Path(__file__).resolve().parents[2]

# (url, words the refusal must contain)
REFUSED = [
    ("https://127.0.0.1/hook", "loopback address"),
    ("https://127.0.0.1:9/hook", "loopback address"),
    ("https://[::1]/hook", "loopback address"),
    ("https://[::ffff:127.0.0.1]/hook", "loopback"),
    ("https://10.20.30.40/hook", "private address"),
    ("https://192.168.1.10/hook", "private address"),
    ("https://100.64.0.7/hook", "CGNAT"),
    ("https://169.254.169.254/latest/meta-data/", "cloud metadata address"),
    ("https://169.254.10.10/hook", "link-local address"),
    ("https://localhost/hook", "resolves to"),  # a name resolving to loopback
    (f"https://localhost:{TRUSTED_PORT}/hook", "resolves to"),  # trusted is 127.0.0.1:port, not the name
    ("http://example.com/hook", "use https"),
    ("http://93.184.215.14/hook", "use https"),
    ("ftp://example.com/hook", "scheme ftp"),
    ("https://user:secret@example.com/hook", "credentials"),
    ("not a url at all", "scheme"),
    # These were 500s: the resolver's IDNA step raises UnicodeError on an empty label.
    ("https://a..b/hook", "not a valid host name"),
    ("https://.com/hook", "not a valid host name"),
    ("https://" + "a" * 64 + ".com/hook", "not a valid host name"),
    # These were refused only as "does not resolve" (or accepted where DNS answers).
    ("https://93.184.215.14:99999/hook", "out of range"),
    ("https://93.184.215.14:0/hook", "out of range"),
]


def target_settings(settings: Settings, **hooks: Any) -> Settings:
    render = msgspec.structs.replace(
        settings.render, trusted_private_hosts=[f"127.0.0.1:{TRUSTED_PORT}", "169.254.169.254:80"]
    )
    return msgspec.structs.replace(
        settings, render=render, webhooks=WebhookSettings(**({"webhook_secret": SECRET} | hooks))
    )


@pytest.fixture
async def client(
    settings: Settings, queue: JobQueue, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    state = make_state(settings, queue, pool, tmp_path)
    state.settings = target_settings(state.settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(state)), base_url=BASE) as c:
        yield c


@pytest.mark.parametrize(("url", "why"), REFUSED)
async def test_the_api_refuses_unsafe_targets(client: httpx.AsyncClient, url: str, why: str) -> None:
    r = await client.post("/v1/jobs", json=html_body(user_id=str(uuid.uuid4()), webhook_url=url), headers=KEY_H)
    problem = assert_problem(r, 422)
    assert problem["field"] == "webhook_url"
    assert why in problem["detail"], problem["detail"]


async def test_trusted_http_metadata_address_is_refused_anyway(client: httpx.AsyncClient) -> None:
    url = "http://169.254.169.254/latest/meta-data/"  # in TRUSTED_PRIVATE_HOSTS, still never reachable
    r = await client.post("/v1/jobs", json=html_body(user_id=str(uuid.uuid4()), webhook_url=url), headers=KEY_H)
    assert "cloud metadata address" in assert_problem(r, 422)["detail"]


async def test_a_trusted_loopback_receiver_is_accepted(client: httpx.AsyncClient, db_url: str) -> None:
    url = f"http://127.0.0.1:{TRUSTED_PORT}/hook"
    r = await client.post("/v1/jobs", json=html_body(user_id=str(uuid.uuid4()), webhook_url=url), headers=KEY_H)
    assert r.status_code == 202, r.text
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT webhook_url FROM export_jobs WHERE id = %s", (r.json()["id"],)).fetchone()
    assert row == (url,)


async def test_webhooks_need_a_secret(
    settings: Settings, queue: JobQueue, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    state = make_state(settings, queue, pool, tmp_path)  # WEBHOOK_SECRET unset
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(state)), base_url=BASE) as c:
        body = html_body(user_id=str(uuid.uuid4()), webhook_url="https://hooks.example.com/x")
        problem = assert_problem(await c.post("/v1/jobs", json=body, headers=KEY_H), 422)
    assert problem["field"] == "webhook_url" and "WEBHOOK_SECRET" in problem["detail"]


def test_the_allowlist_restricts_further(settings: Settings) -> None:
    limited = target_settings(settings, webhook_allowed_hosts=["*.hooks.example.com"])
    with pytest.raises(TargetRefused, match="not in WEBHOOK_ALLOWED_HOSTS"):
        resolve_target("https://api.example.org/hook", limited, resolver=lambda host, port: ["93.184.215.14"])
    ok = resolve_target("https://a.hooks.example.com/hook", limited, resolver=lambda host, port: ["93.184.215.14"])
    assert ok.ips == ["93.184.215.14"] and ok.host == "a.hooks.example.com"


def test_a_name_resolving_to_a_private_address_is_refused(settings: Settings) -> None:
    # A public-looking name whose DNS answer is private (rebinding): refused on the answer.
    with pytest.raises(TargetRefused, match=r"resolves to 10\.0\.0\.5, a private address"):
        resolve_target("https://hooks.example.com/x", target_settings(settings),
                       resolver=lambda host, port: ["93.184.215.14", "10.0.0.5"])


async def test_the_sql_function_refuses_non_http_values(queue: JobQueue) -> None:
    for bad in ("ftp://example.com/hook", "javascript:alert(1)", "https://", "https://a b/"):
        with pytest.raises(InvalidJob) as caught:
            await queue.create_job(user_id=str(uuid.uuid4()), export_type="pdf",
                                   payload={"source": {"kind": "html", "html": "<p>x</p>"}}, webhook_url=bad)
        assert caught.value.field == "webhook_url", bad


@pytest.mark.parametrize(("url", "why"), [REFUSED[0], REFUSED[4], REFUSED[7], REFUSED[9], REFUSED[11]])
def test_the_cli_refuses_unsafe_targets(db_url: str, tmp_path: Path, url: str, why: str) -> None:
    page = tmp_path / "page.html"
    page.write_text("<h1>Menu</h1>", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "EXPORT_WORKER_CONFIG"}}
    env |= {"DATABASE_URL": db_url, "EXPORT_WORKER_DATA_DIR": str(tmp_path / "data"), "WEBHOOK_SECRET": SECRET,
            "TRUSTED_PRIVATE_HOSTS": f"127.0.0.1:{TRUSTED_PORT}"}
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/export-worker"), "enqueue", "--user-id", str(uuid.uuid4()), "--html", str(page),
         "--webhook", url], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "webhook_url" in proc.stderr and why in proc.stderr, proc.stderr
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM export_jobs").fetchone() == (0,)
    assert proc.stdout == ""
