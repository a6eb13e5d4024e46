"""The shipped alert rules in a real Prometheus, against real `export-worker serve` processes and real faults.

One Prometheus for the module (prometheus_server.py: our rules with shorter `for:`
and ranges, scraping every 2 s and evaluating every second). Worker A (canary on, fake
Supabase Storage, its database behind a TCP proxy) goes through several faults in
turn; worker B (canary off, Chromium behind a wrapper script that can be broken)
shows that the canary gauge tells the truth either way. For each fault the test
awaits the matching alerts firing (and nothing else for that worker), removes the
fault, and awaits them clearing. Nothing is timed: every wait is for a state of
Prometheus' /api/v1/alerts, with a generous timeout.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from prometheus_server import PROMETHEUS, Prometheus
from serving import _CHROMIUM, free_port, http_get, requires_chromium, running_serve, serve_env

from tests.chromium import chromium_binary
from tests.conftest import ADMIN_URL, _url_for
from tests.fakes.supabase_storage import FakeSupabaseStorage
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.tcp_proxy import Mode, TcpProxy

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"alerts-live-webhook-secret-0123").decode()

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.chromium,
    requires_chromium,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (apt-get install prometheus)"),
]

FIRE_TIMEOUT = 90
CLEAR_TIMEOUT = 90


@dataclass
class Worker:
    name: str
    port: int
    proc: Any
    log: Path
    db_url: str  # direct, not through the proxy

    def metric(self, name: str) -> float:
        """A sample straight from this worker's /metrics (labels in `name`, as exposed)."""
        _, _, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{name} not in /metrics")

    def children(self) -> list[psutil.Process]:
        """The render children still running: the serve process' spawned Python children."""
        found = []
        for child in psutil.Process(self.proc.pid).children():
            try:
                if any("spawn_main" in part for part in child.cmdline()):
                    found.append(child)
            except psutil.Error:  # gone, or a zombie not reaped yet
                pass
        return found

    def create_jobs(self, count: int, source: dict[str, Any], email: str | None = None,
                    webhook_url: str | None = None) -> list[str]:
        sql = ("SELECT id FROM create_export_job(%s::uuid, 'pdf', %s::jsonb, p_subscriber => true, "
               "p_email => %s, p_webhook_url => %s)")
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            return [
                str(conn.execute(sql, (str(uuid.uuid4()), json.dumps({"source": source}), email,
                                       webhook_url)).fetchone()[0])  # type: ignore[index]
                for _ in range(count)
            ]

    def statuses(self, job_ids: list[str]) -> list[str]:
        with psycopg.connect(self.db_url) as conn:
            rows = conn.execute("SELECT status FROM export_jobs WHERE id = ANY(%s::uuid[])", (job_ids,)).fetchall()
        return sorted(r[0] for r in rows)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"))
    try:
        prom.start()
        yield prom
    finally:
        prom.stop()


@pytest.fixture(scope="module")
def module_db(template_db: str) -> Iterator[str]:
    name = f"ew_alerts_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield name
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class WorkerA:
    worker: Worker
    proxy: TcpProxy
    storage: FakeSupabaseStorage
    receiver: WebhookReceiver
    smtp_port: int  # nothing listens there until a test starts an SMTP server


