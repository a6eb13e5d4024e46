"""Spawn a real render child over a Pipe, talk to it, and always kill its whole tree."""

from __future__ import annotations

import contextlib
import http.server
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psutil
import pytest

from render_child.main import child_entry
from shared.messages import (
    CHROMIUM_ARGS,
    FROM_CHILD_DECODER,
    TO_CHILD_ENCODER,
    ChildOptions,
    FromChild,
    Log,
    NetworkPolicy,
    Ready,
    Rendered,
    RenderFailed,
    RenderJob,
    RenderLimits,
    Started,
    Stop,
)
from shared.payload import HtmlSource, ImageOptions, PdfOptions, RenderPayload, Source
from tests.chromium import chromium_binary, rendering_executable

# The product's own setting and lookup: Debian's Chromium (its headless shell, with
# CHROMIUM_HEADLESS=shell), or Playwright's when the setting is empty.
CHROMIUM = rendering_executable(os.environ.get("PUPPETEER_EXECUTABLE_PATH", "/usr/bin/chromium"))

requires_chromium = pytest.mark.skipif(
    chromium_binary(CHROMIUM) is None, reason=f"no Chromium for PUPPETEER_EXECUTABLE_PATH={CHROMIUM!r}"
)


@dataclass
class ChildHandle:
    process: Any  # multiprocessing.Process (spawn context)
    conn: multiprocessing.connection.Connection
    ready: Ready
    scratch: str
    logs: list[Log] = field(default_factory=list)
    started: list[Started] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def send(self, msg: RenderJob | Stop) -> None:
        self.conn.send_bytes(TO_CHILD_ENCODER.encode(msg))

    def recv(self, timeout: float = 30.0) -> FromChild:
        """The next message that is neither a log line nor a job's start."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conn.poll(left):
                raise TimeoutError("no answer from the render child")
            msg = FROM_CHILD_DECODER.decode(self.conn.recv_bytes())
            if isinstance(msg, Log):
                self.logs.append(msg)
                continue
            if isinstance(msg, Started):
                self.started.append(msg)
                continue
            return msg

    def render_all(self, jobs: list[RenderJob], timeout: float = 60.0) -> dict[str, Rendered | RenderFailed]:
        """Send every job at once; their answers by job id, in whatever order they came."""
        for job in jobs:
            self.send(job)
        answers: dict[str, Rendered | RenderFailed] = {}
        while len(answers) < len(jobs):
            answer = self.recv(timeout)
            assert isinstance(answer, Rendered | RenderFailed), answer
            assert answer.job_id not in answers
            answers[answer.job_id] = answer
        return answers

    def render(self, job: RenderJob, timeout: float = 30.0) -> Rendered | RenderFailed:
        self.send(job)
        answer = self.recv(timeout)
        assert isinstance(answer, Rendered | RenderFailed), answer
        assert answer.job_id == job.job_id
        return answer

    def tree(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


def spawn_child(executable_path: str = CHROMIUM, boot_timeout: float = 45.0, slots: int = 1) -> ChildHandle:
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    scratch = tempfile.mkdtemp(prefix="render-child-test-")
    options = ChildOptions(
        child_index=0,
        worker_id="test-worker",
        executable_path=executable_path,
        chromium_args=list(CHROMIUM_ARGS),
        scratch_dir=scratch,
        log_level="info",
        slots=slots,
    )
    process = ctx.Process(target=child_entry, args=(child_conn, msgspec.msgpack.encode(options)), daemon=True)
    process.start()
    child_conn.close()
    handle = ChildHandle(
        process=process, conn=parent_conn, ready=Ready(pid=0, browser_version="", boot_ms=0), scratch=scratch
    )
    try:
        first = handle.recv(boot_timeout)
    except BaseException:
        kill_tree(handle)
        raise
    if not isinstance(first, Ready):
        kill_tree(handle)
        raise AssertionError(f"child did not boot: {first}")
    handle.ready = first
    return handle


def chromium_processes(pids: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in pids:
        with contextlib.suppress(psutil.Error):
            if "chrom" in proc.name().lower() or any("chrom" in part for part in proc.cmdline()[:1]):
                out.append(proc)
    return out


def user_data_dirs(procs: list[psutil.Process]) -> set[str]:
    dirs: set[str] = set()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            for part in proc.cmdline():
                if part.startswith("--user-data-dir="):
                    dirs.add(part.split("=", 1)[1])
    return dirs


def processes_using(user_data_dir: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.info["cmdline"] or []
            if any(part == f"--user-data-dir={user_data_dir}" for part in cmdline):
                found.append(proc)
    return found


def kill_tree(handle: ChildHandle) -> None:
    """SIGKILL the child, its process group and every descendant found before the kill."""
    procs = handle.tree()
    with contextlib.suppress(OSError):
        os.killpg(handle.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.kill(handle.pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    handle.process.join(timeout=10)  # reap the child through multiprocessing, not psutil
    psutil.wait_procs(procs, timeout=10)
    with contextlib.suppress(OSError):
        handle.conn.close()
    shutil.rmtree(handle.scratch, ignore_errors=True)


@contextlib.contextmanager
def running_child(slots: int = 1) -> Iterator[ChildHandle]:
    handle = spawn_child(slots=slots)
    try:
        yield handle
    finally:
        kill_tree(handle)


def make_job(
    source: Source | str,
    scratch: str,
    *,
    export_type: str = "pdf",
    pdf: PdfOptions | None = None,
    image: ImageOptions | None = None,
    policy: NetworkPolicy | None = None,
    limits: RenderLimits | None = None,
    allow_test_templates: bool = False,
) -> RenderJob:
    if isinstance(source, str):
        source = HtmlSource(html=source)
    job_id = uuid.uuid4().hex[:12]
    ext = "pdf" if export_type == "pdf" else (image.format if image else "png")
    payload = RenderPayload(source=source, pdf=pdf or PdfOptions(), image=image or ImageOptions())
    return RenderJob(
        job_id=job_id,
        attempt=1,
        export_type=export_type,
        payload=payload,
        output_path=os.path.join(scratch, "out", f"{job_id}.{ext}"),
        limits=limits or RenderLimits(navigation_timeout_ms=15_000),
        policy=policy or NetworkPolicy(),
        allow_test_templates=allow_test_templates,
    )


# ---- local HTTP servers ---------------------------------------------------


@dataclass
class Hit:
    path: str
    headers: dict[str, str]


class LocalServer:
    """A threaded HTTP server on loopback recording every request.

    ``routes`` maps a path to a function returning (status, headers, body).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        routes: dict[str, Callable[[], tuple[int, dict[str, str], bytes]]] | None = None,
    ) -> None:
        self.hits: list[Hit] = []
        self.routes = routes or {}
        self._hit_seen = threading.Condition()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._hit_seen:
                    server.hits.append(Hit(self.path, {k.lower(): v for k, v in self.headers.items()}))
                    server._hit_seen.notify_all()
                route = server.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    status, headers, body = 200, {"Content-Type": "text/plain"}, b"hit"
                else:
                    status, headers, body = route()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(http.server.ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self.httpd = Server((host, 0), Handler)
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def wait_for_hit(self, predicate: Callable[[Hit], bool], *, after: int = 0, timeout: float) -> Hit | None:
        """The first hit from index ``after`` on that matches, waiting up to ``timeout`` for it."""
        with self._hit_seen:
            found: list[Hit] = []

            def seen() -> bool:
                found[:] = [hit for hit in self.hits[after:] if predicate(hit)][:1]
                return bool(found)

            self._hit_seen.wait_for(seen, timeout)
            return found[0] if found else None

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"http://{self.netloc}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


PNG_1PX_BYTES = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8cfc0f01f0005000201a0c9b1a60000000049454e44ae426082"
)
