"""Chromium's own sandbox: detected at boot, engaged when the host allows it, shown in /health and /metrics.

This machine runs everything as root, where Chromium refuses its sandbox; the
detection must say so. `serve` is then started as a throwaway uid (setpriv), where
the kernel allows user namespaces: the sandbox must really engage (no --no-sandbox
anywhere, renderers in their own PID namespace under a seccomp filter), and a
process of that same uid must not be able to read the supervisor's environment.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from serving import CLI, ROOT, free_port, http_get, requires_chromium, serve_env, wait_healthy

from supervisor.pool import sandbox

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]

THROWAWAY_UID = 54321
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("setpriv") and shutil.which("unshare")),
    reason="starting a throwaway uid needs root, setpriv and unshare",
)


def test_detection_on_this_host_as_root() -> None:
    found = sandbox.probe()
    print(f"\nsandbox detection here (uid {os.geteuid()}): {found.mode.value}: {found.reason}")
    if os.geteuid() == 0:
        assert found.mode is sandbox.SandboxMode.OFF
        assert "root" in found.reason
        assert sandbox.chromium_args(["--disable-gpu"], found.mode) == ["--no-sandbox", "--disable-gpu"]
    else:
        assert "root" not in found.reason, found


def _private_ancestor(path: str) -> tuple[str, str] | None:
    """(the first ancestor others cannot traverse, the entry below it on the way), e.g. ("/root", ".pyenv")."""
    parts = Path(path).parts
    for i in range(1, len(parts) - 1):
        ancestor = Path(*parts[: i + 1])
        if not stat.S_IMODE(ancestor.stat().st_mode) & stat.S_IXOTH:
            return str(ancestor), parts[i + 1]
    return None


def _as_throwaway(argv: list[str]) -> list[str]:
    """`argv` as THROWAWAY_UID. If the interpreter lives under a private directory
    (pyenv under /root here), a private mount namespace puts a traversable copy of
    that directory, holding only the interpreter's tree, in front of it: for this
    process tree only, nothing on the host changes."""
    drop = ["setpriv", f"--reuid={THROWAWAY_UID}", f"--regid={THROWAWAY_UID}", "--clear-groups", *argv]
    hidden = _private_ancestor(os.path.realpath(sys.executable))
    if hidden is None:
        return drop
    ancestor, entry = hidden
    script = (
        'set -e; t=$(mktemp -d); chmod 711 "$t"; mkdir "$t/$2"; mount --bind "$1/$2" "$t/$2"; '
        'mount --rbind "$t" "$1"; shift 2; exec "$@"'
    )
    return ["unshare", "-m", "sh", "-c", script, "sh", ancestor, entry, *drop]


@pytest.fixture
def throwaway_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="ew-sandbox-", dir="/tmp"))
    os.chown(home, THROWAWAY_UID, THROWAWAY_UID)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _json_lines(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


class _HeldImage:
    """A loopback server whose one image is answered only when released: a job's page
    (and so its renderer process, which exists only during a job) stays open till then."""

    def __init__(self) -> None:
        release = self.release = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                release.wait(120)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.netloc = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _enqueue_held_job(db_url: str, netloc: str) -> None:
    payload = {"source": {"kind": "html", "html": f'<p>held</p><img src="http://{netloc}/held.png">'}}
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT id FROM create_export_job(%s, 'pdf', %s::jsonb)", (str(uuid.uuid4()), json.dumps(payload)))


def _chromium_cmdlines(pid: int) -> list[list[str]]:
    found = []
    for p in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):  # gone, or a zombie (cmdline() raises ZombieProcess)
            if "chromium" in p.name():
                found.append(p.cmdline())
    return found


def _renderers(pid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "chromium" in p.name() and "--type=renderer" in p.cmdline():
                found.append(p)
    return found


@needs_root
def test_serve_as_a_plain_user_runs_chromium_sandboxed(db_url: str, throwaway_home: Path, tmp_path: Path) -> None:
    port = free_port()
    held = _HeldImage()
    env = serve_env(db_url, throwaway_home / "data", port, HOME=str(throwaway_home), LINK_SECRET="link-secret-55aa",
                    ALLOWED_HOSTS=held.netloc, TRUSTED_PRIVATE_HOSTS=held.netloc)
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_as_throwaway([str(CLI), "serve"]), cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        wait_healthy(port, proc, log)
        status, _, body = http_get(f"http://127.0.0.1:{port}/health")
        puppeteer = json.loads(body)["checks"]["puppeteer"]
        print(f"\n/health puppeteer check as uid {THROWAWAY_UID}: {puppeteer}")
        assert status == 200 and puppeteer["details"]["chromium_sandbox"] == "on", puppeteer
        # the headless shell renders, sandboxed like the full browser was (CHROMIUM_HEADLESS=shell)
        assert puppeteer["details"]["chromium_executable"].endswith("chromium-headless-shell"), puppeteer
        _, _, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        assert "export_chromium_sandbox 1.0" in metrics.decode()
        modes = [r.get("chromium_sandbox") for r in _json_lines(log) if "chromium_sandbox" in r]
        assert modes == ["on"], modes  # logged once

        supervisor = psutil.Process(proc.pid)
        assert supervisor.uids().real == THROWAWAY_UID
        # Chromium's processes with their arguments; one that exited meanwhile (a finished job's
        # renderer, a zombie until the zygote reaps it) is left out: it runs nothing any more.
        chromium = _chromium_cmdlines(proc.pid)
        assert chromium, "no Chromium process under the supervisor"
        for args in chromium:
            assert "--no-sandbox" not in args, args
        # A renderer exists while a job renders (each job's page is a context of its own).
        _enqueue_held_job(db_url, held.netloc)
        deadline = time.monotonic() + 120
        while not (renderers := _renderers(proc.pid)):
            assert time.monotonic() < deadline, "no renderer while a job renders"
            time.sleep(0.1)
        for p in renderers:
            st = _status(p.pid)
            print(f"renderer {p.pid}: Seccomp {st['Seccomp']}, NSpid {st['NSpid']}")
            assert st["Seccomp"] == "2", st  # a seccomp-BPF filter
            assert len(st["NSpid"].split()) >= 2, st  # in a PID namespace of its own
        # The watchdog (same uid) can still measure a sandboxed renderer.
        smaps = subprocess.run(
            _as_throwaway(["cat", f"/proc/{renderers[0].pid}/smaps_rollup"]), capture_output=True, text=True
        )
        assert smaps.returncode == 0 and "Pss:" in smaps.stdout, smaps.stderr
        # A process of the same uid (a compromised Chromium) cannot read the supervisor's secrets.
        environ = subprocess.run(
            _as_throwaway(["cat", f"/proc/{proc.pid}/environ"]), capture_output=True, text=True
        )
        assert environ.returncode != 0 and "Permission denied" in environ.stderr, environ
        held.release.set()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()[-3000:]
    finally:
        held.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