@pytest.fixture(scope="module")
def worker_a(prometheus: Prometheus, module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerA]:
    tmp = tmp_path_factory.mktemp("worker-a")
    direct = _url_for(module_db)
    pg = psycopg.conninfo.conninfo_to_dict(direct)
    with ExitStack() as stack:
        proxy = stack.enter_context(TcpProxy(int(pg.get("port", 5432)), str(pg.get("host", "127.0.0.1"))))
        storage = stack.enter_context(FakeSupabaseStorage(service_key="alerts-key"))
        receiver = stack.enter_context(WebhookReceiver(WEBHOOK_SECRET))
        smtp_port = free_port()
        port = free_port()
        env = serve_env(
            direct.replace(f":{pg.get('port', 5432)}/", f":{proxy.port}/"), tmp / "data", port,
            WORKER_ID="alerts-a", MAX_CONCURRENT_RENDERS="2", SLOTS_PER_CHILD="1",  # two children, killed from outside
            SUPABASE_URL=storage.url, SUPABASE_SERVICE_ROLE_KEY="alerts-key",
            BREAKER_FAILURE_THRESHOLD="2", BREAKER_COOLDOWN_SECONDS="2",
            RETRY_BACKOFF_BASE_MS="100", RETRY_BACKOFF_CAP_MS="500", CONNECT_TIMEOUT_SECONDS="2",
            SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp_port), SMTP_STARTTLS="false",
            WEBHOOK_SECRET=WEBHOOK_SECRET, TRUSTED_PRIVATE_HOSTS=f"127.0.0.1:{receiver.port}",
            WEBHOOK_BACKOFF_BASE_SECONDS="0.5", WEBHOOK_BACKOFF_CAP_SECONDS="1",
        )
        log = tmp / "serve.log"
        proc = stack.enter_context(running_serve(env, log))
        prometheus.set_targets({"a": port})
        worker = Worker("a", port, proc, log, direct)
        scraped(prometheus, worker)  # here, not in the module's first test: any test may run first (xdist)
        yield WorkerA(worker, proxy, storage, receiver, smtp_port)
        prometheus.set_targets({})


@pytest.fixture(scope="module")
def chromium_switch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wrapper, broken flag): the wrapper runs the real Chromium unless the flag file exists."""
    tmp = tmp_path_factory.mktemp("chromium")
    real = chromium_binary(_CHROMIUM)
    assert real is not None
    broken = tmp / "broken"
    wrapper = tmp / "chromium"
    wrapper.write_text(f'#!/bin/sh\nif [ -e "{broken}" ]; then echo "chromium broken by the test" >&2; exit 127; fi\n'
                       f'exec "{real}" "$@"\n', encoding="utf-8")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return wrapper, broken


@pytest.fixture(scope="module")
def worker_b(prometheus: Prometheus, module_db: str, chromium_switch: tuple[Path, Path],
             tmp_path_factory: pytest.TempPathFactory, worker_a: WorkerA) -> Iterator[Worker]:
    """Canary off; Chromium can be broken. Scraped next to A (A is healthy by now)."""
    tmp = tmp_path_factory.mktemp("worker-b")
    port = free_port()
    env = serve_env(
        _url_for(module_db), tmp / "data", port, WORKER_ID="alerts-b", ENABLE_CANARY_EXPORT="false",
        PUPPETEER_EXECUTABLE_PATH=str(chromium_switch[0]),
        # The brake's window outlasts the boot timeout: once braked, no moment of "still booting".
        RESTART_STORM_LIMIT="5", RESTART_STORM_WINDOW_SECONDS="12", CHILD_BOOT_TIMEOUT_SECONDS="10",
    )
    log = tmp / "serve.log"
    with running_serve(env, log) as proc:
        prometheus.set_targets({"a": worker_a.worker.port, "b": port})
        worker = Worker("b", port, proc, log, _url_for(module_db))
        scraped(prometheus, worker)
        yield worker
        prometheus.set_targets({"a": worker_a.worker.port})


# --------------------------------------------------------------------------- helpers


def scraped(prometheus: Prometheus, worker: Worker) -> None:
    """Until Prometheus has this worker's series (up == 1 and the canary gauge scraped)."""
    prometheus.wait_for(lambda: prometheus.value(f'up{{instance="{worker.name}"}}') == 1, 60, f"{worker.name} up")
    prometheus.wait_for(lambda: prometheus.value(f'export_canary_healthy{{instance="{worker.name}"}}') is not None,
                        60, "canary gauge scraped")
    # Before the first target existed ExportWorkerMetricsAbsent was right to fire; it clears on the next round.
    prometheus.wait_for(lambda: "ExportWorkerMetricsAbsent" not in prometheus.alerts(worker.name), 60,
                        "ExportWorkerMetricsAbsent resolved")


def assert_quiet_for_evaluations(prometheus: Prometheus, worker: Worker, rounds: int = 10) -> None:
    """Watch `rounds` evaluations of every rule group: no alert of this worker is ever pending or firing."""
    seen: dict[str, set[str]] = {}
    while True:
        active = prometheus.alerts(worker.name)
        assert not active, f"alerts on a healthy idle worker {worker.name}: {active}"
        for group, at in prometheus.evaluations().items():
            seen.setdefault(group, set()).add(at)
        if seen and all(len(ats) > rounds for ats in seen.values()):
            return
        time.sleep(0.25)  # the next look; the loop ends on counted evaluations, not on time


