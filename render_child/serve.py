"""The child's event loop: boot Chromium, then serve the pipe, up to ``slots`` jobs at once.

Each job runs as a task of its own (its page in a context of its own); answers go
out as each job finishes, named by job id. The loop ends on ``Stop`` (EX_RECYCLE),
a closed pipe (EX_PARENT_GONE) or Chromium's disconnection (EX_BROWSER_GONE, with
no answer for the jobs it held, which die with the child as far as the supervisor
knows); then the browser and the driver are closed, each within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing.connection
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from render_child.main import EX_BROWSER_GONE, Channel, _start_async_playwright, launch_options
from render_child.netpolicy import pinned_client
from render_child.procs import browser_pid
from render_child.render import Renderer
from shared.messages import (
    EX_BOOT_FAILED,
    EX_PARENT_GONE,
    EX_RECYCLE,
    TO_CHILD_DECODER,
    BootFailed,
    ChildOptions,
    Ready,
    RenderFailed,
    RenderJob,
    Stop,
)
from shared.proc_children import process_gone
from shared.vocabulary import ErrorCategory, RenderFailure

CLOSE_TIMEOUT_S = 10.0  # each of: the fetch client, the browser, the driver
JOBS_CANCEL_TIMEOUT_S = 5.0


async def serve(conn: multiprocessing.connection.Connection, options: ChildOptions, channel: Channel) -> int:
    """Boot, serve until told or forced to stop, close; the process's exit code."""
    closers: list[Callable[[], Awaitable[Any]]] = []
    try:
        try:
            renderer, browser = await _boot(options, channel, closers)
        except (OSError, EOFError):
            return EX_PARENT_GONE
        except Exception as exc:
            with contextlib.suppress(OSError, ValueError):
                channel.send(BootFailed(message=f"{type(exc).__name__}: {str(exc).strip()[:1000]}"))
            return EX_BOOT_FAILED
        return await _Server(conn, channel, renderer, browser, options.slots).run()
    finally:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(close(), CLOSE_TIMEOUT_S)


async def _boot(
    options: ChildOptions, channel: Channel, closers: list[Callable[[], Awaitable[Any]]]
) -> tuple[Renderer, Any]:
    start = time.perf_counter()
    manager = await _start_async_playwright()
    closers.append(manager.stop)
    browser = await manager.chromium.launch(**launch_options(options))
    closers.append(browser.close)
    client = pinned_client()
    closers.append(client.aclose)
    pid = browser_pid(os.getpid())
    renderer = Renderer(browser, pid, channel.log, client, channel.send)
    boot_ms = round((time.perf_counter() - start) * 1000, 1)
    channel.send(Ready(pid=os.getpid(), browser_version=browser.version, boot_ms=boot_ms,
                       slots=options.slots, browser_pid=pid))
    return renderer, browser


class _Server:
    def __init__(
        self, conn: multiprocessing.connection.Connection, channel: Channel, renderer: Renderer, browser: Any,
        slots: int,
    ) -> None:
        self.conn = conn
        self.channel = channel
        self.renderer = renderer
        self.browser = browser
        self.browser_pid = renderer.pages.browser_pid
        self.slots = asyncio.Semaphore(max(1, slots))
        self.jobs: set[asyncio.Task[None]] = set()
        self.exit_code: int | None = None
        self.done = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    async def run(self) -> int:
        self._loop.add_reader(self.conn.fileno(), self._on_readable)
        self.browser.on("disconnected", lambda _browser: self._browser_gone())
        try:
            await self.done.wait()
        finally:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.conn.fileno())
            for task in self.jobs:
                task.cancel()
            if self.jobs and self.exit_code != EX_BROWSER_GONE:
                await asyncio.wait(self.jobs, timeout=JOBS_CANCEL_TIMEOUT_S)
        assert self.exit_code is not None
        return self.exit_code

    def _finish(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.conn.fileno())
            self.done.set()

    def _on_readable(self) -> None:
        try:
            while self.exit_code is None and self.conn.poll():
                self._dispatch(self.conn.recv_bytes())
        except (EOFError, OSError):
            self._finish(EX_PARENT_GONE)

    def _dispatch(self, raw: bytes) -> None:
        try:
            message = TO_CHILD_DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            self.channel.log("error", f"undecodable message from the supervisor: {exc}")
            return
        if isinstance(message, Stop):
            self._finish(EX_RECYCLE)
            return
        task = asyncio.create_task(self._job(message), name=f"job-{message.job_id}")
        self.jobs.add(task)
        task.add_done_callback(self.jobs.discard)

    async def _job(self, job: RenderJob) -> None:
        async with self.slots:
            try:
                answer: Any = await self.renderer.render(job)
            except Exception as exc:  # render answers everything; this is a fault of ours
                answer = RenderFailed(job_id=job.job_id, category=ErrorCategory.TRANSIENT,
                                      code=RenderFailure.INTERNAL, message=f"{type(exc).__name__}: {exc}",
                                      render_ms=0.0)
        if self._browser_dead():
            # Chromium died during this job: no answer, so the supervisor settles it (and
            # every other job of this child) as lost with the child, and sends no more.
            self._browser_gone()
            return
        try:
            self.channel.send(answer)
        except (OSError, ValueError):
            self._finish(EX_PARENT_GONE)

    def _browser_dead(self) -> bool:
        """Playwright reports a page's failure before the browser's disconnection, so the
        browser process itself is asked too (a SIGKILL leaves it gone or a zombie at once)."""
        return not self.browser.is_connected() or (self.browser_pid > 0 and process_gone(self.browser_pid))

    def _browser_gone(self) -> None:
        if self.exit_code is None:
            self.channel.log("error", "Chromium disconnected; the child exits to be replaced")
        self._finish(EX_BROWSER_GONE)
