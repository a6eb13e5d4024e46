"""The Playwright driver alone gets the child's memory settings (node and glibc malloc);
Chromium starts from its own environment (the allowlist)."""

from __future__ import annotations

import contextlib

import psutil
import pytest
from render_helpers import chromium_processes, requires_chromium, running_child

from render_child.main import DRIVER_MALLOC_ENV, DRIVER_NODE_OPTIONS

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]


def _environ(proc: psutil.Process) -> dict[str, str]:
    with open(f"/proc/{proc.pid}/environ", "rb") as fh:
        pairs = [item.decode(errors="replace").partition("=") for item in fh.read().split(b"\0") if item]
    return {name: value for name, _, value in pairs}


def test_only_the_driver_gets_the_memory_settings() -> None:
    with running_child() as child:
        tree = child.tree()
        drivers = []
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                if "node" in proc.name():
                    drivers.append(proc)
        assert len(drivers) == 1, [p.cmdline()[:1] for p in tree]
        driver = _environ(drivers[0])
        assert DRIVER_NODE_OPTIONS in driver["NODE_OPTIONS"].split()
        for name, value in DRIVER_MALLOC_ENV.items():
            assert driver[name] == value
        browsers = chromium_processes(tree)
        assert browsers
        for proc in browsers:
            env = _environ(proc)
            assert "NODE_OPTIONS" not in env
            assert not any(name.startswith("MALLOC_") for name in env), env
