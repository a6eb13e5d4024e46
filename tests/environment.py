"""What the suite needs from the machine, checked once before any test runs (tests/conftest.py).

A newcomer whose set-up is broken sees, first thing, which need is missing and the
command that fixes it, instead of hundreds of failures. PostgreSQL, Chromium and the
Noto fonts are required: without them most of the suite cannot mean anything, so the
run stops. promtool and pgbouncer are optional on a workstation (the tests that need
them skip, naming the fix); under CI (CI set in the environment, as .ci/run does)
every need is required and any skipped test fails the run, so nothing is skipped
silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import pytest

from tests.chromium import chromium_binary

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
CHROMIUM = os.environ.get("PUPPETEER_EXECUTABLE_PATH", "/usr/bin/chromium")
# The families the menus' scripts need (README, Fonts); image-check.sh checks the same ones.
FONT_FAMILIES = ("Noto Serif", "Noto Sans Arabic", "Noto Sans CJK SC", "Noto Color Emoji")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _postgres() -> str | None:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=5, autocommit=True) as conn:
            row = conn.execute("SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone()
    except psycopg.Error as exc:
        return f"cannot connect to {ADMIN_URL}: {str(exc).strip().splitlines()[0]}"
    if not (row and row[0]):
        return f"the role of {ADMIN_URL} may not create databases (each test creates its own)"
    return None


def _chromium() -> str | None:
    binary = chromium_binary(CHROMIUM)
    if binary is None:
        return f"no Chromium at PUPPETEER_EXECUTABLE_PATH={CHROMIUM!r}"
    try:
        done = subprocess.run([str(binary), "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom",
                               "data:text/html,<p>ok</p>"], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{binary} does not start: {exc}"
    if "<p>ok</p>" not in done.stdout:
        return f"{binary} does not render a page (exit {done.returncode}): {done.stderr.strip()[-300:]}"
    return None


def _fonts() -> str | None:
    if shutil.which("fc-list") is None:
        return "fontconfig (fc-list) is missing"
    families = subprocess.run(["fc-list", ":", "family"], capture_output=True, text=True, check=False).stdout
    missing = [f for f in FONT_FAMILIES if f not in families]
    return f"missing font families: {', '.join(missing)}" if missing else None


def _tool(name: str) -> Callable[[], str | None]:
    return lambda: None if shutil.which(name) else f"`{name}` is not on PATH"


@dataclass(frozen=True)
class Need:
    name: str
    check: Callable[[], str | None]  # None when met, else what is wrong
    fix: str
    required: bool  # on a workstation; under CI every need is required


NEEDS = (
    Need("PostgreSQL", _postgres,
         "start it: pg_ctlcluster 15 main start (Debian; `ls /etc/postgresql` for the version), "
         "or point TEST_DATABASE_URL at a server with trust auth and CREATEDB", required=True),
    Need("Chromium", _chromium, "make chromium", required=True),
    Need("Noto fonts", _fonts, "apt-get install fonts-noto-core fonts-noto-cjk fonts-noto-color-emoji fontconfig "
         "(make chromium does it)", required=True),
    Need("promtool", _tool("promtool"), "apt-get install prometheus", required=False),
    Need("pgbouncer", _tool("pgbouncer"), "apt-get install pgbouncer", required=False),
)

def check(config: pytest.Config) -> None:
    """Run every check; stop the session before any test if a required need is missing."""
    required, optional = [], []
    for need in NEEDS:
        problem = need.check()
        if problem is None:
            continue
        line = f"  {need.name}: {problem}\n      fix: {need.fix}"
        (required if need.required or in_ci() else optional).append(line)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if optional and reporter is not None:
        reporter.write_line("Optional tools missing (the tests that need them are skipped):\n" + "\n".join(optional),
                            yellow=True)
    if required:
        where = " (CI: every tool is required)" if in_ci() else ""
        pytest.exit("the test environment is not ready" + where + ":\n" + "\n".join(required), returncode=4)


def requires(name: str) -> pytest.MarkDecorator:
    """Skip with the fix when optional need ``name`` is missing (never under CI: check() stopped the run)."""
    need = next(n for n in NEEDS if n.name == name)
    problem = need.check()
    return pytest.mark.skipif(problem is not None, reason=f"{name} missing ({problem}); fix: {need.fix}")


def fail_on_skips(session: pytest.Session) -> None:
    """Under CI a skipped test is a failure: a missing tool must not turn tests off silently."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if in_ci() and skipped and reporter is not None:
        lines = [f"  {r.nodeid}: {r.longrepr[2] if isinstance(r.longrepr, tuple) else r.longrepr}" for r in skipped]
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; under CI every test must run:\n" + "\n".join(lines),
                            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
