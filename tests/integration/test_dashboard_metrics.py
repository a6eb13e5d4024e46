"""Every metric the Grafana dashboard and the alert rules name is one a live app's /metrics exposes.

The names come from a real scrape of the HTTP app (its registry as served), not from
reading supervisor/telemetry/metrics.py: a metric renamed, or one a rule expects from another
branch, fails here.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from shared.config import Settings
from supervisor.http.app import AppState, build_app
from supervisor.http.health import CallbackHealthSources, HealthCheck, breaker_check, memory_check
from supervisor.queue.jobs import JobQueue
from supervisor.telemetry.metrics import Metrics
from tests.acceptance.test_alert_rules import ALERTS, dashboard_exprs, load_dashboard, metric_names_in

pytestmark = pytest.mark.timeout(30)

_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",)}


async def served_series(settings: Settings, queue: JobQueue, pool: Any) -> set[str]:
    sources = CallbackHealthSources(
        pool,
        storage_fn=lambda: breaker_check("closed", backend="local"),
        render_pool_fn=lambda: HealthCheck(True, "Puppeteer OK", {}),
        memory_fn=lambda: memory_check(0.1, 0.95),
    )
    state = AppState(settings=settings, queue=queue, metrics=Metrics(), listener=None, storage=None,
                     link_signer=None, files_root=None, health=sources)
    transport = httpx.ASGITransport(app=build_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        r = await client.get("/metrics")
    assert r.status_code == 200
    names: set[str] = set()
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", r.text, re.M):  # labelled gauges with no sample yet too
        base = family.removesuffix("_total")
        names |= {base + suffix for suffix in _SUFFIXES.get(kind, ("",))}
    names |= set(re.findall(r"^([a-zA-Z_:][\w:]*)[{ ]", r.text, re.M))
    return names


async def test_every_dashboard_expression_names_a_served_metric(settings: Settings, queue: JobQueue,
                                                                 pool: Any) -> None:
    served = await served_series(settings, queue, pool)
    panels = dashboard_exprs(load_dashboard())
    titles = {title for title, _ in panels}
    assert {"Webhook deliveries per second by event and outcome", "Database reachable"} <= titles
    for title, expr in panels:
        names = metric_names_in(expr)
        assert names, f"panel {title!r} names no metric: {expr}"
        assert names <= served, f"panel {title!r} names metrics /metrics does not serve: {names - served}"


async def test_every_alert_rule_names_a_served_metric(settings: Settings, queue: JobQueue, pool: Any) -> None:
    served = await served_series(settings, queue, pool) | {"up"}  # Prometheus' own
    used = set(re.findall(r"\bexport_[a-z0-9_]+", ALERTS.read_text(encoding="utf-8")))
    assert used and used <= served, used - served
