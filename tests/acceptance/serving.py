"""Run `export-worker serve` as a real process for the acceptance tests: ports, env, start, health, stop."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.chromium import chromium_binary

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / ".venv" / "bin" / "export-worker"

# `serve` finds Chromium from PUPPETEER_EXECUTABLE_PATH (empty: Playwright's own); so do the tests.
_CHROMIUM = os.environ.get("PUPPETEER_EXECUTABLE_PATH", "/usr/bin/chromium")
requires_chromium = pytest.mark.skipif(
    chromium_binary(_CHROMIUM) is None, reason=f"no Chromium for PUPPETEER_EXECUTABLE_PATH={_CHROMIUM!r}"
)

# Settings from the developer's shell that would point `serve` at real services or change its policy.
_DROPPED_ENV = frozenset({"EXPORT_WORKER_CONFIG", "SUPABASE_URL", "SENDGRID_API_KEY", "SMTP_HOST", "ALLOWED_URL_HOSTS"})
_SERVE_DEFAULTS = {
    "MAX_CONCURRENT_RENDERS": "1",
    "POLLING_INTERVAL_BUSY_MS": "100",
    "POLLING_INTERVAL_IDLE_MS": "500",
    "GRACEFUL_SHUTDOWN_TIMEOUT_MS": "5000",
    # 3 minutes for a child to boot (30 s in production): a busy machine starts Chromium slower,
    # and a child past its boot bound is killed as a boot failure (and /health says 503).
    "CHILD_BOOT_TIMEOUT_SECONDS": "180",
}


def until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something true (and return that); fail after `timeout` seconds
    (at least 60: generous on a busy machine; a wait that ends early costs nothing)."""
    timeout = max(timeout, 60)
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5) -> tuple[int, str, bytes]:
    """(status, content type, body); an HTTP error status is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def serve_env(db_url: str, data_dir: Path, port: int, **overrides: str) -> dict[str, str]:
    """The environment for `export-worker serve`: this one minus outside services, plus the test's own."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(
        {"DATABASE_URL": db_url, "EXPORT_WORKER_DATA_DIR": str(data_dir), "PORT": str(port)},
        **_SERVE_DEFAULTS,
    )
    env.update(overrides)
    return env


def start_serve(env: dict[str, str], log: Path, *, stderr_log: Path | None = None) -> subprocess.Popen[str]:
    """Start `serve`; stdout (and stderr, unless `stderr_log` is given) goes to `log`."""
    with open(log, "w") as out:
        if stderr_log is None:
            return subprocess.Popen(
                [str(CLI), "serve"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
            )
        with open(stderr_log, "w") as err:
            return subprocess.Popen([str(CLI), "serve"], cwd=ROOT, env=env, stdout=out, stderr=err, text=True)


def wait_healthy(port: int, proc: subprocess.Popen[str], log: Path, timeout: float = 180) -> None:
    """Until GET /health is 200; fail if `proc` exits or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        assert proc.poll() is None, f"serve exited with {proc.returncode}: {log.read_text()[-3000:]}"
        try:
            status, _, body = http_get(f"http://127.0.0.1:{port}/health", timeout=3)
            if status == 200:
                return
            last = (status, body[:500])
        except OSError as exc:  # not listening yet
            last = exc
        assert time.monotonic() < deadline, f"/health not 200 after {timeout}s: {last}"
        time.sleep(0.1)


def _stacks(pid: int) -> str:
    """The Python stacks of a hung `serve` (py-spy, when installed), for the failure message."""
    spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not Path(spy).exists():
        return "(py-spy not installed: no stacks)"
    done = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout + done.stderr


@contextmanager
def running_serve(
    env: dict[str, str],
    log: Path,
    *,
    expect_exit: int = 0,
    stderr_log: Path | None = None,
    stop_timeout: float = 60,
) -> Iterator[subprocess.Popen[str]]:
    """`serve` started and healthy; on a clean exit of the block, SIGTERM and assert its exit code.

    If the block raises, or the process is still alive at the end, it is killed.
    """
    proc = start_serve(env, log, stderr_log=stderr_log)
    try:
        wait_healthy(int(env["PORT"]), proc, log)
        yield proc
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve did not stop within {stop_timeout}s of SIGTERM\n{_stacks(proc.pid)}\n"
                        f"{(stderr_log or log).read_text()[-6000:]}")
        assert code == expect_exit, (stderr_log or log).read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
