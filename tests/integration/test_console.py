"""The operator console in-process (httpx over ASGI) against a real PostgreSQL.

The browser tests (tests/acceptance/test_console_browser.py) drive the same
pages in Chromium against a real `serve`; these cover the rules one by one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.routing import Mount

from shared.config import ConsoleSettings, Settings
from supervisor.http.app import AppState, build_app
from supervisor.http.console import console_app
from supervisor.http.console.app import Console
from supervisor.http.console.live import Watch
from supervisor.http.health import CallbackHealthSources
from supervisor.queue.jobs import JobQueue
from supervisor.queue.workers import (
    ChildInfo,
    KillEvent,
    NotClaiming,
    WorkerDetail,
    WorkerRegistry,
    WorkerSnapshot,
    list_workers,
)
from supervisor.telemetry.metrics import Metrics
from tests.integration.console_helpers import (
    CONSOLE_KEYS,
    OPERATOR,
    OPERATOR_KEY,
    SECRET_HTML,
    audit_rows,
    insert_file_job_completed_days_ago,
    insert_job,
    job_status,
)

pytestmark = pytest.mark.timeout(300)
BASE = "http://testserver"


@dataclass
class Env:
    client: httpx.AsyncClient
    conn: psycopg.Connection[Any]
    pool: AsyncConnectionPool[Any]
    settings: Settings
    app: Starlette


def console_settings(settings: Settings, **overrides: Any) -> Settings:
    return msgspec.structs.replace(settings, console=ConsoleSettings(console_keys=CONSOLE_KEYS, **overrides))


@pytest.fixture
async def env(settings: Settings, pool: AsyncConnectionPool[Any], db_url: str) -> AsyncIterator[Env]:
    s = console_settings(settings)
    app = Starlette(routes=[Mount("/console", console_app(s, pool))])
    with psycopg.connect(db_url, autocommit=True) as conn:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
            yield Env(client, conn, pool, s, app)


async def sign_in(client: httpx.AsyncClient, key: str = OPERATOR_KEY) -> httpx.Response:
    return await client.post("/console/login", data={"key": key})


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


# ---- access ----------------------------------------------------------------------


async def test_pages_need_a_session(env: Env) -> None:
    for path in ("/console/", "/console/workers", "/console/jobs", "/console/actions"):
        r = await env.client.get(path)
        assert r.status_code == 303
        assert r.headers["location"].startswith("/console/login?next=")
    r = await env.client.get("/console/live?counts=1")
    assert r.status_code == 401


async def test_wrong_key_is_refused_and_right_key_gets_a_strict_httponly_cookie(env: Env) -> None:
    r = await sign_in(env.client, "not-the-key-at-all-000")
    assert r.status_code == 401
    assert "not an operator key" in r.text
    assert "set-cookie" not in r.headers
    r = await sign_in(env.client)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Max-Age=28800" in cookie
    assert "Path=/console" in cookie
    page = await env.client.get("/console/")
    assert page.status_code == 200
    assert f"Signed in as <strong>{OPERATOR}</strong>" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_a_tampered_forged_or_expired_cookie_is_no_session(env: Env, settings: Settings) -> None:
    await sign_in(env.client)
    payload, signature = env.client.cookies["console_session"].split(".")
    forger = Console(console_settings(settings), env.pool).access
    forger._secret = b"not the secret"
    _, forged = forger.new_session(OPERATOR)
    expiring = Console(console_settings(settings, console_session_seconds=60), env.pool).access
    _, expired = expiring.new_session(OPERATOR)
    expiring._clock = lambda: datetime.now(UTC).timestamp() + 61
    assert expiring.read_session(expired) is None
    for cookie in (f"{payload}.{signature[:-4]}AAAA", f"{payload}x.{signature}", forged, "garbage"):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url=BASE,
                                     cookies={"console_session": cookie}) as other:
            assert (await other.get("/console/")).status_code == 303, cookie


async def test_sign_in_attempts_are_rate_limited(env: Env, settings: Settings) -> None:
    for _ in range(5):
        assert (await sign_in(env.client, "wrong-key-wrong-key-0")).status_code == 401
    r = await sign_in(env.client)  # even the right key waits: the limit counts attempts
    assert r.status_code == 429
    assert 0 < int(r.headers["retry-after"]) <= 60
    assert "Too many sign-in attempts" in r.text


async def test_console_is_mounted_only_when_keys_are_set(settings: Settings, queue: JobQueue,
                                                          pool: AsyncConnectionPool[Any]) -> None:
    for keys, expected in (("", 404), (CONSOLE_KEYS, 303)):
        s = msgspec.structs.replace(settings, console=ConsoleSettings(console_keys=keys))
        state = AppState(settings=s, queue=queue, metrics=Metrics(), listener=None, storage=None,
                         link_signer=None, files_root=None, health=CallbackHealthSources(pool))
        transport = httpx.ASGITransport(app=build_app(state))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            assert (await client.get("/console/")).status_code == expected
            bare = await client.get("/console", headers={"Host": "evil.example"})
            if keys:  # to the console's root, relative: never a URL built from the Host header
                assert bare.status_code == 307 and bare.headers["location"] == "/console/", bare.headers
            else:
                assert bare.status_code == 404


# ---- actions ------------------------------------------------------------------------


async def test_retry_needs_confirmation_and_a_csrf_token_and_is_audited(env: Env) -> None:
    job = insert_job(env.conn, status="failed", error_category="transient", error_message="boom", attempts=3)
    await sign_in(env.client)
    confirm = await env.client.get(f"/console/jobs/{job}/retry")
    assert confirm.status_code == 200
    assert "back to pending" in confirm.text
    assert job_status(env.conn, job) == "failed"  # asking changed nothing

    refused = await env.client.post(f"/console/jobs/{job}/retry", data={})
    assert refused.status_code == 403
    assert "CSRF token is missing or wrong" in refused.text
    wrong = await env.client.post(f"/console/jobs/{job}/retry", data={"csrf": "forged"})
    assert wrong.status_code == 403
    assert job_status(env.conn, job) == "failed"
    assert audit_rows(env.conn) == []

    other_site = await env.client.post(f"/console/jobs/{job}/retry", data={"csrf": csrf_of(confirm.text)},
                                       headers={"Origin": "https://evil.example"})
    assert other_site.status_code == 403  # even with the token, from another origin
    assert job_status(env.conn, job) == "failed"

    done = await env.client.post(f"/console/jobs/{job}/retry", data={"csrf": csrf_of(confirm.text)},
                                 headers={"Origin": BASE})
    assert done.status_code == 303
    assert job_status(env.conn, job) == "pending"
    assert audit_rows(env.conn) == [(OPERATOR, "retry_job", job, "retried: back to pending", 1)]
    page = await env.client.get(done.headers["location"])
    assert "retried: back to pending" in page.text

    again = await env.client.post(f"/console/jobs/{job}/retry", data={"csrf": csrf_of(confirm.text)})
    assert again.status_code == 409  # a pending job cannot be retried; the refusal is audited too
    assert audit_rows(env.conn)[-1][3].startswith("refused")


async def test_non_ascii_csrf_tokens_and_cookies_are_refused_not_500(env: Env) -> None:
    # hmac.compare_digest raises TypeError on str with non-ASCII characters: these were 500s.
    job = insert_job(env.conn, status="failed", error_category="transient", error_message="boom", attempts=3)
    await sign_in(env.client)
    r = await env.client.post(f"/console/jobs/{job}/retry", data={"csrf": "é"})
    assert r.status_code == 403 and "CSRF token is missing or wrong" in r.text
    r = await env.client.post(f"/console/jobs/{job}/retry", data={}, headers={"X-CSRF-Token": b"\xe9\xff"})
    assert r.status_code == 403 and "CSRF token is missing or wrong" in r.text
    assert job_status(env.conn, job) == "failed"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url=BASE) as other:
        for cookie in (b"console_session=\xe9.\xe9", b"console_session=abc.\xff", b"console_session=\xe9abc.def"):
            r = await other.get("/console/jobs", headers={"Cookie": cookie})
            assert r.status_code == 303 and "/console/login" in r.headers["location"], cookie


async def test_cancel_pending_and_processing(env: Env) -> None:
    pending = insert_job(env.conn, status="pending", available_in=timedelta(hours=1))
    processing = insert_job(env.conn, status="processing", attempts=1)
    await sign_in(env.client)
    token = csrf_of((await env.client.get(f"/console/jobs/{pending}/cancel")).text)
    assert (await env.client.post(f"/console/jobs/{pending}/cancel", data={"csrf": token})).status_code == 303
    assert job_status(env.conn, pending) == "cancelled"
    assert (await env.client.post(f"/console/jobs/{processing}/cancel",
                                  headers={"X-CSRF-Token": token})).status_code == 303
    row = env.conn.execute("SELECT status, cancel_requested_at IS NOT NULL FROM export_jobs WHERE id = %s",
                           (processing,)).fetchone()
    assert row == ("processing", True)
    assert [a[1:4] for a in audit_rows(env.conn)] == [
        ("cancel_job", pending, "cancelled"),
        ("cancel_job", processing, "cancel requested: its worker stops the render"),
    ]


async def test_retry_all_failed_of_a_category(env: Env) -> None:
    transient = [insert_job(env.conn, status="failed", error_category="transient", attempts=3) for _ in range(3)]
    permanent = insert_job(env.conn, status="failed", error_category="permanent", attempts=1)
    await sign_in(env.client)
    actions = await env.client.get("/console/actions")
    assert "Retry all transient" in actions.text
    confirm = await env.client.get("/console/actions/retry-failed?category=transient")
    assert "Send all <strong>3</strong> failed jobs of category <strong>transient</strong>" in confirm.text
    bad = await env.client.get("/console/actions/retry-failed?category=bogus")
    assert bad.status_code == 422
    assert "category must be one of transient" in bad.text
    r = await env.client.post("/console/actions/retry-failed",
                              data={"category": "transient", "csrf": csrf_of(confirm.text)})
    assert r.status_code == 303
    assert {job_status(env.conn, j) for j in transient} == {"pending"}
    assert job_status(env.conn, permanent) == "failed"
    assert audit_rows(env.conn) == [(OPERATOR, "retry_failed_category", "transient",
                                     "retried 3 failed transient jobs", 3)]
    log = await env.client.get("/console/actions")
    assert "retried 3 failed transient jobs" in log.text


async def test_logout_needs_csrf_and_ends_the_session(env: Env) -> None:
    await sign_in(env.client)
    page = await env.client.get("/console/")
    assert (await env.client.post("/console/logout")).status_code == 403
    r = await env.client.post("/console/logout", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 303
    assert (await env.client.get("/console/")).status_code == 303


# ---- what is shown ----------------------------------------------------------------------


async def test_job_page_masks_emails_and_never_shows_payload_html(env: Env) -> None:
    job = insert_job(
        env.conn, status="failed", notify_email="carol.private@example.org", error_category="permanent",
        error_message="upload to https://store.example.com/b/x.pdf?token=SIGNED-SECRET failed for "
                      "carol.private@example.org",
        attempts=1,
        metadata={"blocked_requests": ["http://169.254.169.254/latest/meta-data?x=SECRET-QUERY",
                                       "https://tracker.example.net/pixel.gif"]},
    )
    await sign_in(env.client)
    r = await env.client.get(f"/console/jobs/{job}")
    assert r.status_code == 200
    text = r.text
    assert "TOP-SECRET-MENU-CONTENT" not in text
    assert f"{len(SECRET_HTML.encode())} bytes (content not shown)" in text
    assert "carol.private@example.org" not in text
    assert "c***@e***.org" in text
    assert "SIGNED-SECRET" not in text and "SECRET-QUERY" not in text
    assert "http://169.254.169.254/latest/meta-data?…" in text
    assert "https://tracker.example.net/pixel.gif" in text
    assert "attempt 1 failed" in text  # the timeline, from error_history


async def test_file_link_redirects_only_for_a_file(env: Env) -> None:
    job = insert_job(env.conn, status="completed")
    await sign_in(env.client)
    assert (await env.client.get(f"/console/jobs/{job}/file")).status_code == 404
    env.conn.execute("UPDATE export_jobs SET storage_path = 'u/x.pdf', file_size_bytes = 10, "
                     "file_url = 'https://files.example.com/x.pdf?sig=1' WHERE id = %s", (job,))
    page = await env.client.get(f"/console/jobs/{job}")
    assert f"/console/jobs/{job}/file" in page.text
    assert "sig=1" not in page.text
    r = await env.client.get(f"/console/jobs/{job}/file")
    assert r.status_code == 503 and "no file store" in r.text  # this console was given none to sign with
    env.conn.execute("UPDATE export_jobs SET file_deleted_at = now() WHERE id = %s", (job,))
    assert (await env.client.get(f"/console/jobs/{job}/file")).status_code == 404


async def test_a_console_download_on_day_8_of_a_30_day_file_works(
    settings: Settings, queue: JobQueue, pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path
) -> None:
    """Links live 7 days (SIGNED_URL_TTL_SECONDS), files 30: the console signs a link when the
    operator asks, not the one stored at completion, which died on day 7."""
    from tests.integration.test_http_api import make_state

    state = make_state(console_settings(settings), queue, pool, tmp_path)
    assert state.files_root is not None and state.link_signer is not None
    aged = insert_file_job_completed_days_ago(db_url, state.link_signer, BASE, settings.storage.signed_url_ttl_seconds)
    path, stored, job = aged.path, aged.stored_link, aged.job_id
    (state.files_root / path).parent.mkdir(parents=True)
    (state.files_root / path).write_bytes(b"%PDF-1.4 day eight")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(state)), base_url=BASE) as client:
        assert (await client.get(stored)).status_code in (403, 410), "the link stored at completion is dead"
        await sign_in(client)
        r = await client.get(f"/console/jobs/{job}/file")
        assert r.status_code == 303
        fresh = r.headers["location"]
        assert fresh.startswith(f"{BASE}/files/{path}?") and fresh != stored
        assert fresh.endswith(f"&download=export-{job}.pdf")  # named like the document (delivery/downloads.py)
        download = await client.get(fresh)
    assert download.status_code == 200 and download.content == b"%PDF-1.4 day eight"


async def test_jobs_filters_and_paging(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    user = str(uuid.uuid4())
    mine = [insert_job(env.conn, status="failed", user_id=user, export_type="image", attempts=1,
                       error_category="transient", created_ago=timedelta(minutes=m)) for m in range(1, 4)]
    insert_job(env.conn, status="completed", created_ago=timedelta(days=3))
    insert_job(env.conn, status="pending", export_type="pdf")
    await sign_in(env.client)

    async def ids(query: str) -> list[str]:
        r = await env.client.get(f"/console/jobs?{query}")
        assert r.status_code == 200, r.text
        return re.findall(r'<tr id="row-([0-9a-f-]{36})"', r.text)

    assert len(await ids("")) == 5
    assert await ids(f"user={user}") == mine
    assert await ids("status=failed&type=image") == mine
    assert len(await ids("status=completed")) == 1
    since = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert len(await ids(f"from={since}")) == 4
    assert len(await ids(f"to={since}")) == 1
    bad = await env.client.get("/console/jobs?user=nobody")
    assert bad.status_code == 422
    assert "user: &#39;nobody&#39; is not a UUID" in bad.text
    # htmx asks for the table alone
    fragment = await env.client.get(f"/console/jobs?user={user}", headers={"HX-Request": "true"})
    assert fragment.text.lstrip().startswith('<div id="jobs-area"')
    # keyset paging
    monkeypatch.setattr("supervisor.http.console.store.PAGE_SIZE", 2)
    first = await env.client.get(f"/console/jobs?user={user}")
    older = re.search(r'href="/console/jobs\?([^"]+)">Older jobs', first.text)
    assert older, first.text
    assert await ids(older.group(1).replace("&amp;", "&")) == mine[2:]


async def test_overview_counts_by_status_and_tier(env: Env) -> None:
    insert_job(env.conn, status="pending", priority=100)
    insert_job(env.conn, status="pending", priority=10)
    insert_job(env.conn, status="failed", priority=10, error_category="transient", attempts=1)
    env.conn.execute("UPDATE export_jobs SET completed_at = now() WHERE status = 'failed'")
    await sign_in(env.client)
    r = await env.client.get("/console/")
    assert r.status_code == 200
    assert '<th scope="col">subscriber</th><th scope="col">free</th>' in r.text
    assert '<td data-count="pending">2</td>' in r.text
    assert '<td data-count="all">3</td>' in r.text
    assert "0 completed, 1 failed" in r.text
    assert "failure rate 100.0%" in r.text
    assert "<svg" in r.text and "Last hour: 0 completed, 1 failed" in r.text


async def test_live_stream_sends_everything_once_then_only_changes(env: Env, settings: Settings) -> None:
    job = insert_job(env.conn, status="pending", available_in=timedelta(hours=1))
    console = Console(console_settings(settings), env.pool)
    watch = Watch(base="/console", counts=True, rows=[uuid.UUID(job)], job=uuid.UUID(job))
    sent: dict[str, Any] = {}
    first = [e.decode() for e in await console.live._changes(sent, watch)]
    assert [e.split("\n", 1)[0] for e in first] == ["event: counts", f"event: row-{job}", f"event: job-{job}"]
    assert all(line.startswith(("event: ", "data: ")) for e in first for line in e.strip().splitlines())
    assert await console.live._changes(sent, watch) == []
    env.conn.execute("UPDATE export_jobs SET status = 'completed', completed_at = now() WHERE id = %s", (job,))
    console.store._counts = None  # the shared counts are cached for one interval
    changed = [e.decode() for e in await console.live._changes(sent, watch)]
    assert [e.split("\n", 1)[0] for e in changed] == ["event: counts", f"event: row-{job}", f"event: job-{job}"]
    assert 's-completed" data-status>completed<' in changed[1]


# ---- the workers table -----------------------------------------------------------------


def snapshot(worker_id: str, **changes: Any) -> WorkerSnapshot:
    base = WorkerSnapshot(
        worker_id=worker_id, host="host-a", pid=123, version="0.1.0", started_at=datetime.now(UTC),
        children_ready=2, children_busy=1, capacity=3, children_memory_bytes=700 * 2**20,
        container_memory_bytes=1500 * 2**20, container_limit_bytes=2048 * 2**20, claiming=False,
        not_claiming=NotClaiming.HIGH_WATER, canary_ok=True, breaker_state="closed", detail=WorkerDetail(),
    )
    return msgspec.structs.replace(base, **changes)


async def test_workers_rows_are_upserted_shown_marked_gone_and_forgotten(env: Env, tmp_path: Path) -> None:
    registry = WorkerRegistry(env.pool, "worker-a", forget_hours=24)
    assert await registry.beat(snapshot("worker-a"))
    assert await registry.beat(snapshot("worker-a", children_busy=2))
    kill_time = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert await registry.beat(snapshot("worker-a", children_busy=2, detail=WorkerDetail(
        children=[ChildInfo(name="child-0.3", pid=4242, state="busy", renders=17, age_seconds=125.0,
                            memory_bytes=300 * 2**20, job_id=str(uuid.uuid4()))],
        kills={"memory": 2, "timeout": 1},
        recent_kills=[KillEvent(at=kill_time, reason="memory", count=2)],
    )))
    other = WorkerRegistry(env.pool, "worker-b", forget_hours=24)
    assert await other.beat(snapshot("worker-b", claiming=True, not_claiming=None))
    env.conn.execute("UPDATE export_workers SET last_heartbeat = now() - interval '5 minutes' "
                     "WHERE worker_id = 'worker-b'")
    rows = await list_workers(env.pool, gone_seconds=60)
    assert [(r.snapshot.worker_id, r.gone) for r in rows] == [("worker-a", False), ("worker-b", True)]
    assert rows[0].snapshot.children_busy == 2
    assert rows[0].snapshot.not_claiming is NotClaiming.HIGH_WATER

    await sign_in(env.client)
    page = await env.client.get("/console/workers")
    assert "not claiming: high_water" in page.text
    assert "<td>child-0.3</td><td>4242</td><td>busy</td><td>17</td><td>2 min</td><td>300 MiB</td>" in page.text
    assert "Since start: memory 2, timeout 1." in page.text
    assert "<tr><td>2026-01-02 03:04:05 UTC</td><td>memory</td><td>2</td></tr>" in page.text
    assert '<span class="state bad">gone</span>' in page.text

    env.conn.execute("UPDATE export_workers SET last_heartbeat = now() - interval '25 hours' "
                     "WHERE worker_id = 'worker-b'")
    assert await registry.beat(snapshot("worker-a"))  # a beat also forgets long-gone workers
    assert [r.snapshot.worker_id for r in await list_workers(env.pool, gone_seconds=60)] == ["worker-a"]


async def test_a_database_outage_is_a_503_page(settings: Settings) -> None:
    async def unreachable() -> AsyncConnectionPool[Any]:
        raise psycopg.OperationalError("connection refused")

    app = Starlette(routes=[Mount("/console", console_app(console_settings(settings), unreachable))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        assert (await sign_in(client)).status_code == 303  # signing in needs no database
        r = await client.get("/console/jobs")
        assert r.status_code == 503
        assert "The database is not answering" in r.text
