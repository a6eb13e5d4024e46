"""`export-worker demo`: the README's main command.

Starts a worker in this process on the configured (by default embedded)
database, storage and mail, renders the sample menus as PDF and image, prints
a table of results and where the files and mails are, and stops.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.vocabulary import FINAL_STATUSES
from supervisor.queue.jobs import JobQueue
from supervisor.runner import Supervisor

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
DEMO_USER = "00000000-0000-4000-8000-00000000d3e0"


def demo_jobs() -> list[tuple[str, str, dict[str, Any]]]:
    def sample(name: str) -> dict[str, Any]:
        menu: dict[str, Any] = json.loads((SAMPLES / f"{name}.json").read_text(encoding="utf-8"))
        return menu

    bistro, noodles = sample("bistro"), sample("noodle_bar")
    world, jasmine = sample("world_kitchen"), sample("jasmine_rtl")  # every script; right to left
    return [
        ("bistro, classic", "pdf", {"source": {"kind": "menu", "menu": bistro, "template": "classic"}}),
        ("noodle bar, modern", "pdf", {"source": {"kind": "menu", "menu": noodles, "template": "modern"}}),
        ("bistro, modern", "image", {"source": {"kind": "menu", "menu": bistro, "template": "modern"},
                                     "image": {"format": "png", "width": 1000}}),
        ("noodle bar, classic", "image", {"source": {"kind": "menu", "menu": noodles, "template": "classic"},
                                          "image": {"format": "jpeg", "width": 900, "quality": 85}}),
        ("world kitchen, classic", "pdf", {"source": {"kind": "menu", "menu": world, "template": "classic"}}),
        ("jasmine (rtl), modern", "image", {"source": {"kind": "menu", "menu": jasmine, "template": "modern"},
                                            "image": {"format": "png", "width": 900}}),
    ]


Created = list[tuple[str, str, str]]  # job id, label, export type


async def run_demo(settings: Settings, conninfo: str, timeout: float) -> int:
    supervisor = Supervisor(settings, conninfo)
    runner = asyncio.create_task(supervisor.run())
    started = asyncio.create_task(supervisor.started.wait())
    await asyncio.wait([runner, started], return_when=asyncio.FIRST_COMPLETED)
    if runner.done():
        runner.result()  # re-raise what stopped it
        return 1
    created = await _enqueue(supervisor.parts.queue)
    results = await _final_rows(supervisor.parts.queue, [job_id for job_id, *_ in created], timeout)
    await _mails_written(settings, results)
    supervisor.request_stop()
    await runner
    ok = _print_table(settings, created, results)
    print()
    print(where_line(settings))
    return 0 if ok else 1


async def _enqueue(queue: JobQueue) -> Created:
    run_tag = uuid.uuid4().hex[:8]
    created: Created = []
    for label, export_type, payload in demo_jobs():
        new = await queue.create_job(
            user_id=DEMO_USER, export_type=export_type, payload=payload | {"email": "demo@example.com"},
            subscriber=True, idempotency_key=f"demo-{run_tag}-{label}", recipient="demo@example.com",
        )
        created.append((str(new["id"]), label, export_type))
    return created


async def _final_rows(queue: JobQueue, job_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Each job's row once it is final, until all are or `timeout` passes."""
    deadline = time.monotonic() + timeout
    results: dict[str, dict[str, Any]] = {}
    while len(results) < len(job_ids) and time.monotonic() < deadline:
        for job_id in job_ids:
            if job_id not in results:
                found = await queue.get_job(job_id)
                if found and found["status"] in FINAL_STATUSES:
                    results[job_id] = found
        await asyncio.sleep(0.1)
    return results


async def _mails_written(settings: Settings, results: dict[str, dict[str, Any]]) -> None:
    """Let the outbox write the .eml mails before we stop (up to 5 s; nothing to wait for with a mail server)."""
    if settings.mail.sendgrid_api_key or settings.mail.smtp_host:
        return
    mail_dir = Path(settings.data_dir).resolve() / "mail"
    expected = [mail_dir / f"{job_id}-completed.eml" for job_id, row in results.items() if row["status"] == "completed"]
    for _ in range(50):
        if all(path.exists() for path in expected):
            return
        await asyncio.sleep(0.1)


def _print_table(settings: Settings, created: Created, results: dict[str, dict[str, Any]]) -> bool:
    """One line per job; True when every job completed."""
    files = Path(settings.data_dir).resolve() / "files"
    print(f"\n{'job':36}  {'what':22}  {'type':5}  {'status':9}  {'render ms':>9}  {'bytes':>8}  file")
    ok = True
    for job_id, label, export_type in created:
        job: dict[str, Any] = results.get(job_id) or {}
        status = job.get("status") or "timeout"
        ok &= status == "completed"
        meta = job.get("metadata") or {}
        where = str(files / job["storage_path"]) if job.get("storage_path") else (job.get("error_message") or "")
        print(f"{job_id:36}  {label:22}  {export_type:5}  {status:9}  {meta.get('render_ms', ''):>9}  "
              f"{job.get('file_size_bytes') or '':>8}  {where}")
    return ok


def where_line(settings: Settings) -> str:
    """The demo's last line: where the files and mails are, and for how long the mails' links work."""
    data = Path(settings.data_dir).resolve()
    if settings.storage.supabase_url:
        files = f"files in Supabase Storage (bucket {settings.storage.storage_bucket})"
        links = "their links are signed Supabase URLs"
    else:
        base = settings.storage.public_base_url or f"http://localhost:{settings.worker.port}"
        files = f"files in {data / 'files'}"
        links = f"their links ({base}/files/...) work only while `export-worker serve` runs"
    if settings.mail.sendgrid_api_key:
        mails = "mails sent through SendGrid"
    elif settings.mail.smtp_host:
        mails = f"mails sent through {settings.mail.smtp_host}"
    else:
        mails = f"mails (.eml) in {data / 'mail'}"
    return f"Done: {files}, {mails}; {links}."
