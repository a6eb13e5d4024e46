"""A real Prometheus (Debian's `prometheus` binary) for the alert tests: our rules, our targets, its API.

The rules are deploy/prometheus/alerts.yml with shorter waits, rewritten here: every
`for:` becomes FOR, every `[Nm]` range becomes about 1.6 N seconds (at least 8 s, so a
rate still sees several 2 s scrapes), and a few absolute thresholds that are times
(seconds of staleness) are lowered. The expressions are otherwise the ones we ship.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from serving import ROOT, free_port, http_get, until

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)
FOR = "2s"
# Thresholds that are durations in the expression itself, lowered like the ranges.
THRESHOLDS = {"ExportQueueStatsStale": ("> 60", "> 12")}


def shortened_range(match: re.Match[str]) -> str:
    return f"[{max(8, round(1.6 * int(match.group(1))))}s]"


def shortened_rules() -> dict[str, Any]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR
            rule["expr"] = re.sub(r"\[(\d+)m\]", shortened_range, rule["expr"])
            if rule.get("alert") in THRESHOLDS:
                old, new = THRESHOLDS[rule["alert"]]
                assert old in rule["expr"], (rule["alert"], rule["expr"])
                rule["expr"] = rule["expr"].replace(old, new)
    return doc


class Prometheus:
    """One Prometheus on a free port, scraping file_sd targets every 2 s, evaluating every second.

    2 s, not 1 s: while the database is away /metrics waits up to 1 s for the queue's
    numbers (supervisor/http/app.py), and a scrape timeout under that would be a false ExportWorkerDown.
    """

    def __init__(self, workdir: Path) -> None:
        assert PROMETHEUS is not None
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets_file = workdir / "targets.json"
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.rule_names = [r["alert"] for g in shortened_rules()["groups"] for r in g["rules"] if "alert" in r]

    def start(self) -> None:
        (self.workdir / "rules.yml").write_text(yaml.safe_dump(shortened_rules(), sort_keys=False), encoding="utf-8")
        self.set_targets({})
        config = {
            "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yml"],
            "scrape_configs": [{
                "job_name": "export-worker",
                "metrics_path": "/metrics",
                "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "1s"}],
            }],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(PROMETHEUS), f"--config.file={self.workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--log.level=warn"],
                cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
            )
        self.wait_for(lambda: self._ready(), 60, "Prometheus ready")
        groups = self.api("rules")["groups"]
        loaded = [r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"]
        assert sorted(loaded) == sorted(self.rule_names), loaded

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            return http_get(f"{self.url}/-/ready", timeout=2)[0] == 200
        except OSError:
            return False

    def set_targets(self, workers: dict[str, int]) -> None:
        """Scrape these workers (instance name -> port); written atomically, picked up by file_sd."""
        groups = [{"targets": [f"127.0.0.1:{port}"], "labels": {"instance": name}} for name, port in workers.items()]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups), encoding="utf-8")
        tmp.replace(self.targets_file)

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, _, body = http_get(f"{self.url}/api/v1/{path}{query}", timeout=10)
        assert status == 200, body[:1000]
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it has no result."""
        result = self.api("query", query=expr)["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def alerts(self, instance: str) -> dict[str, str]:
        """{alert name: pending|firing} for this worker, and for rules that aggregate over all workers."""
        out: dict[str, str] = {}
        for alert in self.api("alerts")["alerts"]:
            if alert["labels"].get("instance", instance) == instance:
                name = alert["labels"]["alertname"]
                if out.get(name) != "firing":
                    out[name] = alert["state"]
        return out

    def evaluations(self) -> dict[str, str]:
        return {g["name"]: g["lastEvaluation"] for g in self.api("rules")["groups"]}

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        return until(condition, timeout, what, interval=0.25)
