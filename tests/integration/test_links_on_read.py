"""Links are signed when they are handed out, never read back from the row: `export-worker status`
on day 8 of a 30-day file prints a link that works (the one stored at completion died on day 7)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from supervisor.delivery.links import LinkSigner
from tests.conftest import ROOT
from tests.integration.console_helpers import insert_file_job_completed_days_ago

pytestmark = pytest.mark.timeout(60)

LINK_SECRET = "links-on-read-secret-0123456789abcdef"
TTL = 7 * 86400


def test_status_on_day_8_prints_a_link_signed_now(tmp_path: Path, db_url: str) -> None:
    signer = LinkSigner(LINK_SECRET.encode())
    aged = insert_file_job_completed_days_ago(db_url, signer, "http://localhost:3000", TTL)
    path, stored, stored_expiry, job = aged.path, aged.stored_link, aged.stored_expiry, aged.job_id
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "EXPORT_WORKER_CONFIG"}}
    env |= {"DATABASE_URL": db_url, "EXPORT_WORKER_DATA_DIR": str(tmp_path / "data"), "LINK_SECRET": LINK_SECRET,
            "SIGNED_URL_TTL_SECONDS": str(TTL)}
    shown = subprocess.run([str(ROOT / ".venv/bin/export-worker"), "status", job, "--json"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=50)
    assert shown.returncode == 0, shown.stderr
    link = json.loads(shown.stdout)["file_url"]
    assert link != stored and not signer.verify(path, stored_expiry, stored.rsplit("sig=", 1)[1])
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)
    assert urllib.parse.urlsplit(link).path == f"/files/{path}"
    assert signer.verify(path, query["expires"][0], query["sig"][0]), "the printed link is valid now"
    assert int(query["expires"][0]) > time.time() + TTL - 3600
