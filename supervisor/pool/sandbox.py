"""Chromium's own sandbox, used wherever the host allows it; detected once at boot.

Chromium's Linux sandbox (the one the Debian package and Playwright's build use;
neither ships the setuid helper) puts each renderer in new user, PID and network
namespaces and under a seccomp-BPF filter. It cannot run:

- as root: Chromium refuses ("Running as root without --no-sandbox is not
  supported"), so a root worker always runs with ``--no-sandbox``;
- where unprivileged user namespaces are off (``kernel.unprivileged_userns_clone
  = 0`` on Debian kernels, ``user.max_user_namespaces = 0``, an AppArmor or
  container seccomp policy that refuses ``unshare(CLONE_NEWUSER)``);
- without seccomp in the kernel.

The probe asks the kernel exactly what Chromium will ask: a throwaway process
unshares user + PID + network namespaces as this uid. The mode is logged once, shown
in /health (the puppeteer check's details) and in /metrics
(``export_chromium_sandbox``).
"""

from __future__ import annotations

import enum
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.child_env import child_environ

log = logging.getLogger(__name__)

NO_SANDBOX = "--no-sandbox"
PROBE_TIMEOUT_SECONDS = 10.0
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# Run as `python -c`: unshare() changes the caller, so never in the supervisor itself.
_NAMESPACE_PROBE = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare({CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET}) != 0:
    sys.stdout.write(os.strerror(ctypes.get_errno()))
    sys.exit(1)
"""


class SandboxMode(enum.StrEnum):
    ON = "on"  # Chromium's namespace + seccomp-BPF sandbox
    OFF = "off"  # --no-sandbox


@dataclass(frozen=True)
class SandboxProbe:
    mode: SandboxMode
    reason: str


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _namespaces_refused() -> str | None:
    """Why this uid cannot unshare user + PID + network namespaces, or None when it can."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _NAMESPACE_PROBE],
            env=child_environ(os.environ),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the namespace probe did not run: {exc}"
    if done.returncode == 0:
        return None
    return f"unshare(user, pid, net namespaces) failed: {done.stdout.strip() or f'exit {done.returncode}'}"


def probe(
    euid: Callable[[], int] = os.geteuid,
    read: Callable[[str], str | None] = _read,
    namespaces_refused: Callable[[], str | None] = _namespaces_refused,
) -> SandboxProbe:
    """What this host allows this process. The callables are the host, for tests."""
    uid = euid()
    if uid == 0:
        return SandboxProbe(SandboxMode.OFF, "running as root: Chromium refuses its sandbox for root")
    if read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return SandboxProbe(SandboxMode.OFF, "kernel.unprivileged_userns_clone is 0: no user namespaces")
    if read("/proc/sys/user/max_user_namespaces") == "0":
        return SandboxProbe(SandboxMode.OFF, "user.max_user_namespaces is 0: no user namespaces")
    status = read("/proc/self/status") or ""
    if "Seccomp:" not in status:
        return SandboxProbe(SandboxMode.OFF, "the kernel has no seccomp: Chromium's syscall filter cannot run")
    refused = namespaces_refused()
    if refused is not None:
        return SandboxProbe(SandboxMode.OFF, refused)
    return SandboxProbe(SandboxMode.ON, f"uid {uid} may create user, PID and network namespaces; seccomp available")


_detected: SandboxProbe | None = None


def detect() -> SandboxProbe:
    """Probe once per process and log the mode once."""
    global _detected
    if _detected is None:
        _detected = probe()
        extra = {"chromium_sandbox": _detected.mode.value, "reason": _detected.reason}
        if _detected.mode is SandboxMode.ON:
            log.info("Chromium runs with its own sandbox", extra=extra)
        else:
            log.warning("Chromium runs without its sandbox (--no-sandbox)", extra=extra)
    return _detected


def chromium_args(args: list[str], mode: SandboxMode) -> list[str]:
    """`args` with --no-sandbox removed when the sandbox can run, present when it cannot."""
    rest = [a for a in args if a != NO_SANDBOX]
    return rest if mode is SandboxMode.ON else [NO_SANDBOX, *rest]


def gauge_value() -> float:
    """1 when Chromium runs sandboxed, 0 when not (or before the pool started)."""
    return 1.0 if _detected is not None and _detected.mode is SandboxMode.ON else 0.0
