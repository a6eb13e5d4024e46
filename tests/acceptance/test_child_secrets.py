"""No secret below the supervisor: every process under `serve` starts from the allowlisted environment.

`serve` runs with all eight secret settings set to distinctive values; the test reads
/proc/<pid>/environ and /proc/<pid>/cmdline of every process in every render child's
tree (and of Chromium's crash handler, which re-parents itself out of the tree) and
finds none of them, while the supervisor's own environment, as a control, holds all.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
from serving import free_port, requires_chromium, running_serve, serve_env

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]

SECRETS = {
    "SUPABASE_JWT_SECRET": "jwt-secret-7f3a91d2",
    "EXPORT_API_KEYS": "apikey-51c2e8aa,apikey-9d04b7cc",
    "LINK_SECRET": "link-secret-c0ffee42",
    "SMTP_PASSWORD": "smtp-pass-2b7e90ff",
    "SUPABASE_SERVICE_ROLE_KEY": "service-role-4a6c1d33",
    "SENDGRID_API_KEY": "SG.sendgrid-6e2f0a11",
    "WEBHOOK_SECRET": "whsec_d2ViaG9vay1zZWNyZXQtM2Y4YTAwZDE=",  # base64 of webhook-secret-3f8a00d1
}
DB_PASSWORD = "dbpass-8e1f6d55"  # trust authentication ignores it; it only has to be in DATABASE_URL


def _needles(db_url: str) -> dict[str, str]:
    """Every value to look for, the database URL and each API key included."""
    needles = {name: value for name, value in SECRETS.items() if name != "EXPORT_API_KEYS"}
    for i, key in enumerate(SECRETS["EXPORT_API_KEYS"].split(",")):
        needles[f"EXPORT_API_KEYS[{i}]"] = key
    needles["DATABASE_URL"] = db_url
    needles["DATABASE_URL password"] = DB_PASSWORD
    return needles


def _with_password(db_url: str) -> str:
    scheme, _, rest = db_url.partition("://")
    userinfo, _, host = rest.partition("@")
    return f"{scheme}://{userinfo}:{DB_PASSWORD}@{host}"


def _read(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read()


def _found(pid: int, needles: dict[str, str]) -> list[str]:
    blob = _read(pid, "environ") + b"\0" + _read(pid, "cmdline")
    return [name for name, value in needles.items() if value.encode() in blob]


def _chromium_helpers_outside(data_dir: Path) -> list[psutil.Process]:
    """Chromium's crash handler double-forks to PID 1; its command line names the child's home."""
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline:
            out.append(proc)
    return out


def test_no_secret_in_any_process_below_the_supervisor(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    url = _with_password(db_url)
    env = serve_env(
        url,
        data_dir,
        port,
        MAX_CONCURRENT_RENDERS="2",
        SLOTS_PER_CHILD="1",  # two children, each looked into
        SENDGRID_BASE_URL="http://127.0.0.1:9",  # never called: no job sends mail here
        **SECRETS,
    )
    needles = _needles(url)
    with running_serve(env, tmp_path / "serve.log") as proc:
        supervisor = psutil.Process(proc.pid)
        # Healthy means both children passed their canary: each Chromium has its renderer.
        deadline = time.monotonic() + 30
        while True:
            children = [c for c in supervisor.children() if "spawn_main" in " ".join(c.cmdline())]
            if len(children) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(children) == 2, [c.cmdline() for c in supervisor.children()]
        below = {p.pid: p for p in supervisor.children(recursive=True)}
        below.update({p.pid: p for p in _chromium_helpers_outside(data_dir)})
        below.pop(proc.pid, None)
        findings: dict[str, list[str]] = {}
        for pid, p in sorted(below.items()):
            try:
                label = f"{pid} {p.name()} {' '.join(p.cmdline()[1:3])[:60]}"
                findings[label] = _found(pid, needles)
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                continue
        control = _found(proc.pid, needles)

    print(f"\nsecret values found in the supervisor (control): {len(control)} of {len(needles)}")
    for label, found in findings.items():
        print(f"  {label}: {len(found)} {found}")
    assert sorted(control) == sorted(needles), "the control must see every secret, or the search is broken"
    kinds = " ".join(findings)
    assert "chromium" in kinds and "node" in kinds, f"the trees were not all read: {list(findings)}"
    assert len(findings) >= 8, list(findings)
    leaked = {label: found for label, found in findings.items() if found}
    assert leaked == {}, leaked
