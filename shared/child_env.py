"""The environment a render child and its Chromium start from: an allowlist, never the supervisor's.

The supervisor holds every secret (DATABASE_URL, the API keys, the JWT and link
secrets, the mail and storage keys); a render child feeds untrusted documents to
Chromium, so it must start without any of them. multiprocessing's ``spawn`` start
method exec()s the child with the parent's whole environment, and
``/proc/<pid>/environ`` shows what a process was exec'd with (unsetting a variable
later hides nothing), so the child must be exec'd clean.

How: :class:`CleanEnvProcess` is a spawn ``Process`` whose launch goes through
``env -i NAME=value ... python ...``: the interpreter is exec'd with the allowlisted
variables only, and everything below it (the Playwright driver, Chromium and its
helpers) inherits that. Not chosen: swapping ``os.environ`` around
``Process.start()`` races other threads (glibc's setenv/getenv are not thread-safe
and libpq reads PG* variables at every connect); scrubbing the supervisor's own
environment is a denylist, and breaks whatever re-reads it.

The spawn also starts no multiprocessing resource tracker: the children use no
named semaphores or shared memory, and a tracker is one more process holding the
supervisor's whole environment. And the supervisor makes itself non-dumpable, so
a process of the same uid (a compromised, unsandboxed Chromium) cannot read its
``/proc/<pid>/environ`` or memory either.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import shutil
import sys
from collections.abc import Mapping
from multiprocessing import popen_spawn_posix, reduction, spawn, util
from multiprocessing.context import SpawnProcess, set_spawning_popen
from typing import Any

# What a Python process, the Playwright driver and Chromium need: where programs and
# the home are, locale and time zone, fonts, certificates for the policy fetcher,
# Playwright's browser location. Nothing here carries a credential.
ALLOWED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "FONTCONFIG_FILE",
        "FONTCONFIG_PATH",
        "FONTCONFIG_SYSROOT",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "PLAYWRIGHT_BROWSERS_PATH",
        "CHROME_DEVEL_SANDBOX",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONIOENCODING",
        # coverage.py's subprocess measurement (the test suite's `make coverage`): a config, no credential
        "COVERAGE_PROCESS_CONFIG",
        "COVERAGE_PROCESS_START",
    }
)
ALLOWED_PREFIXES = ("LC_", "XDG_")

PR_SET_DUMPABLE = 4


def child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The allowlisted part of `environ`: what a child and its Chromium may see."""
    return {
        name: value
        for name, value in environ.items()
        if name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)
    }


def _env_program() -> str:
    path = shutil.which("env", path=os.defpath) or shutil.which("env")
    if path is None:
        raise RuntimeError("env(1) not found on PATH or in /usr/bin:/bin; render children cannot be started clean")
    return path


def protect_supervisor() -> None:
    """Make this process non-dumpable: same-uid processes can no longer read its environ or memory.

    Root (CAP_SYS_PTRACE) still can; a render child running as the same user cannot.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


class _CleanEnvPopen(popen_spawn_posix.Popen):
    """CPython 3.11-3.13's ``popen_spawn_posix.Popen._launch``, with three changes:
    the exec goes through ``env -i`` with :func:`child_environ`, the child does not
    re-run the parent's ``__main__``, and no resource tracker is started
    (``tracker_fd=None``; the child would start its own if it ever needed one, with
    its clean environment)."""

    _fds: list[int]  # set by the base class's __init__; typeshed does not declare it

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        # Nor does the child re-import the supervisor's __main__ (`export-worker`, so the CLI,
        # psycopg and the config): ~7 MB per child for nothing, as its target is a module
        # function (render_child.main.child_entry). A target defined in __main__ cannot be used.
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        fp = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, fp)
            reduction.dump(process_obj, fp)
        finally:
            set_spawning_popen(None)

        parent_r = child_w = child_r = parent_w = None
        try:
            parent_r, child_w = os.pipe()
            child_r, parent_w = os.pipe()
            cmd = spawn.get_command_line(tracker_fd=None, pipe_handle=child_r)
            pairs = [f"{name}={value}" for name, value in sorted(child_environ(os.environ).items())]
            argv = ["env", "-i", *pairs, os.fsdecode(spawn.get_executable()), *cmd[1:]]
            self._fds.extend([child_r, child_w])
            self.pid = util.spawnv_passfds(os.fsencode(_env_program()), argv, self._fds)
            self.sentinel = parent_r
            with open(parent_w, "wb", closefd=False) as f:
                f.write(fp.getbuffer())
        finally:
            fds_to_close = [fd for fd in (parent_r, parent_w) if fd is not None]
            self.finalizer = util.Finalize(self, util.close_fds, fds_to_close)  # type: ignore[attr-defined]
            for fd in (child_r, child_w):
                if fd is not None:
                    os.close(fd)


class CleanEnvProcess(SpawnProcess):
    """A ``spawn`` Process exec'd with :func:`child_environ` only; see the module docstring."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        protect_supervisor()
        return _CleanEnvPopen(process_obj)
