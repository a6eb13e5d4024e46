"""The layout: packages named after the parts, imports running one way (issue 25 item 1).

The direction itself is import-linter's contract in pyproject.toml; this test runs it
so the suite fails where the lint would, and checks that the README's map and each
package's docstring describe the packages that exist.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import supervisor

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("cli", "http", "pool", "delivery", "queue", "telemetry")
LOOP = {"runner", "composition", "tasks", "settle", "upkeep", "worker_health", "worker_state", "identity"}


def test_imports_run_downwards_only() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_supervisor_holds_only_the_loop_and_its_parts() -> None:
    found = {m.name for m in pkgutil.iter_modules(supervisor.__path__)}
    assert found == LOOP | set(PARTS)


def test_every_part_says_what_it_owns_and_what_it_may_import() -> None:
    for part in PARTS:
        doc = importlib.import_module(f"supervisor.{part}").__doc__ or ""
        assert "Owns" in doc or "owns" in doc, part
        assert "import" in doc, part


def test_the_readme_map_names_every_part() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for part in PARTS:
        assert f"supervisor/{part}/" in readme, part
