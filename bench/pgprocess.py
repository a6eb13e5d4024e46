"""What the throwaway PostgreSQL and PgBouncer launchers share: a server process run as `postgres`.

PostgreSQL refuses to run as root and Debian's PgBouncer is meant to run as `postgres`,
so when this process is root each server runs as that user (subprocess's ``user=``; no
wrapper process between us and the signal we send). Otherwise it runs as whoever we are.
The scratch directory is made under the system temp dir, not the caller's (pytest's
tmp_path sits under a 0700 directory of root's that `postgres` cannot enter).
"""

from __future__ import annotations

import abc
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg

SERVER_USER = "postgres"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
LOG_TAIL_CHARS = 8000


class LaunchFailed(RuntimeError):
    """A server did not start (or stop); the message carries its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS just handed out (servers cannot bind port 0 themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) of `postgres` when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(SERVER_USER)
    return entry.pw_uid, entry.pw_gid


def scratch_dir(prefix: str) -> Path:
    """A fresh directory the server's user owns, under the system temp dir."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    ids = _run_as()
    if ids is not None:
        os.chown(path, *ids)
    return path


def run_as_server_user(argv: Sequence[str], cwd: Path) -> None:
    """Run a one-shot command (initdb) as the server's user; its output goes into the error."""
    ids = _run_as()
    result = subprocess.run(
        list(argv), cwd=cwd, capture_output=True, text=True, check=False,
        user=None if ids is None else ids[0], group=None if ids is None else ids[1],
    )
    if result.returncode != 0:
        raise LaunchFailed(f"{argv[0]} exited {result.returncode}:\n{result.stdout}{result.stderr}")


class ServerProcess(abc.ABC):
    """One server process: started as the server's user, probed until it accepts, stopped on exit.

    Subclasses say how to prepare the scratch dir, which command to run, and which URL
    proves the server is up. On a failed start, ``LaunchFailed`` carries the server's log.
    """

    name = "server"
    # The signal for a prompt, clean shutdown (PostgreSQL: fast; PgBouncer: immediate).
    stop_signal = signal.SIGINT

    def __init__(self, scratch_parent_prefix: str) -> None:
        self.scratch = scratch_dir(scratch_parent_prefix)
        self.port = free_port()
        self.log_path = self.scratch / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    # What each server supplies.
    def prepare(self) -> None:  # noqa: B027  (optional hook: a server may need no files)
        """Write config / data files into ``self.scratch`` before the start."""

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The server's command line."""

    @abc.abstractmethod
    def probe_url(self) -> str:
        """A URL that answers once the server accepts connections."""

    # The shared engine.
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"

    def __enter__(self) -> Self:
        try:
            self.prepare()
            self._start()
            self._wait_accepting()
        except BaseException:
            self._stop()
            self._remove_scratch()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._stop()
        finally:
            if exc_type is not None:
                # The block failed: show the server's side of it before the scratch dir goes.
                print(f"--- {self.name} log ---\n{self.log()[-LOG_TAIL_CHARS:]}", file=sys.stderr, flush=True)
            self._remove_scratch()

    def _start(self) -> None:
        ids = _run_as()
        with open(self.log_path, "ab") as log:
            if ids is not None:
                os.chown(self.log_path, *ids)
            self._process = subprocess.Popen(
                self.command(), cwd=self.scratch, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                user=None if ids is None else ids[0], group=None if ids is None else ids[1],
                start_new_session=True,  # a Ctrl-C meant for the bench does not reach the server first
            )

    def _wait_accepting(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        last_error = ""
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LaunchFailed(
                    f"{self.name} exited {self._process.returncode} before accepting connections "
                    f"(port {self.port}); its log:\n{self.log()}"
                )
            try:
                with psycopg.connect(self.probe_url(), connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as error:
                last_error = str(error).strip()
            time.sleep(0.1)
        raise LaunchFailed(
            f"{self.name} did not accept connections on port {self.port} within "
            f"{START_TIMEOUT_SECONDS:.0f} s (last error: {last_error}); its log:\n{self.log()}"
        )

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(self.stop_signal)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise LaunchFailed(
                f"{self.name} ignored {self.stop_signal.name} for {STOP_TIMEOUT_SECONDS:.0f} s and was killed; "
                f"its log:\n{self.log()}"
            ) from None

    def _remove_scratch(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
