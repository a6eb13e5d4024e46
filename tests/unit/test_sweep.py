"""The temp sweep removes dead writers' folders, and nothing else."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.delivery.sweep import sweep_temp

HOST = socket.gethostname()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _folder(parent: Path, name: str, files: int, age_seconds: float = 0.0) -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    stamp = time.time() - age_seconds
    for i in range(files):
        f = folder / f"f{i}.tmp"
        f.write_bytes(b"x")
        os.utime(f, (stamp, stamp))
    os.utime(folder, (stamp, stamp))
    return folder


@pytest.mark.timeout(300)
def test_sweep_removes_dead_local_writers_and_keeps_the_rest(tmp_path: Path) -> None:
    uploads, scratch = tmp_path / "files" / ".uploads", tmp_path / "scratch"
    dead = _dead_pid()
    dead_upload = _folder(uploads, f"{HOST}-{dead}", 2, age_seconds=120)
    dead_scratch = _folder(scratch, f"{HOST}-{dead}", 3, age_seconds=120)
    fresh_dead = _folder(scratch, f"{HOST}-{_dead_pid()}", 1, age_seconds=0)  # idle too briefly
    alive = _folder(scratch, f"{HOST}-{os.getppid()}", 1, age_seconds=120)  # a live process
    mine = _folder(uploads, f"{HOST}-{os.getpid()}", 1, age_seconds=120)
    foreign_recent = _folder(scratch, f"elsewhere-{dead}", 1, age_seconds=3600)
    foreign_old = _folder(scratch, f"elsewhere-{dead + 1}", 2, age_seconds=2 * 86400)
    unrelated = _folder(scratch, "chromium-home", 1, age_seconds=2 * 86400)

    assert sweep_temp(tmp_path) == 2 + 3 + 2

    for gone in (dead_upload, dead_scratch, foreign_old):
        assert not gone.exists()
    for kept in (fresh_dead, alive, mine, foreign_recent, unrelated):
        assert kept.exists()
    assert sweep_temp(tmp_path) == 0


def test_sweep_without_a_data_dir_does_nothing(tmp_path: Path) -> None:
    assert sweep_temp(tmp_path / "missing") == 0
