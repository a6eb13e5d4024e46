"""Every labelled counter and histogram has its series at zero from the start; no `_created` series."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.vocabulary import ChildDeath, DeliveryOutcome, ErrorCategory, ExportType, KillReason, WebhookEvent
from supervisor.telemetry.metrics import Metrics


def families(metrics: Metrics) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    text = generate_latest(metrics.registry).decode()
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


def test_every_counter_and_histogram_has_series_at_zero_on_a_fresh_worker() -> None:
    metrics = Metrics()
    metrics.task_known("outbox")
    found = families(metrics)
    for metric in metrics.registry.collect():
        if metric.type in ("counter", "histogram"):
            assert found.get(metric.name), f"{metric.name} has no series on a fresh worker"
            assert all(value == 0 for _, _, value in found[metric.name]), metric.name


def test_label_values_come_from_the_vocabulary() -> None:
    found = families(Metrics())

    def labels(family: str, name: str, label: str) -> set[str]:
        return {lab[label] for sample, lab, _ in found[family] if sample == name}

    assert labels("export_child_kills", "export_child_kills_total", "reason") == set(KillReason)
    assert labels("export_child_deaths", "export_child_deaths_total", "reason") == set(ChildDeath)
    failed = {(lab["export_type"], lab["error_category"]) for _, lab, _ in found["export_jobs_failed"]}
    assert failed == {(t.value, c.value) for t in ExportType for c in ErrorCategory}
    webhooks = {(lab["event"], lab["outcome"]) for _, lab, _ in found["export_webhook_deliveries"]}
    assert webhooks == {(e.value, o.value) for e in WebhookEvent for o in DeliveryOutcome}
    durations = labels("export_job_duration_seconds", "export_job_duration_seconds_count", "export_type")
    assert durations == set(ExportType)


def test_no_created_series() -> None:
    text = generate_latest(Metrics().registry).decode()
    assert "_created" not in text.replace("export_jobs_created_total", "")


def test_queue_stats_age_grows_until_refreshed() -> None:
    metrics = Metrics()
    metrics._queue_stats_at -= 100  # as if the last refresh was 100 s ago
    assert metrics.registry.get_sample_value("export_queue_stats_age_seconds") >= 100
    metrics.record_queue_stats(7, 12.5)
    assert metrics.registry.get_sample_value("export_queue_stats_age_seconds") < 100
    assert metrics.registry.get_sample_value("export_queue_depth") == 7
    assert metrics.registry.get_sample_value("export_oldest_pending_job_age_seconds") == 12.5
