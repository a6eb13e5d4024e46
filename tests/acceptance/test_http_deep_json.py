"""Deep JSON cannot freeze the event loop (issue 22, item 1), against a real `serve`.

Five connections keep posting 4 MB bodies of `{"payload":` and 1,990,000 `[` (and as
many `]`). Once, each cost 3 s of regex passes on the supervisor's one event loop, so
the bodies were answered one after another and /health and claiming waited behind
them. Now, while they are in flight: every /health is answered, a job inserted
meanwhile is claimed, and every deep body gets a 422. Times are printed, not asserted.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import psycopg
import pytest
from hostile import JWT_SECRET, request_bytes, send_raw, user_token
from serving import free_port, http_get, running_serve, serve_env

ALICE = "3f1c2b9e-7f5a-4c51-9a43-0a8f4f1d2e11"
DEEP = 1_990_000
SENDERS = 5
ROUNDS = 10  # bodies per sender: 50 in all (once minutes of frozen loop; now a few seconds of upload), a window
# long enough that the job inserted after the first answer is claimed before the last


def deep_request() -> bytes:
    body = b'{"payload":' + b"[" * DEEP + b"]" * DEEP + b"}"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {user_token(ALICE)}"}
    return request_bytes("POST", "/v1/jobs", body=body, headers=headers)


@pytest.mark.timeout(150)
def test_five_deep_bodies_leave_health_and_claiming_alone(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = serve_env(db_url, tmp_path / "data", port, SUPABASE_JWT_SECRET=JWT_SECRET)
    request = deep_request()
    assert len(request) < 4_100_000
    with running_serve(env, tmp_path / "serve.log"):
        started = time.monotonic()
        deep: list[tuple[float, float, int]] = []  # (sent, answered, status), seconds from `started`
        health: list[tuple[float, float, int]] = []
        first_sent = threading.Event()
        stop = threading.Event()
        lock = threading.Lock()

        def sender() -> None:
            for _ in range(ROUNDS):
                sent = time.monotonic() - started
                answer = send_raw(port, request, timeout=140)
                first_sent.set()
                with lock:
                    deep.append((sent, time.monotonic() - started, answer.status))

        def poll_health() -> None:
            while not stop.is_set():
                sent = time.monotonic() - started
                status, _, _ = http_get(f"http://127.0.0.1:{port}/health", timeout=140)
                health.append((sent, time.monotonic() - started, status))

        poller = threading.Thread(target=poll_health)
        poller.start()
        senders = [threading.Thread(target=sender) for _ in range(SENDERS)]
        for thread in senders:
            thread.start()
        assert first_sent.wait(140), "no deep body was answered"
        with psycopg.connect(db_url, autocommit=True) as conn:
            job_id = conn.execute(
                "SELECT (create_export_job(%s, 'pdf', %s::jsonb)).id",
                (ALICE, '{"source": {"kind": "html", "html": "<p>meanwhile</p>"}}'),
            ).fetchone()[0]  # type: ignore[index]
            inserted = time.monotonic() - started
            claimed_at, claim_wait = None, 0.0
            deadline = time.monotonic() + 120
            while claimed_at is None and time.monotonic() < deadline:  # a claim after the deep bodies is measured too
                row = conn.execute("SELECT started_at - created_at FROM export_jobs WHERE id = %s AND "
                                   "started_at IS NOT NULL", (job_id,)).fetchone()
                if row is not None:
                    claimed_at, claim_wait = time.monotonic() - started, row[0].total_seconds()
                time.sleep(0.01)
        for thread in senders:
            thread.join(140)
        stop.set()
        poller.join(140)

    last_deep = max((answered for _, answered, _ in deep), default=0.0)
    first_deep = min((answered for _, answered, _ in deep), default=0.0)
    during = [h for h in health if first_deep <= h[1] <= last_deep]
    latencies = [(answered - sent) * 1000 for sent, answered, _ in health]
    first_round = sorted(answered for _, answered, _ in deep)[:SENDERS]
    print(f"\n{SENDERS} x {ROUNDS} deep bodies of {len(request):,} bytes: first {SENDERS} answered at "
          f"{', '.join(f'{t:.2f}' for t in first_round)} s, the last at {last_deep:.2f} s; "
          f"job claimed {claim_wait * 1000:.0f} ms after its insert (database clock), "
          f"{'before' if claimed_at is not None and claimed_at < last_deep else 'after'} the last deep answer; "
          f"/health x{len(health)} ({len(during)} between deep answers): median {statistics.median(latencies):.1f} ms, "
          f"max {max(latencies):.1f} ms")
    assert len(deep) == SENDERS * ROUNDS
    assert {status for _, _, status in deep} == {422}, deep
    assert health and {status for _, _, status in health} == {200}, health
    assert during, f"no /health answered between the first and the last deep answer: {health}"
    assert claimed_at is not None and claimed_at < last_deep, (
        f"job {job_id} inserted at {inserted:.2f} s was claimed at {claimed_at} s, not while the deep bodies ran")
