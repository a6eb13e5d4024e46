"""The render child: a spawned process that owns one Chromium and renders jobs from its pipe.

Protocol (shared/messages.py): boot, answer ``Ready`` or ``BootFailed`` (exit
EX_BOOT_FAILED); then one ``RenderJob`` at a time, each answered by ``Rendered`` or
``RenderFailed``; ``Stop`` means close the browser and exit EX_RECYCLE; a closed pipe
means the supervisor is gone: close the browser and exit EX_PARENT_GONE.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing.connection
import os
import signal
import sys
import time
from typing import Any

import msgspec

from render_child.netpolicy import LOCKDOWN_ARGS
from shared.messages import (
    EX_BOOT_FAILED,
    EX_PARENT_GONE,
    EX_RECYCLE,
    FROM_CHILD_ENCODER,
    TO_CHILD_DECODER,
    BootFailed,
    ChildOptions,
    FromChild,
    Log,
    Ready,
    RenderFailed,
    RenderJob,
    Stop,
    chromium_home,
)

PR_SET_PDEATHSIG = 1
EX_BROWSER_GONE = 1  # Chromium itself died: a crash, the supervisor replaces the child
BOOT_TIMEOUT_MS = 30_000
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def browser_args(options: ChildOptions) -> list[str]:
    """The launch flags: the supervisor's, plus the network lockdown (never optional)."""
    args = [a for a in options.chromium_args if not a.startswith(_LOCKDOWN_PREFIXES)]
    return [*args, *LOCKDOWN_ARGS]


_LOCKDOWN_PREFIXES = ("--host-resolver-rules", "--proxy-server", "--proxy-bypass-list", "--proxy-pac-url")


class _Channel:
    def __init__(self, conn: multiprocessing.connection.Connection, level: str) -> None:
        self.conn = conn
        self.min_level = _LEVELS.get(level.lower(), 20)

    def send(self, msg: FromChild) -> None:
        self.conn.send_bytes(FROM_CHILD_ENCODER.encode(msg))

    def log(self, level: str, message: str, job_id: str | None = None) -> None:
        if _LEVELS.get(level, 20) < self.min_level:
            return
        with contextlib.suppress(OSError, ValueError):
            self.send(Log(level=level, message=message, job_id=job_id))


def child_entry(conn: multiprocessing.connection.Connection, options_bytes: bytes) -> None:
    """The ``spawn`` target. Never returns: exits with one of the protocol's exit codes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_parent_death_signal()
    with contextlib.suppress(OSError):
        os.setpgrp()
    with contextlib.suppress(OSError):
        os.dup2(2, 1)  # nothing of ours, Playwright's or Chromium's reaches the supervisor's stdout
    code = _run(conn, options_bytes)
    with contextlib.suppress(OSError):
        conn.close()
    sys.stderr.flush()
    os._exit(code)


def _run(conn: multiprocessing.connection.Connection, options_bytes: bytes) -> int:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    from render_child.render import Renderer

    start = time.perf_counter()
    try:
        options = msgspec.msgpack.decode(options_bytes, type=ChildOptions)
    except msgspec.DecodeError as exc:
        with contextlib.suppress(OSError):
            conn.send_bytes(FROM_CHILD_ENCODER.encode(BootFailed(message=f"bad ChildOptions: {exc}")))
        return EX_BOOT_FAILED
    channel = _Channel(conn, options.log_level)
    manager: Any = None
    browser: Any = None
    renderer: Renderer | None = None
    try:
        try:
            manager = sync_playwright().start()
            launch: dict[str, Any] = {
                "args": browser_args(options),
                "headless": True,
                "timeout": BOOT_TIMEOUT_MS,
            }
            if options.executable_path:
                launch["executable_path"] = options.executable_path
            home = chromium_home(options.scratch_dir, os.getpid())
            launch["env"] = {**os.environ, "XDG_CONFIG_HOME": f"{home}/config", "XDG_CACHE_HOME": f"{home}/cache"}
            browser = manager.chromium.launch(**launch)
            renderer = Renderer(browser, channel.log)
            renderer.warm_up()
            boot_ms = round((time.perf_counter() - start) * 1000, 1)
            channel.send(Ready(pid=os.getpid(), browser_version=browser.version, boot_ms=boot_ms))
        except (OSError, EOFError):
            return EX_PARENT_GONE
        except Exception as exc:
            with contextlib.suppress(OSError, ValueError):
                channel.send(BootFailed(message=f"{type(exc).__name__}: {str(exc).strip()[:1000]}"))
            return EX_BOOT_FAILED

        while True:
            try:
                raw = conn.recv_bytes()
            except (EOFError, OSError):
                return EX_PARENT_GONE
            try:
                msg = TO_CHILD_DECODER.decode(raw)
            except msgspec.DecodeError as exc:
                channel.log("error", f"undecodable message from the supervisor: {exc}")
                continue
            if isinstance(msg, Stop):
                return EX_RECYCLE
            assert isinstance(msg, RenderJob)
            try:
                answer = renderer.render(msg)
            except PlaywrightError as exc:  # render() answers everything; this is the browser itself
                answer = RenderFailed(
                    job_id=msg.job_id, category="transient", message=f"browser error: {exc}", render_ms=0.0
                )
            try:
                channel.send(answer)
            except (OSError, ValueError):
                return EX_PARENT_GONE
            if not browser.is_connected():
                channel.log("error", "Chromium disconnected; the child exits to be replaced")
                return EX_BROWSER_GONE
    finally:
        _shutdown(renderer, browser, manager)


def _shutdown(renderer: Any, browser: Any, manager: Any) -> None:
    for step in (
        (lambda: renderer.close()) if renderer is not None else None,
        (lambda: browser.close()) if browser is not None else None,
        (lambda: manager.stop()) if manager is not None else None,
    ):
        if step is None:
            continue
        with contextlib.suppress(Exception):
            step()
