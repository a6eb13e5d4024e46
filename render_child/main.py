"""The render child: a spawned process that owns one Chromium and renders jobs from its pipe.

Protocol (shared/messages.py): boot, answer ``Ready`` (with its slots and browser
pid) or ``BootFailed`` (exit EX_BOOT_FAILED); then up to ``slots`` ``RenderJob``s at
once, each in a browser context of its own, announced by ``Started`` and answered by
``Rendered`` or ``RenderFailed`` as each finishes; ``Stop`` means close the browser
and exit EX_RECYCLE; a closed pipe means the supervisor is gone: close the browser and
exit EX_PARENT_GONE. When Chromium itself dies the child exits EX_BROWSER_GONE without
answering the jobs it held: the supervisor settles them as lost with the child.

This module is the process (its flags, its entry); the asyncio loop that serves the
pipe is :mod:`render_child.serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from render_child.netpolicy import LOCKDOWN_ARGS
from shared.child_env import child_environ
from shared.messages import (
    EX_BOOT_FAILED,
    FROM_CHILD_ENCODER,
    BootFailed,
    ChildOptions,
    FromChild,
    Log,
    chromium_home,
)
from shared.vocabulary import LogLevel

if TYPE_CHECKING:
    from playwright.async_api import Playwright

PR_SET_PDEATHSIG = 1
EX_BROWSER_GONE = 1  # Chromium itself died: a crash, the supervisor replaces the child
BOOT_TIMEOUT_MS = 30_000


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


# Chromium's feature switches are not merged: the last --disable-features (or
# --enable-features) on the command line wins, and ours come after Playwright's. So
# ours repeat Playwright's own lists (playwright-core chromiumSwitches.ts, 1.65) and add
# what a headless printer never uses but pays for in memory (measured with
# bench/memsplit.py; idle tree PSS 357 -> ~265 MB with MEMORY_ARGS and
# DRIVER_NODE_OPTIONS below, depending on what else shares Chromium's pages).
#   SpareRendererForSitePerProcess: a pre-started spare renderer (~15 MB); our page is
#     reused, so a fresh renderer is needed only after a crash or a rebuild.
#   WebUIOmniboxPopup, WebUIOmniboxAimPopup, WebUIOmniboxFullPopup: the new headless mode
#     is the full browser, whose first tab preloads the omnibox popup WebUI
#     (chrome://omnibox-popup.top-chrome/) in a renderer of its own (~50 MB).
#   NetworkServiceInProcess2: the network service in the browser process instead of a
#     utility process of its own (~20 MB). The network service is unsandboxed either way
#     (with --no-sandbox, or in the browser process), and the lockdown switches (host
#     resolver rules, dead proxy) apply unchanged.
_PLAYWRIGHT_DISABLED_FEATURES = (
    "AvoidUnnecessaryBeforeUnloadCheckSync", "DestroyProfileOnBrowserClose", "HttpsUpgrades",
    "HttpsFirstBalancedModeAutoEnable", "LensOverlay", "MediaRouter", "PaintHolding",
    "ThirdPartyStoragePartitioning", "AvoidCorsURLLoaderRestartOnRedirect", "TcpPortRandomizationWin",
    "OptimizationHints", "NetworkTimeServiceQuerying", "AimEnabled", "PreconnectToSearch",
)
_PLAYWRIGHT_ENABLED_FEATURES = ("CDPScreenshotNewSurface", "SkipListAccountsWithoutGaiaCookies")
DISABLED_FEATURES = (
    *_PLAYWRIGHT_DISABLED_FEATURES,
    "SpareRendererForSitePerProcess",
    "WebUIOmniboxPopup",
    "WebUIOmniboxAimPopup",
    "WebUIOmniboxFullPopup",
)
# Tried and not kept (no PSS gain in bench/memsplit.py): --in-process-gpu (its memory
# moves into the browser and a zygote; +12 MB USS), --no-zygote, --js-flags=--lite-mode,
# Translate/SafeBrowsing/DomainReliability and similar switches; node --jitless saves
# ~6 MB but makes the driver (on every job's path) interpret only.
ENABLED_FEATURES = (*_PLAYWRIGHT_ENABLED_FEATURES, "NetworkServiceInProcess2")
# --disable-software-rasterizer: no SwiftShader in the GPU process (~11 MB); printing
# rasterizes in the renderer (Skia) and screenshots use software compositing anyway
# (--disable-gpu). Switches that are not features, before the lockdown.
MEMORY_ARGS: tuple[str, ...] = ("--disable-software-rasterizer",)
# Tried for CPU and not kept: --disable-threaded-compositing (a renderer composites on its
# main thread; whole-tree CPU per light job, headless shell, round 6 at load 7-8: warm page
# 49.7 -> 33.8 ms, a context per job 205-230 -> 168-178 ms) makes the headless shell's
# Page.captureScreenshot fail ("Unable to capture screenshot"), so image jobs could not run.
# The Playwright driver (node): a 1 MB young generation instead of the default 16 MB
# semi-spaces (~11 MB less per idle child); the driver only relays CDP messages.
DRIVER_NODE_OPTIONS = "--max-semi-space-size=1"
# glibc malloc in the driver (its ~13 MB [heap] besides V8's): two arenas instead of one
# per thread (node runs ~10), and freed memory above 1 MiB given back rather than kept
# (~3 MB less USS per idle driver, bench/memsplit.py).
DRIVER_MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_TRIM_THRESHOLD_": "1048576"}


def browser_args(options: ChildOptions) -> list[str]:
    """The launch flags: the supervisor's, ours, plus the network lockdown (never optional)."""
    disabled = list(DISABLED_FEATURES)
    enabled = list(ENABLED_FEATURES)
    args: list[str] = []
    for arg in options.chromium_args:
        if arg.startswith(_LOCKDOWN_PREFIXES):
            continue
        # merge, since a second --disable-features/--enable-features would replace ours
        if arg.startswith("--disable-features="):
            disabled += [f for f in arg.split("=", 1)[1].split(",") if f and f not in disabled]
        elif arg.startswith("--enable-features="):
            enabled += [f for f in arg.split("=", 1)[1].split(",") if f and f not in enabled]
        else:
            args.append(arg)
    enabled = [f for f in enabled if f not in disabled]
    features = [f"--disable-features={','.join(disabled)}", f"--enable-features={','.join(enabled)}"]
    return [*args, *(a for a in MEMORY_ARGS if a not in args), *features, *LOCKDOWN_ARGS]


