"""The /v1 jobs API, /files downloads and SSE against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from psycopg_pool import AsyncConnectionPool

from shared.config import ApiSettings, Settings
from supervisor.delivery.links import LinkSigner
from supervisor.delivery.storage import LocalStorage
from supervisor.http.app import AppState, build_app, make_server
from supervisor.http.health import CallbackHealthSources
from supervisor.http.openapi import OPERATIONS
from supervisor.queue.jobs import JobQueue
from supervisor.queue.listener import Listener
from supervisor.telemetry.metrics import Metrics

pytestmark = pytest.mark.timeout(300)

JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
API_KEY = "trusted-backend-key-0123456789"
ALICE = "3f1c2b9e-7f5a-4c51-9a43-0a8f4f1d2e11"
BOB = "7d0c4b7e-2a43-4d4f-9a8e-5b9d7e1f3c22"
BASE = "http://testserver"


def html_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "export_type": "pdf",
        "payload": {"source": {"kind": "html", "html": "<h1>hi</h1>"}},
    }
    body.update(extra)
    return body


def user_token(sub: str, *, ttl: int = 300, secret: str = JWT_SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": sub, "aud": "authenticated", "role": "authenticated", "iat": now, "exp": now + ttl}
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Made at import: valid for a day, however long the suite runs before these tests.
ALICE_H = auth(user_token(ALICE, ttl=86400))
BOB_H = auth(user_token(BOB, ttl=86400))
KEY_H = auth(API_KEY)


@dataclass
class Env:
    state: AppState
    client: httpx.AsyncClient
    pool: AsyncConnectionPool[Any]
    files_root: Path
    signer: LinkSigner


def make_state(
    settings: Settings, queue: JobQueue, pool: AsyncConnectionPool[Any], tmp_path: Path, base_url: str = BASE
) -> AppState:
    s = msgspec.structs.replace(
        settings, api=ApiSettings(export_api_keys=f"other-key, {API_KEY}", supabase_jwt_secret=JWT_SECRET)
    )
    signer = LinkSigner(b"link-secret-for-tests-0123456789")
    files_root = tmp_path / "files"
    files_root.mkdir()
    return AppState(
        settings=s,
        queue=queue,
        metrics=Metrics(),
        listener=None,
        storage=LocalStorage(files_root, signer, base_url),
        link_signer=signer,
        files_root=files_root,
        health=CallbackHealthSources(pool),
    )


@pytest.fixture
async def env(
    settings: Settings, queue: JobQueue, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> AsyncIterator[Env]:
    state = make_state(settings, queue, pool, tmp_path)
    app = build_app(state)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        assert state.files_root is not None and state.link_signer is not None
        yield Env(state, client, pool, state.files_root, state.link_signer)


async def create(env: Env, headers: dict[str, str], **extra: Any) -> httpx.Response:
    return await env.client.post("/v1/jobs", json=html_body(**extra), headers=headers)


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= set(body)
    return body


# ---- authentication -----------------------------------------------------------------


async def test_no_token_is_401(env: Env) -> None:
    r = await env.client.post("/v1/jobs", json=html_body())
    body = assert_problem(r, 401)
    assert "Authorization" in body["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_forged_jwt_is_401(env: Env) -> None:
    forged = user_token(ALICE, secret="not-the-secret-not-the-secret-not-the-secret")
    r = await env.client.post("/v1/jobs", json=html_body(), headers=auth(forged))
    assert "signature" in assert_problem(r, 401)["detail"]


async def test_expired_jwt_is_401(env: Env) -> None:
    r = await env.client.post("/v1/jobs", json=html_body(), headers=auth(user_token(ALICE, ttl=-120)))
    assert "expired" in assert_problem(r, 401)["detail"]


async def test_garbage_token_is_401(env: Env) -> None:
    r = await env.client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth("nope"))
    assert_problem(r, 401)


# ---- creation -------------------------------------------------------------------------


async def test_valid_jwt_creates_job_for_sub(env: Env) -> None:
    r = await create(env, ALICE_H)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "pending"
    assert r.headers["location"] == f"/v1/jobs/{body['id']}"
    assert body["links"]["events"] == f"/v1/jobs/{body['id']}/events"
    row = await env.state.queue.get_job(body["id"])
    assert row is not None and str(row["user_id"]) == ALICE
    assert row["subscriber"] is False

    got = await env.client.get(f"/v1/jobs/{body['id']}", headers=ALICE_H)
    assert got.status_code == 200
    job = got.json()
    for key in (
        "id",
        "status",
        "export_type",
        "attempts",
        "max_attempts",
        "created_at",
        "started_at",
        "completed_at",
        "error_category",
        "error_message",
        "file_size_bytes",
        "download_url",
        "metadata",
    ):
        assert key in job
    assert job["status"] == "pending" and job["export_type"] == "pdf" and job["download_url"] is None
    assert job["created_at"].endswith("Z")
    samples = env.state.metrics.registry.get_sample_value("export_jobs_created_total", {"export_type": "pdf"})
    assert samples == 1.0


async def test_other_users_job_is_404(env: Env) -> None:
    job_id = (await create(env, ALICE_H)).json()["id"]
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/download", f"/v1/jobs/{job_id}/events"):
        assert_problem(await env.client.get(path, headers=BOB_H), 404)
    assert_problem(await env.client.post(f"/v1/jobs/{job_id}/cancel", headers=BOB_H), 404)
    row = await env.state.queue.get_job(job_id)
    assert row is not None and row["status"] == "pending"


async def test_malformed_uuid_is_404(env: Env) -> None:
    assert_problem(await env.client.get("/v1/jobs/not-a-uuid", headers=ALICE_H), 404)
    assert_problem(await env.client.get(f"/v1/jobs/{uuid.uuid4()}", headers=ALICE_H), 404)


async def test_bad_body_names_the_field(env: Env) -> None:
    body = html_body()
    body["payload"]["pdf"] = {"scale": 7}
    r = await env.client.post("/v1/jobs", json=body, headers=ALICE_H)
    assert assert_problem(r, 422)["field"] == "payload.pdf.scale"

    r = await env.client.post("/v1/jobs", json={"export_type": "gif", "payload": {}}, headers=ALICE_H)
    assert assert_problem(r, 422)["field"] == "export_type"

    r = await env.client.post("/v1/jobs", json={"export_type": "pdf"}, headers=ALICE_H)
    assert assert_problem(r, 422)["field"] == "payload"

    r = await env.client.post("/v1/jobs", json=html_body(colour="red"), headers=ALICE_H)
    assert assert_problem(r, 422)["field"] == "colour"

    r = await env.client.post("/v1/jobs", json=html_body(menu_id="menu-1"), headers=ALICE_H)
    assert assert_problem(r, 422)["field"] == "menu_id"

    r = await env.client.post("/v1/jobs", json=html_body(email="not an address"), headers=ALICE_H)
    assert assert_problem(r, 422)["field"] == "email"


async def test_body_not_json_is_422(env: Env) -> None:
    r = await env.client.post("/v1/jobs", content=b"{nope", headers=ALICE_H)
    assert_problem(r, 422)
    r = await env.client.post("/v1/jobs", json=[1, 2], headers=ALICE_H)
    assert_problem(r, 422)


async def test_over_free_limit_is_429_with_retry_after(env: Env) -> None:
    limit = env.state.settings.limits.free_user_pending_limit
    for _ in range(limit):
        assert (await create(env, ALICE_H)).status_code == 202
    r = await create(env, ALICE_H)
    body = assert_problem(r, 429)
    assert int(r.headers["retry-after"]) >= 1
    assert body["limit"] == "free_user_pending_limit"
    assert body["max"] == limit
    assert body["retry_after_seconds"] >= 1


async def test_idempotent_repeat_returns_same_id(env: Env) -> None:
    first = await create(env, ALICE_H, idempotency_key="order-42")
    assert first.status_code == 202
    again = await create(env, ALICE_H, idempotency_key="order-42")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    # Another user with the same key gets their own job.
    other = await create(env, BOB_H, idempotency_key="order-42")
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


async def test_a_reused_idempotency_key_with_a_different_request_is_422(env: Env) -> None:
    # It answered 200 with the first job's id and this request's export_type: another job passed off as this one.
    first = await create(env, ALICE_H, idempotency_key="order-43", email="a@example.com")
    assert first.status_code == 202
    changed = [
        {"export_type": "image", "payload": {"source": {"kind": "html", "html": "<h1>hi</h1>"}}},
        {"payload": {"source": {"kind": "html", "html": "<h1>other</h1>"}}},
        {"menu_id": str(uuid.uuid4())},
        {"email": "b@example.com"},
    ]
    for change in changed:
        body = html_body(idempotency_key="order-43", email="a@example.com") | change
        r = await env.client.post("/v1/jobs", json=body, headers=ALICE_H)
        problem = assert_problem(r, 422)
        assert problem["field"] == "idempotency_key", problem
        assert first.json()["id"] in problem["detail"] and next(iter(change)) in problem["detail"], problem
    # The same request (omitting the recipient it named first is not a change) still gets the job.
    again = await create(env, ALICE_H, idempotency_key="order-43")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"], again.text
    assert again.json()["export_type"] == "pdf"
    job = await env.client.get(f"/v1/jobs/{first.json()['id']}", headers=ALICE_H)
    assert job.json()["export_type"] == "pdf"  # the stored job was left alone


async def test_a_body_that_is_not_declared_json_is_415(env: Env) -> None:
    # Bodies sent as a form, text or multipart were parsed as JSON anyway.
    raw = json.dumps(html_body()).encode()
    for declared in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "  "):
        r = await env.client.post("/v1/jobs", content=raw, headers={**ALICE_H, "Content-Type": declared})
        problem = assert_problem(r, 415)
        assert "application/json" in problem["detail"], problem
    for declared in ("application/json", "Application/JSON; charset=utf-8", "application/merge-patch+json"):
        r = await env.client.post("/v1/jobs", content=raw, headers={**KEY_H, "Content-Type": declared})
        assert r.status_code == 422 and r.json()["field"] == "user_id", (declared, r.text)  # read as JSON
    r = await env.client.post("/v1/jobs", content=raw, headers=ALICE_H)  # no Content-Type: read as JSON
    assert r.status_code == 202, r.text


async def test_a_malformed_user_id_query_is_422_naming_it(env: Env) -> None:
    # It was a 404 "no such job" for a trusted caller and a 403 "names another user" for an end user.
    job = (await create(env, ALICE_H)).json()["id"]
    for query in ("user_id=nope", "user_id=%00", "user_id=%ED%A0%80", f"user_id={ALICE}&user_id={BOB}"):
        for headers in (KEY_H, ALICE_H):
            for path in (f"/v1/jobs/{job}", f"/v1/jobs/{job}/download", f"/v1/jobs/{job}/events"):
                r = await env.client.get(f"{path}?{query}", headers=headers)
                assert assert_problem(r, 422)["field"] == "user_id", (path, query, r.text)
    assert (await env.client.get(f"/v1/jobs/{job}?user_id={ALICE.upper()}", headers=ALICE_H)).status_code == 200
    assert_problem(await env.client.get(f"/v1/jobs/{job}?user_id={BOB}", headers=KEY_H), 404)


async def test_an_unpaired_surrogate_in_a_key_is_a_422_not_a_500(env: Env) -> None:
    # The problem named the key, and encoding the surrogate in the answer raised.
    r = await env.client.post("/v1/jobs", content=b'{"\\ud800": 1}', headers=ALICE_H)
    problem = assert_problem(r, 422)
    assert problem["field"] == "\\ud800", problem


async def test_simultaneous_first_requests_with_one_key_give_one_job(env: Env) -> None:
    answers = await asyncio.gather(*(create(env, ALICE_H, idempotency_key="order-77") for _ in range(5)))
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 200, 202], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert env.state.metrics.jobs_created.labels("pdf")._value.get() == 1  # counted once


async def test_recipient_from_the_argument_or_payload_email(env: Env) -> None:
    body = html_body()
    body["payload"]["email"] = "payload@example.com"
    from_payload = (await env.client.post("/v1/jobs", json=body, headers=ALICE_H)).json()["id"]
    both = (await env.client.post("/v1/jobs", json={**body, "email": "arg@example.com"}, headers=ALICE_H)).json()["id"]
    rows = [await env.state.queue.get_job(i) for i in (from_payload, both)]
    assert [r["notify_email"] for r in rows if r] == ["payload@example.com", "arg@example.com"]


async def test_trusted_key_with_user_id(env: Env) -> None:
    r = await create(env, KEY_H, user_id=BOB, subscriber=True)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    row = await env.state.queue.get_job(job_id)
    assert row is not None and str(row["user_id"]) == BOB and row["subscriber"] is True
    # The trusted caller sees any job; scoped by ?user_id= it sees only that user's.
    assert (await env.client.get(f"/v1/jobs/{job_id}", headers=KEY_H)).status_code == 200
    assert (
        await env.client.get(f"/v1/jobs/{job_id}", params={"user_id": BOB}, headers=KEY_H)
    ).status_code == 200
    assert_problem(await env.client.get(f"/v1/jobs/{job_id}", params={"user_id": ALICE}, headers=KEY_H), 404)
    # A key without user_id: 422 naming it.
    assert assert_problem(await create(env, KEY_H), 422)["field"] == "user_id"


async def test_end_user_cannot_act_for_others_or_be_subscriber(env: Env) -> None:
    assert_problem(await create(env, ALICE_H, user_id=BOB), 403)
    assert_problem(await create(env, ALICE_H, subscriber=True), 403)
    assert (await create(env, ALICE_H, user_id=ALICE)).status_code == 202


# ---- cancel / download ----------------------------------------------------------------------


async def test_cancel_pending_job(env: Env) -> None:
    job_id = (await create(env, ALICE_H)).json()["id"]
    r = await env.client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE_H)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "cancelled"
    row = await env.state.queue.get_job(job_id)
    assert row is not None and row["status"] == "cancelled"
    again = await env.client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE_H)
    assert assert_problem(again, 409)["job_status"] == "cancelled"


async def test_cancel_processing_job_requests_cancel(env: Env) -> None:
    job_id = (await create(env, ALICE_H)).json()["id"]
    async with env.pool.connection() as conn:
        await conn.execute("UPDATE export_jobs SET status='processing', attempts=1 WHERE id=%s", (job_id,))
    r = await env.client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE_H)
    assert r.status_code == 202
    assert r.json() == {**r.json(), "status": "processing", "cancel_requested": True}


async def test_download_not_completed_is_409(env: Env) -> None:
    job_id = (await create(env, ALICE_H)).json()["id"]
    r = await env.client.get(f"/v1/jobs/{job_id}/download", headers=ALICE_H)
    assert assert_problem(r, 409)["job_status"] == "pending"


async def complete_with_file(env: Env, job_id: str, data: bytes) -> str:
    path = f"{ALICE}/{job_id}.pdf"
    target = env.files_root / ALICE / f"{job_id}.pdf"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    async with env.pool.connection() as conn:
        await conn.execute(
            "UPDATE export_jobs SET status='completed', attempts=1, started_at=now(), completed_at=now(),"
            " storage_path=%s, file_size_bytes=%s, content_type='application/pdf' WHERE id=%s",
            (path, len(data), job_id),
        )
    return path


async def test_download_completed_redirects_to_signed_link(env: Env) -> None:
    pdf = b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    job_id = (await create(env, ALICE_H)).json()["id"]
    await complete_with_file(env, job_id, pdf)

    r = await env.client.get(f"/v1/jobs/{job_id}/download", headers=ALICE_H)
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    url = urllib.parse.urlsplit(location)
    assert url.path == f"/files/{ALICE}/{job_id}.pdf"
    query = urllib.parse.parse_qs(url.query)
    assert set(query) == {"expires", "sig", "download"}
    assert query["download"] == [f"export-{job_id}.pdf"]  # neither a file name nor a menu: the job

    got = await env.client.get(location)  # no Authorization: the link itself is the credential
    assert got.status_code == 200
    assert got.content == pdf
    assert got.headers["content-type"] == "application/pdf"
    assert got.headers["content-disposition"] == (
        f"attachment; filename=\"export-{job_id}.pdf\"; filename*=UTF-8''export-{job_id}.pdf")

    tampered = location.replace(f"sig={query['sig'][0]}", "sig=" + "0" * 64)
    assert_problem(await env.client.get(tampered), 403)
    later = location.replace(f"expires={query['expires'][0]}", f"expires={int(query['expires'][0]) + 1}")
    assert_problem(await env.client.get(later), 403)
    assert_problem(await env.client.get(url.path), 403)

    job = (await env.client.get(f"/v1/jobs/{job_id}", headers=ALICE_H)).json()
    assert job["status"] == "completed" and job["file_size_bytes"] == len(pdf)
    assert job["download_url"].startswith(f"{BASE}/files/{ALICE}/{job_id}.pdf?expires=")


async def test_download_is_named_after_payload_filename(env: Env) -> None:
    pdf = b"%PDF-1.7\n%%EOF\n"
    body = html_body()
    body["payload"]["filename"] = "Bistro menu"
    job_id = (await env.client.post("/v1/jobs", json=body, headers=ALICE_H)).json()["id"]
    await complete_with_file(env, job_id, pdf)
    r = await env.client.get(f"/v1/jobs/{job_id}/download", headers=ALICE_H)
    assert r.status_code == 302, r.text
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(r.headers["location"]).query)["download"] == ["Bistro menu.pdf"]
    got = await env.client.get(r.headers["location"])
    assert got.status_code == 200 and got.content == pdf
    assert got.headers["content-disposition"] == (
        "attachment; filename=\"Bistro menu.pdf\"; filename*=UTF-8''Bistro%20menu.pdf")
    # The name is the caller's to choose, but only a file name.
    bad = r.headers["location"].replace("download=Bistro+menu.pdf", "download=..%2F%0D%0Ax")
    assert assert_problem(await env.client.get(bad), 422)["field"] == "download"


async def test_expired_link_is_403(env: Env) -> None:
    path = f"{ALICE}/x.pdf"
    (env.files_root / ALICE).mkdir()
    (env.files_root / path).write_bytes(b"x")
    past = int(time.time()) - 10
    r = await env.client.get(f"/files/{path}", params={"expires": past, "sig": env.signer.sign(path, past)})
    assert_problem(r, 403)


async def test_files_refuse_path_escape_even_when_signed(env: Env, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    expires = int(time.time()) + 60
    escape = "../outside.txt"
    sig = env.signer.sign(escape, expires)
    r = await env.client.get(f"/files/%2e%2e/outside.txt?expires={expires}&sig={sig}")
    assert r.status_code in (403, 404)
    assert b"secret" not in r.content


# ---- downloads named like the document, as curl -OJ saves them -------------------------------


def menu_body(**payload: Any) -> dict[str, Any]:
    menu = {"restaurant": {"name": "Chez Bars"}, "name": "Dîner", "sections": [{"title": "Plats"}]}
    return {"export_type": "pdf", "payload": {"source": {"kind": "menu", "menu": menu}, **payload}}


async def curl_saved_name(url: str, directory: Path) -> str:
    """The name `curl -OJ` (remote name, from Content-Disposition) saves `url` under."""
    directory.mkdir()
    curl = await asyncio.create_subprocess_exec("curl", "-sS", "--fail", "-O", "-J", url, cwd=directory,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(curl.communicate(), 20)
    assert curl.returncode == 0, err
    (saved,) = [p.name for p in directory.iterdir()]
    return saved


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_downloads_are_named_like_the_document_for_curl(
    settings: Settings, queue: JobQueue, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    state = make_state(settings, queue, pool, tmp_path)
    server = make_server(build_app(state), 0, "127.0.0.1")
    base = f"http://127.0.0.1:{server.port}"
    state.storage = LocalStorage(state.files_root, state.link_signer, base)  # type: ignore[arg-type]
    serve_task = asyncio.create_task(server.serve())
    env = Env(state, httpx.AsyncClient(base_url=base, timeout=10), pool, state.files_root,
              state.link_signer)  # type: ignore[arg-type]
    pdf = b"%PDF-1.7\n%%EOF\n"
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        cases = [
            (menu_body(), "chez-bars-diner.pdf", "chez-bars-d%C3%AEner.pdf"),  # restaurant + menu name
            (menu_body(filename="Carte été"), "Carte ete.pdf", "Carte%20%C3%A9t%C3%A9.pdf"),  # the payload's name
        ]
        for number, (body, ascii_name, utf8_name) in enumerate(cases):
            job_id = (await env.client.post("/v1/jobs", json=body, headers=ALICE_H)).json()["id"]
            await complete_with_file(env, job_id, pdf)
            r = await env.client.get(f"/v1/jobs/{job_id}/download", headers=ALICE_H)
            assert r.status_code == 302, r.text
            got = await env.client.get(r.headers["location"])
            assert got.headers["content-disposition"] == (
                f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{utf8_name}")
            assert await curl_saved_name(r.headers["location"], tmp_path / f"api-{number}") == ascii_name
            # a link without ?download= (a mail's, the console's stored link) is named the same way
            bare = (await env.client.get(f"/v1/jobs/{job_id}", headers=ALICE_H)).json()["download_url"]
            assert "download=" not in bare
            assert await curl_saved_name(bare, tmp_path / f"bare-{number}") == ascii_name
    finally:
        await env.client.aclose()
        server.should_exit = True
        await asyncio.wait_for(serve_task, 10)


# ---- SSE over a real server --------------------------------------------------------------


async def read_event(lines: AsyncIterator[str]) -> dict[str, Any]:
    event: str | None = None
    async for line in lines:
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event == "status":
            data: dict[str, Any] = json.loads(line.split(":", 1)[1])
            return data
    raise AssertionError("stream ended before an event")


async def test_sse_streams_status_changes(
    settings: Settings, queue: JobQueue, pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path
) -> None:
    listener = Listener(db_url, settings)
    listen_task = asyncio.create_task(listener.run())
    await asyncio.wait_for(listener.connected.wait(), 10)
    state = make_state(settings, queue, pool, tmp_path)
    state.listener = listener
    server = make_server(build_app(state), 0, "127.0.0.1")
    serve_task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            created = await client.post("/v1/jobs", json=html_body(), headers=ALICE_H)
            job_id = created.json()["id"]
            async with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=ALICE_H) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                lines = r.aiter_lines()
                first = await read_event(lines)
                assert first["id"] == job_id and first["status"] == "pending"
                async with pool.connection() as conn:
                    await conn.execute(
                        "UPDATE export_jobs SET status='processing', attempts=1 WHERE id=%s",
                        (job_id,),
                    )
                second = await read_event(lines)
                assert second["status"] == "processing" and second["attempts"] == 1
                async with pool.connection() as conn:
                    await conn.execute(
                        "UPDATE export_jobs SET status='completed', completed_at=now() WHERE id=%s", (job_id,)
                    )
                third = await read_event(lines)
                assert third["status"] == "completed"
                rest = [line async for line in lines]  # the stream ends after a final status
                assert not any(line.startswith("data:") for line in rest)
        assert not listener._subscribers  # the stream unsubscribed
    finally:
        server.should_exit = True
        await asyncio.wait_for(serve_task, 10)
        listen_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listen_task


async def test_sse_final_job_sends_one_event_and_ends(env: Env) -> None:
    job_id = (await create(env, ALICE_H)).json()["id"]
    await env.client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE_H)
    r = await env.client.get(f"/v1/jobs/{job_id}/events", headers=ALICE_H)
    assert r.status_code == 200
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    assert [e["status"] for e in events] == ["cancelled"]


async def test_sse_without_listener_polls(env: Env) -> None:
    env.state.sse_keepalive_seconds = 0.3
    job_id = (await create(env, ALICE_H)).json()["id"]

    async def finish() -> None:
        await asyncio.sleep(0.5)
        async with env.pool.connection() as conn:
            await conn.execute(
                "UPDATE export_jobs SET status='failed', completed_at=now() WHERE id=%s", (job_id,)
            )

    task = asyncio.create_task(finish())
    r = await env.client.get(f"/v1/jobs/{job_id}/events", headers=ALICE_H)
    await task
    statuses = [json.loads(line[5:])["status"] for line in r.text.splitlines() if line.startswith("data:")]
    assert statuses == ["pending", "failed"]
    assert ": keepalive" in r.text


async def test_openapi_document(env: Env) -> None:
    r = await env.client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    assert {(path, method) for path, ops in doc["paths"].items() for method in ops} == {
        (op.path, op.method) for op in OPERATIONS
    }
    assert "RenderPayload" in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    create_op = doc["paths"]["/v1/jobs"]["post"]
    assert {"202", "401", "422", "429"} <= set(create_op["responses"])
    assert "$defs" not in json.dumps(doc)


async def test_every_operation_in_the_table_is_served(env: Env) -> None:
    # The routes come from the same table as the document: no operation is documented but unrouted.
    for op in OPERATIONS:
        path = op.path.replace("{job_id}", str(uuid.uuid4()))
        r = await env.client.request(op.method.upper(), path, headers=ALICE_H)
        unrouted = r.status_code == 405 or (r.status_code == 404 and r.json()["detail"].endswith(": Not Found"))
        assert not unrouted, (op.op_id, r.status_code, r.text)


async def test_unknown_route_is_problem_json(env: Env) -> None:
    assert_problem(await env.client.get("/v2/nothing"), 404)
    assert_problem(await env.client.delete("/v1/jobs", headers=ALICE_H), 405)


async def test_a_trailing_slash_is_a_404_naming_the_path_not_a_redirect(env: Env) -> None:
    # Starlette redirected to http://{Host header}/v1/jobs: behind a TLS proxy a client following it
    # would resend its token over plain http (and the Host header chose where it went).
    r = await env.client.post("/v1/jobs/", json=html_body(), headers={**ALICE_H, "Host": "evil.example"})
    problem = assert_problem(r, 404)
    assert "location" not in r.headers
    assert "no trailing slash: /v1/jobs" in problem["detail"], problem
    job = (await create(env, ALICE_H)).json()["id"]
    assert_problem(await env.client.get(f"/v1/jobs/{job}/", headers=ALICE_H), 404)
