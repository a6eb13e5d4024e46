"""`export-worker bench --smoke` runs end to end and writes every section (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("creation", "null_renderer", "peers", "pickup", "end_to_end", "memory", "ceiling_policy",
            "ceiling", "browser_per_job", "capacity", "container", "machine", "goals")


@pytest.mark.timeout(700)
def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "tmp.json"
    env = dict(os.environ)
    # bench/ is not part of the installed packages: it is imported from the source checkout.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "export-worker"), "bench", "--smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| case | document | jobs |" in proc.stdout
    assert "| goal | measured | goal | met |" in proc.stdout
    assert "Capacity (bench/capacity.py)" in proc.stdout and "2 GiB container" in proc.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    for section in SECTIONS:
        assert section in data, section
    for case in ("end_to_end",):
        assert set(data[case]["cases"]) == {"small", "medium", "large"}
    for case in ("ceiling", "ceiling_policy", "browser_per_job"):
        assert set(data[case]) == {"small", "medium", "large"}
    assert set(data["pickup"]) >= {"notify", "polling"}
    assert data["end_to_end"]["cases"]["small"]["completed"] == data["end_to_end"]["cases"]["small"]["jobs"]
