"""The sandbox decision, branch by branch, with the host's answers given (supervisor/pool/sandbox.py)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from supervisor.pool.sandbox import NO_SANDBOX, SandboxMode, chromium_args, probe

pytestmark = pytest.mark.timeout(300)

STATUS = "Name:\tpython\nSeccomp:\t0\nSeccomp_filters:\t0\n"
USERNS_OFF = {"/proc/sys/kernel/unprivileged_userns_clone": "0", "/proc/self/status": STATUS}
NO_USERNS = {"/proc/sys/user/max_user_namespaces": "0", "/proc/self/status": STATUS}
EPERM = "unshare(user, pid, net namespaces) failed: Operation not permitted"


def _host(files: dict[str, str]) -> Callable[[str], str | None]:
    return lambda path: files.get(path)


def test_root_never_gets_the_sandbox() -> None:
    found = probe(euid=lambda: 0, read=_host({"/proc/self/status": STATUS}), namespaces_refused=lambda: None)
    assert found.mode is SandboxMode.OFF and "root" in found.reason


@pytest.mark.parametrize(
    ("files", "refused", "words"),
    [
        (USERNS_OFF, None, "unprivileged_userns_clone"),
        (NO_USERNS, None, "max_user_namespaces"),
        ({"/proc/self/status": "Name:\tpython\n"}, None, "seccomp"),
        ({"/proc/self/status": STATUS}, EPERM, "not permitted"),
    ],
)
def test_each_missing_piece_turns_it_off(files: dict[str, str], refused: str | None, words: str) -> None:
    found = probe(euid=lambda: 1000, read=_host(files), namespaces_refused=lambda: refused)
    assert found.mode is SandboxMode.OFF
    assert words in found.reason


def test_a_plain_user_with_namespaces_and_seccomp_gets_it() -> None:
    files = {"/proc/sys/kernel/unprivileged_userns_clone": "1", "/proc/sys/user/max_user_namespaces": "15000",
             "/proc/self/status": STATUS}
    found = probe(euid=lambda: 1000, read=_host(files), namespaces_refused=lambda: None)
    assert found.mode is SandboxMode.ON


def test_the_real_namespace_probe_runs_here() -> None:
    """The kernel question itself, asked for real: root may always unshare these namespaces."""
    from supervisor.pool.sandbox import _namespaces_refused

    refused = _namespaces_refused()
    if os.geteuid() == 0:
        assert refused is None
    else:
        assert refused is None or refused.startswith("unshare("), refused


def test_no_sandbox_flag_follows_the_mode() -> None:
    args = ["--disable-gpu", NO_SANDBOX, "--no-first-run"]
    assert chromium_args(args, SandboxMode.ON) == ["--disable-gpu", "--no-first-run"]
    assert chromium_args(args, SandboxMode.OFF) == [NO_SANDBOX, "--disable-gpu", "--no-first-run"]
    assert chromium_args(["--disable-gpu"], SandboxMode.OFF) == [NO_SANDBOX, "--disable-gpu"]
