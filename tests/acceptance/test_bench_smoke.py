"""`export-worker bench --smoke` runs end to end and writes every section (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("creation", "null_renderer", "peers", "pickup", "end_to_end", "memory", "ceiling_policy",
            "ceiling", "ceiling_context", "browser_per_job", "capacity", "container", "machine", "goals")


def _bench(args: list[str], out: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """`export-worker bench ARGS --out OUT`, which must exit 0."""
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "export-worker"), "bench", *args, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.timeout(700)
def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "tmp.json"
    proc = _bench(["--smoke"], out, timeout=600)
    assert "| case | document | jobs |" in proc.stdout
    assert "| goal | measured | goal | met |" in proc.stdout
    assert "Capacity (bench/capacity.py)" in proc.stdout and "2 GiB container" in proc.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    for section in SECTIONS:
        assert section in data, section
    for case in ("end_to_end",):
        assert set(data[case]["cases"]) == {"light", "small", "medium", "large"}
    for case in ("ceiling", "ceiling_context", "ceiling_policy"):
        assert set(data[case]) == {"light", "small", "medium", "large"}
    assert set(data["browser_per_job"]) == {"small", "medium", "large"}
    assert set(data["pickup"]) >= {"notify", "polling"}
    assert data["end_to_end"]["cases"]["small"]["completed"] == data["end_to_end"]["cases"]["small"]["jobs"]


@pytest.mark.timeout(600)
def test_bench_fleet_smoke(tmp_path: Path) -> None:
    """`export-worker bench fleet --smoke`: 2 workers through a transaction-mode PgBouncer, both LISTEN set-ups."""
    out = tmp_path / "fleet.json"
    proc = _bench(["fleet", "--smoke"], out, timeout=540)
    assert "| LISTEN | round | jobs | completed | jobs/s |" in proc.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["config"]["pool_mode"] == "transaction"
    rounds = {(r["listen"], r["kind"]): r for r in data["rounds"]}
    assert set(rounds) == {(listen, kind) for listen in ("DATABASE_URL (pooler) only", "DATABASE_LISTEN_URL direct")
                           for kind in ("burst", "paced", "idle")}
    for key, r in rounds.items():
        result = r["result"]
        assert result["completed"] == result["jobs"] == result["first_attempt"], key
        assert result["lost"] == 0 and result["doubled"] == 0, key
        assert result["mail_files"] == result["jobs"] and result["mail_sent"] == result["jobs"], key
        # Transaction mode: however many clients, the pooler opens at most its pool.
        assert 0 < r["peaks"]["pooler_servers"] <= data["config"]["pool_size"], key


@pytest.mark.timeout(300)
def test_bench_null_row(tmp_path: Path) -> None:
    """`export-worker bench null --jobs 30`: the null renderer's row alone, every job completed."""
    out = tmp_path / "null.json"
    proc = _bench(["null", "--jobs", "30"], out, timeout=240)
    assert "| null renderer, full supervisor | - | 30 |" in proc.stdout
    row = json.loads(out.read_text(encoding="utf-8"))["null_renderer"]
    assert row["completed"] == row["jobs"] == 30
