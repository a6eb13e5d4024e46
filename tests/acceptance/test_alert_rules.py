"""Monitoring artifacts: Prometheus rules and config, and the Grafana dashboard.

The promtool checks skip when promtool is not installed (CI installs Debian's
`prometheus` package, which ships /usr/bin/promtool). The metric-name checks
need nothing but the files: every name used must be one that
supervisor/telemetry/metrics.py actually registers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "export-worker-dashboard.json"
METRICS_PY = ROOT / "supervisor" / "telemetry" / "metrics.py"

SEED_ALERTS = ("ExportQueueDepthHigh", "ExportFailureRateHigh", "ExportWorkerDown", "ExportSlowProcessing")

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (apt-get install prometheus, or use the Prometheus release)",
)


# --------------------------------------------------------------------------- helpers


def declared_metrics() -> dict[str, str]:
    """Metric name -> kind, from the first string argument of each Counter/Gauge/Histogram."""
    text = METRICS_PY.read_text(encoding="utf-8")
    found = re.findall(r"\b(Counter|Gauge|Histogram)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"", text)
    return {name: kind for kind, name in found}


def series_names() -> set[str]:
    """Every series name a scrape of /metrics can contain (histograms as their three series)."""
    names: set[str] = set()
    for name, kind in declared_metrics().items():
        if kind == "Histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)  # counters are declared with their _total suffix already
    return names


_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small lexer, enough for these files)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range / subquery selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", e):
        word = m.group(1)
        if word.lower() not in _PROMQL_WORDS:
            names.add(word)
    return names


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    out = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                if "expr" in t:
                    out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    return out


def as_promql(expr: str) -> str:
    """Replace Grafana's variables so the expression is plain PromQL."""
    e = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", e)


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


# --------------------------------------------------------------------------- metrics.py


def test_metrics_py_declares_the_seed_metrics() -> None:
    declared = declared_metrics()
    for name in (
        "export_jobs_created_total",
        "export_jobs_completed_total",
        "export_jobs_failed_total",
        "export_job_duration_seconds",
        "export_queue_depth",
        "export_active_renders",
    ):
        assert name in declared, f"{name} not registered in supervisor/telemetry/metrics.py"
    assert declared["export_job_duration_seconds"] == "Histogram"


