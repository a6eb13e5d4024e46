"""`export-worker demo` (the README's main command) end to end, as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from serving import ROOT, free_port

pytestmark = [pytest.mark.timeout(700), pytest.mark.chromium]


def test_demo_renders_the_sample_menus_and_writes_files_and_mails(db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = os.environ | {"DATABASE_URL": db_url, "EXPORT_WORKER_DATA_DIR": str(data), "PORT": str(free_port())}
    exe = Path(sys.executable).with_name("export-worker")
    result = subprocess.run([str(exe), "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if " completed " in line]
    assert len(rows) == 6, result.stdout
    assert "world kitchen" in result.stdout and "jasmine (rtl)" in result.stdout  # every script; right to left
    files = sorted(p.suffix for p in (data / "files").rglob("*") if p.is_file())
    assert files == [".jpg", ".pdf", ".pdf", ".pdf", ".png", ".png"]
    assert len(list((data / "mail").glob("*-completed.eml"))) == 6
    # one last line: where the files and mails are, and that the mails' links need `serve`
    last = result.stdout.strip().splitlines()[-1]
    assert last == (f"Done: files in {data.resolve() / 'files'}, mails (.eml) in {data.resolve() / 'mail'}; "
                    f"their links (http://localhost:{env['PORT']}/files/...) work only while "
                    "`export-worker serve` runs."), result.stdout