def await_firing(prometheus: Prometheus, worker: Worker, expected: set[str], tolerated: set[str]) -> dict[str, str]:
    """Until every expected alert fires; no alert outside expected | tolerated may be active meanwhile."""

    def look() -> dict[str, str] | None:
        active = prometheus.alerts(worker.name)
        unexpected = set(active) - expected - tolerated
        assert not unexpected, f"alerts that do not belong to this fault: {unexpected} (active: {active})"
        return active if all(active.get(name) == "firing" for name in expected) else None

    active: dict[str, str] = prometheus.wait_for(look, FIRE_TIMEOUT, f"{sorted(expected)} firing on {worker.name}")
    print(f"fault on {worker.name}: active alerts {active}")  # the record for the closing note (pytest -s)
    return active


def await_cleared(prometheus: Prometheus, worker: Worker, names: set[str]) -> None:
    prometheus.wait_for(lambda: not set(prometheus.alerts(worker.name)) & names, CLEAR_TIMEOUT,
                        f"{sorted(names)} cleared on {worker.name}")


HTML = {"kind": "html", "html": "<h1>alert test</h1>"}


# --------------------------------------------------------------------------- worker A


def test_healthy_idle_worker_with_canary_raises_no_alert(prometheus: Prometheus, worker_a: WorkerA) -> None:
    assert_quiet_for_evaluations(prometheus, worker_a.worker)
    assert prometheus.value('export_canary_healthy{instance="a"}') == 1
    # Every labelled counter is there at zero before its first event.
    assert prometheus.value('export_jobs_failed_total{instance="a",export_type="pdf",error_category="permanent"}') == 0
    assert prometheus.value('export_child_deaths_total{instance="a", reason="crashed"}') == 0


def test_storage_answering_503_fires_then_clears(prometheus: Prometheus, worker_a: WorkerA) -> None:
    a = worker_a.worker
    expected = {"ExportStorageBreakerOpen", "ExportStorageUploadsFailing"}
    worker_a.storage.fail(503)
    jobs = a.create_jobs(3, HTML)
    await_firing(prometheus, a, expected, tolerated=set())
    assert prometheus.value('export_storage_breaker_state{instance="a"}') == 2
    worker_a.storage.recover()
    await_cleared(prometheus, a, expected)
    prometheus.wait_for(lambda: a.statuses(jobs) == ["completed"] * 3, 60, "the deferred jobs completed")


def test_failing_jobs_fire_then_clear(prometheus: Prometheus, worker_a: WorkerA) -> None:
    a = worker_a.worker
    # A URL off the (empty) allowlist fails for good at once: category permanent.
    jobs = a.create_jobs(4, {"kind": "url", "url": "http://not-allowed.example/"})
    await_firing(prometheus, a, {"ExportFailureRateHigh"}, tolerated=set())
    assert a.statuses(jobs) == ["failed"] * 4
    await_cleared(prometheus, a, {"ExportFailureRateHigh"})


def test_children_dying_fire_then_clear(prometheus: Prometheus, worker_a: WorkerA) -> None:
    a = worker_a.worker
    killed: list[int] = []

    def kill_round() -> dict[str, str] | None:
        active = prometheus.alerts("a")
        assert not set(active) - {"ExportChildrenCrashing"}, active
        if active.get("ExportChildrenCrashing") == "firing":
            return active
        ready = [p for p in a.children() if p.pid not in killed]
        if len(ready) == 2 and a.metric('export_children{state="idle"}') == 2:
            for child in ready:  # SIGKILL from outside: nobody in the worker asked for it
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)
        return None

    prometheus.wait_for(kill_round, FIRE_TIMEOUT, "ExportChildrenCrashing firing")
    crashed = 'export_child_deaths_total{instance="a", reason="crashed"}'
    prometheus.wait_for(lambda: prometheus.value(crashed) == len(killed), 60, "every SIGKILL counted as crashed")
    lines = [json.loads(line) for line in a.log.read_text().splitlines() if '"render child ended"' in line]
    deaths = {line["pid"]: line for line in lines}
    for pid in killed:
        assert deaths[pid]["reason"] == "crashed" and deaths[pid]["signal"] == "SIGKILL", deaths.get(pid)
    await_cleared(prometheus, a, {"ExportChildrenCrashing"})