_LOCKDOWN_PREFIXES = ("--host-resolver-rules", "--proxy-server", "--proxy-bypass-list", "--proxy-pac-url")


@contextlib.contextmanager
def _driver_environment() -> Iterator[None]:
    """DRIVER_NODE_OPTIONS and DRIVER_MALLOC_ENV for the Playwright driver started inside
    (only the driver sees them: Chromium is launched with an environment of its own)."""
    saved = {name: os.environ.get(name) for name in ("NODE_OPTIONS", *DRIVER_MALLOC_ENV)}
    node_options = saved["NODE_OPTIONS"]
    os.environ["NODE_OPTIONS"] = f"{node_options} {DRIVER_NODE_OPTIONS}" if node_options else DRIVER_NODE_OPTIONS
    for name, value in DRIVER_MALLOC_ENV.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, before in saved.items():
            if before is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = before


def _start_playwright() -> Any:
    """The sync driver, with the child's driver settings (the bench's bare loop uses it)."""
    from playwright.sync_api import sync_playwright

    with _driver_environment():
        return sync_playwright().start()


async def _start_async_playwright() -> Playwright:
    from playwright.async_api import async_playwright

    with _driver_environment():
        return await async_playwright().start()


def launch_options(options: ChildOptions) -> dict[str, Any]:
    """Playwright's launch arguments for this child's Chromium."""
    launch: dict[str, Any] = {"args": browser_args(options), "headless": True, "timeout": BOOT_TIMEOUT_MS}
    if options.executable_path:
        launch["executable_path"] = options.executable_path
    # Playwright adds --no-sandbox itself unless told otherwise; the supervisor
    # left it out of the args when the host allows the sandbox (supervisor/pool/sandbox.py).
    launch["chromium_sandbox"] = "--no-sandbox" not in options.chromium_args
    home = chromium_home(options.scratch_dir, os.getpid())
    # The allowlist again, whoever started this child: Chromium sees no secret.
    env = child_environ(os.environ)
    launch["env"] = {**env, "XDG_CONFIG_HOME": f"{home}/config", "XDG_CACHE_HOME": f"{home}/cache"}
    return launch


class Channel:
    def __init__(self, conn: multiprocessing.connection.Connection, level: str) -> None:
        self.conn = conn
        self.min_level = LogLevel.number_of(level)

    def send(self, msg: FromChild) -> None:
        self.conn.send_bytes(FROM_CHILD_ENCODER.encode(msg))

    def log(self, level: str, message: str, job_id: str | None = None) -> None:
        if LogLevel.number_of(level) < self.min_level:
            return
        with contextlib.suppress(OSError, ValueError):
            self.send(Log(level=level, message=message, job_id=job_id))


def child_entry(conn: multiprocessing.connection.Connection, options_bytes: bytes) -> None:
    """The ``spawn`` target. Never returns: exits with one of the protocol's exit codes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_parent_death_signal()
    os.umask(0o077)  # outputs, canaries and Chromium's profile: private to this user
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
    try:
        options = msgspec.msgpack.decode(options_bytes, type=ChildOptions)
    except msgspec.DecodeError as exc:
        with contextlib.suppress(OSError):
            conn.send_bytes(FROM_CHILD_ENCODER.encode(BootFailed(message=f"bad ChildOptions: {exc}")))
        return EX_BOOT_FAILED
    from render_child.serve import serve

    return asyncio.run(serve(conn, options, Channel(conn, options.log_level)))
