"""The default worker id: RAILWAY_REPLICA_ID on Railway, hostname-pid elsewhere, WORKER_ID over both."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.identity import default_worker_id

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]


def test_railway_replica_id_names_the_worker() -> None:
    replica = "5f0c2a1e-3b7d-4c1a-9e2f-0a1b2c3d4e5f"
    assert default_worker_id({"RAILWAY_REPLICA_ID": replica}) == f"railway-{replica}"


def test_without_railway_it_is_hostname_pid() -> None:
    assert default_worker_id({}) == f"{socket.gethostname()}-{os.getpid()}"
    assert default_worker_id({"RAILWAY_REPLICA_ID": "  "}) == f"{socket.gethostname()}-{os.getpid()}"


def worker_id_in_process(env_extra: dict[str, str]) -> str:
    """The worker id the supervisor and CLI use (settings first, then the default), in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORKER_ID", "RAILWAY_REPLICA_ID")} | env_extra
    code = (
        "import sys; from shared.config import load_settings; from supervisor.identity import default_worker_id;"
        "s = load_settings(None); print(s.worker.worker_id or default_worker_id())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_the_environment_decides_in_a_real_process() -> None:
    assert worker_id_in_process({"RAILWAY_REPLICA_ID": "abc"}) == "railway-abc"
    # WORKER_ID, when set, wins over Railway's replica id.
    assert worker_id_in_process({"RAILWAY_REPLICA_ID": "abc", "WORKER_ID": "worker-1"}) == "worker-1"