def test_database_path_cut_fires_then_clears(prometheus: Prometheus, worker_a: WorkerA) -> None:
    a = worker_a.worker
    expected = {"ExportDatabaseUnreachable", "ExportQueueStatsStale", "ExportQueueWritesFailing"}
    tolerated = {"ExportBackgroundTaskFailing"}  # a loop that talks to the database may raise meanwhile
    worker_a.proxy.set_mode(Mode.REFUSE)  # refused connects, every live link reset
    try:
        await_firing(prometheus, a, expected, tolerated)
        assert prometheus.value('export_database_up{instance="a"}') == 0
    finally:
        worker_a.proxy.set_mode(Mode.PASS)
    await_cleared(prometheus, a, expected | tolerated)
    jobs = a.create_jobs(1, HTML)
    prometheus.wait_for(lambda: a.statuses(jobs) == ["completed"], 60, "a job completed after the outage")


def test_mail_and_webhooks_failing_fire_then_clear(prometheus: Prometheus, worker_a: WorkerA) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink

    a, receiver = worker_a.worker, worker_a.receiver
    expected = {"ExportMailFailing", "ExportWebhooksFailing"}
    receiver.statuses.extend([500] * 1000)  # the webhook target answers 500 ...
    jobs = a.create_jobs(2, HTML, email="owner@example.com", webhook_url=receiver.hook_url())  # ... SMTP is closed
    await_firing(prometheus, a, expected, tolerated=set())
    with receiver.lock:
        receiver.statuses.clear()  # 200 from now on
    smtp = Controller(Sink(), hostname="127.0.0.1", port=worker_a.smtp_port)
    smtp.start()
    try:
        await_cleared(prometheus, a, expected)
        delivered = 'sum(export_webhook_deliveries_total{instance="a", outcome="delivered"})'
        prometheus.wait_for(lambda: prometheus.value(delivered) == 2, 60, "both webhooks delivered")
        prometheus.wait_for(lambda: prometheus.value('sum(export_mails_sent_total{instance="a"})') == 2, 60,
                            "both mails sent")
    finally:
        smtp.stop()
    assert a.statuses(jobs) == ["completed"] * 2


# --------------------------------------------------------------------------- worker B


def test_healthy_idle_worker_with_canary_off_raises_no_alert(prometheus: Prometheus, worker_b: Worker) -> None:
    assert_quiet_for_evaluations(prometheus, worker_b)
    assert prometheus.value('export_canary_healthy{instance="b"}') == 1


def test_chromium_that_cannot_start_fires_then_clears(
    prometheus: Prometheus, worker_b: Worker, chromium_switch: tuple[Path, Path]
) -> None:
    b, (_, broken) = worker_b, chromium_switch
    expected = {"ExportWorkerUnhealthy", "ExportChildBootFailures"}
    broken.touch()
    try:
        for child in b.children():  # its replacement must launch the broken Chromium
            os.kill(child.pid, signal.SIGKILL)
        await_firing(prometheus, b, expected, tolerated=set())
        assert prometheus.value('export_canary_healthy{instance="b"}') == 0  # canary off, and still 0
        assert http_get(f"http://127.0.0.1:{b.port}/health")[0] == 503
    finally:
        broken.unlink()
    await_cleared(prometheus, b, expected)
    assert prometheus.value('export_canary_healthy{instance="b"}') == 1


def test_a_frozen_worker_fires_worker_down_then_clears(prometheus: Prometheus, worker_b: Worker) -> None:
    os.kill(worker_b.proc.pid, signal.SIGSTOP)  # its HTTP server stops answering; scrapes time out
    try:
        await_firing(prometheus, worker_b, {"ExportWorkerDown"}, tolerated=set())
    finally:
        os.kill(worker_b.proc.pid, signal.SIGCONT)
    await_cleared(prometheus, worker_b, {"ExportWorkerDown"})
