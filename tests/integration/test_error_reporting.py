"""Sentry: the real sentry-sdk sends to a local endpoint that parses its envelopes (tests/fakes/sentry_relay.py).

Each case runs in its own Python process: sentry_sdk's client is process-global, and
"nothing is imported without a DSN" can only be checked in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fakes.sentry_relay import SentryRelay, parse_envelope

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
SECRETS = ("hunter2", "jane.doe@example.com", "s3cr3t-token", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
           "<h1>Private menu</h1>")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=50, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env}, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_without_a_dsn_nothing_is_imported_and_nothing_sent() -> None:
    done = run_python("""
        import sys
        import supervisor.cli.commands, supervisor.composition, supervisor.runner, supervisor.http.app
        from supervisor.telemetry import error_reporting
        assert error_reporting.init("", "w1") is False
        error_reporting.report_exception(RuntimeError("boom"))
        error_reporting.report_render_failure("child_crashed", job_id="j", export_type="pdf", attempt=1)
        error_reporting.flush()
        print(sorted(m for m in sys.modules if m.startswith("sentry_sdk")))
    """)
    assert done.stdout.strip() == "[]"


SCENARIO = """
    import asyncio, uuid
    from shared.messages import RenderFailed
    from shared.vocabulary import ErrorCategory, ExportType, KillReason, RenderFailure
    from supervisor.telemetry import error_reporting
    from supervisor.pool.children import ChildLost
    from supervisor.telemetry.metrics import Metrics
    from supervisor.queue.jobs import Claim
    from supervisor.settle import report_if_not_the_documents
    from supervisor.tasks import OnFailure, TaskOwner

    SECRET = ("upload to postgresql://worker:hunter2@db.internal/app failed for jane.doe@example.com "
              "token=s3cr3t-token Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln")

    def claim(job_id):
        return Claim(job_id=job_id, attempt=2, worker_id="worker-7", user_id=str(uuid.uuid4()),
                     export_type=ExportType.IMAGE,
                     payload={"source": {"kind": "html", "html": "<h1>Private menu</h1>"}},
                     max_attempts=3, waited_seconds=0.1)

    async def main():
        error_reporting.watch_loop(asyncio.get_running_loop())
        fatal = asyncio.Event()
        owner = TaskOwner(Metrics(), lambda why: fatal.set())

        async def settle_fails():
            payload = {"html": "<h1>Private menu</h1>"}  # a local the scrubbing must not send
            raise RuntimeError(SECRET)

        async def tick_fails():
            raise ValueError("the tick broke")

        owner.spawn(settle_fails(), "settle-job", kind="settle")
        owner.run_loop("tick", tick_fails, OnFailure.FATAL)
        await fatal.wait()
        asyncio.get_running_loop().call_soon(lambda: 1 / 0)  # an error nobody handles
        await asyncio.sleep(0)
        # Render outcomes: two that are the worker's, three that are the document's.
        report_if_not_the_documents(claim("11111111-1111-1111-1111-111111111111"),
                                    ChildLost(KillReason.CRASHED, "", -9))
        report_if_not_the_documents(claim("22222222-2222-2222-2222-222222222222"),
                                    RenderFailed("j", ErrorCategory.TRANSIENT, RenderFailure.BROWSER,
                                                 "browser error: <h1>menu</h1>", 5))
        for outcome in (RenderFailed("j", ErrorCategory.VALIDATION, RenderFailure.INVALID_JOB, "<h1>Private</h1>", 1),
                        RenderFailed("j", ErrorCategory.TRANSIENT, RenderFailure.TIMEOUT, "render timed out", 1),
                        ChildLost(KillReason.MEMORY, "over the limit", -9)):
            report_if_not_the_documents(claim("33333333-3333-3333-3333-333333333333"), outcome)
        await owner.shutdown()

    assert error_reporting.init(DSN, "worker-7")
    asyncio.run(main())
    error_reporting.flush(10)
"""


def test_errors_reach_sentry_with_their_tags_and_without_secrets() -> None:
    with SentryRelay() as relay:
        run_python(f"DSN = {relay.dsn!r}\n" + textwrap.dedent(SCENARIO))
        events = relay.events()
        raw = relay.raw()
        auth = {envelope.auth for envelope in relay.envelopes}
    assert all("sentry_key=publickey" in a for a in auth), auth
    assert len(events) == 5, [e.get("tags") for e in events]  # each error once, the document's failures never
    by_kind: dict[str, dict] = {}
    for event in events:
        assert event["tags"]["worker_id"] == "worker-7", event["tags"]
        if "exception" in event:
            by_kind[event["exception"]["values"][-1]["type"]] = event
        else:
            by_kind[event["tags"]["failure_reason"] + ":" + event["tags"]["job_id"][:1]] = event
    assert set(by_kind) == {"RuntimeError", "ValueError", "ZeroDivisionError", "child_crashed:1", "render:2"}, by_kind
    assert by_kind["RuntimeError"]["tags"]["task"] == "settle"
    assert by_kind["ValueError"]["tags"]["task"] == "tick"
    crashed = by_kind["child_crashed:1"]
    assert crashed["tags"] | {"job_id": "", "worker_id": ""} == {
        "job_id": "", "worker_id": "", "export_type": "image", "attempt": "2", "failure_reason": "child_crashed"}
    assert crashed["tags"]["job_id"] == "11111111-1111-1111-1111-111111111111"
    assert crashed["message"] == "render failed: child_crashed (crashed)" or \
        crashed["logentry"]["message"] == "render failed: child_crashed (crashed)"
    # Scrubbed: the exception's words survive, the password, address, token and document do not.
    value = by_kind["RuntimeError"]["exception"]["values"][-1]["value"]
    assert "postgresql://[redacted]@db.internal/app" in value and "[email]" in value, value
    for secret in SECRETS:
        assert secret.encode() not in raw, secret
    for event in events:
        assert "request" not in event and "user" not in event
        for exc in event.get("exception", {}).get("values", []):
            assert all("vars" not in frame for frame in exc.get("stacktrace", {}).get("frames", []))


def test_envelope_parser_reads_items_with_and_without_length() -> None:
    body = (b'{"event_id":"e1"}\n{"type":"event","length":13}\n{"message":1}\n'
            b'{"type":"client_report"}\n{"discarded":[]}\n')
    header, items = parse_envelope(body)
    assert header == {"event_id": "e1"}
    assert [(h["type"], json.loads(p)) for h, p in items] == [("event", {"message": 1}),
                                                              ("client_report", {"discarded": []})]