def test_metric_name_lexer() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, export_type) (rate(export_job_duration_seconds_bucket"
        '{instance=~"$instance", export_type="pdf"}[$__rate_interval]))) > 45 '
        "or (sum(rate(export_jobs_completed_total[10m])) or vector(0))"
    )
    assert metric_names_in(expr) == {"export_job_duration_seconds_bucket", "export_jobs_completed_total"}


# --------------------------------------------------------------------------- alert rules


def test_seed_alerts_are_defined() -> None:
    text = ALERTS.read_text(encoding="utf-8")
    for name in SEED_ALERTS:
        assert re.search(rf"^\s*-\s*alert:\s*{name}\s*$", text, re.M), f"{name} missing from alerts.yml"


def test_alert_rules_use_only_registered_metrics() -> None:
    text = ALERTS.read_text(encoding="utf-8")
    known = series_names()
    used = set(re.findall(r"\bexport_[a-z0-9_]+", text))
    assert used, "alerts.yml references no export_* metric"
    assert used <= known, (
        f"alerts.yml names metrics that supervisor/telemetry/metrics.py does not register: {used - known}"
    )


def test_each_seed_alert_has_firing_and_quiet_unit_tests() -> None:
    lines = ALERTS_TEST.read_text(encoding="utf-8").splitlines()
    fires: set[str] = set()
    quiet: set[str] = set()
    for i, line in enumerate(lines):
        m = re.match(r"\s*alertname:\s*(\S+)\s*$", line)
        if not m:
            continue
        nxt = next((li for li in lines[i + 1 :] if li.strip()), "")
        if re.match(r"\s*exp_alerts:\s*\[\]\s*$", nxt):
            quiet.add(m.group(1))
        elif re.match(r"\s*exp_alerts:\s*$", nxt):
            fires.add(m.group(1))
    for name in SEED_ALERTS:
        assert name in fires, f"no promtool case where {name} fires"
        assert name in quiet, f"no promtool case where {name} stays quiet"


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    res = run(PROMTOOL, "check", "rules", str(ALERTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    assert PROMTOOL is not None
    res = run(PROMTOOL, "test", "rules", str(ALERTS_TEST))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@needs_promtool
def test_promtool_check_example_config() -> None:
    assert PROMTOOL is not None
    # rule_files in prometheus.yml is relative to the config file's directory.
    res = run(PROMTOOL, "check", "config", "prometheus.yml", cwd=PROM_DIR)
    assert res.returncode == 0, res.stdout + res.stderr


def test_example_scrape_config_shape() -> None:
    text = PROM_CONFIG.read_text(encoding="utf-8")
    assert re.search(r"job_name:\s*export-worker\s*$", text, re.M)
    assert re.search(r"metrics_path:\s*/metrics\s*$", text, re.M)
    assert re.search(r"^rule_files:\s*\n\s*-\s*alerts\.yml", text, re.M)
    # ExportWorkerDown selects up{job="export-worker"}: the job names must agree.
    assert 'up{job="export-worker"}' in ALERTS.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- dashboard


def test_dashboard_is_importable_json() -> None:
    dash = load_dashboard()
    assert dash["schemaVersion"] == 39
    assert any(i["name"] == "DS_PROMETHEUS" and i["pluginId"] == "prometheus" for i in dash["__inputs"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], f"panel {p['title']!r} has no queries"


def test_dashboard_exprs_use_only_registered_metrics() -> None:
    known = series_names()
    exprs = dashboard_exprs(load_dashboard())
    assert exprs
    for title, expr in exprs:
        names = metric_names_in(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        unknown = names - known
        assert not unknown, f"panel {title!r} uses metrics not in supervisor/telemetry/metrics.py: {unknown}"


def test_dashboard_covers_the_required_signals() -> None:
    used: set[str] = set()
    for _, expr in dashboard_exprs(load_dashboard()):
        used |= metric_names_in(expr)
    required = {
        "export_queue_depth",
        "export_oldest_pending_job_age_seconds",
        "export_jobs_completed_total",
        "export_jobs_failed_total",
        "export_job_duration_seconds_bucket",
        "export_active_renders",
        "export_child_memory_bytes",
        "export_child_kills_total",
        "export_child_recycles_total",
        "export_storage_breaker_state",
        "export_canary_healthy",
        "export_job_retries_total",
        "export_stale_jobs_rescued_total",
        "export_claim_to_start_seconds_bucket",
        "export_mails_sent_total",
        "export_mail_errors_total",
        "export_child_deaths_total",
        "export_webhook_deliveries_total",
        "export_database_up",
        "export_database_errors_total",
        "export_queue_stats_age_seconds",
        "export_queue_errors_total",
    }
    assert not required - used, f"dashboard lacks panels for {required - used}"


@needs_promtool
def test_dashboard_exprs_are_valid_promql(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": as_promql(expr)}
        for i, (_, expr) in enumerate(dashboard_exprs(load_dashboard()))
    ]
    rule_file = tmp_path / "dashboard_rules.yml"
    # JSON is YAML: promtool reads it as a rules file.
    rule_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    res = run(PROMTOOL, "check", "rules", str(rule_file))
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------- runbook


RUNBOOK = ROOT / "RUNBOOK.md"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to dashes."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def runbook_anchors() -> set[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def alert_rules() -> list[dict]:
    import yaml

    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_rule_says_what_to_do_and_links_an_existing_runbook_section() -> None:
    anchors = runbook_anchors()
    rules = alert_rules()
    assert len(rules) >= 15
    for rule in rules:
        name, notes = rule["alert"], rule.get("annotations", {})
        assert notes.get("summary"), f"{name}: no summary"
        assert len(notes.get("description", "")) > 80, f"{name}: the description must say what to check and change"
        assert "seed README" not in notes["description"], f"{name} points at the seed README's headings"
        url = notes.get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "RUNBOOK.md" and anchor, f"{name}: runbook_url {url!r} is not RUNBOOK.md#section"
        assert anchor in anchors, f"{name}: RUNBOOK.md has no section #{anchor}"


def test_runbook_cross_links_resolve() -> None:
    anchors = runbook_anchors()
    links = re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text(encoding="utf-8"))
    assert links
    assert not set(links) - anchors


def test_anchor_slugs_match_githubs() -> None:
    assert github_anchor("ExportWorkerDown") == "exportworkerdown"
    assert github_anchor("Health checks: /health (503)") == "health-checks-health-503"
