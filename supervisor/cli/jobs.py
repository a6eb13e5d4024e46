"""The job commands of `export-worker`: enqueue, status, list, cancel, retry."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from shared.config import Settings
from shared.payload import PayloadError, parse_payload, payload_to_builtins
from supervisor.cli.database import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_LIMIT,
    CliError,
    run_queue,
)
from supervisor.delivery.links import download_link, has_file

FINAL = ("completed", "failed", "cancelled")


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(msgspec.json.encode(row, enc_hook=str))  # type: ignore[no-any-return]


def _print_job(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(_jsonable(job), indent=2, sort_keys=True))
        return
    fields = ("id", "status", "export_type", "user_id", "priority", "attempts", "max_attempts", "worker_id",
              "created_at", "started_at", "completed_at", "error_category", "error_message",
              "storage_path", "file_url", "file_size_bytes", "webhook_url")
    for name in fields:
        value = job.get(name)
        if name == "attempts":
            value = f"{job['attempts']} of {job['max_attempts']}"
        if name == "max_attempts" or value is None:
            continue
        print(f"{name:>16}  {value}")
    for hook in job.get("webhooks") or []:
        # webhook_status, attempts and the last error of each event's delivery
        line = f"{hook['status']}, {hook['attempts']} attempt(s), id {hook['webhook_id']}"
        if hook.get("last_error"):
            line += f", last error: {hook['last_error']}"
        print(f"{hook['event']:>16}  {line}")


def _build_payload(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    try:
        if args.html:
            source: dict[str, Any] = {"kind": "html", "html": Path(args.html).read_text(encoding="utf-8")}
        elif args.menu:
            menu = json.loads(Path(args.menu).read_text(encoding="utf-8"))
            source = {"kind": "menu", "menu": menu, "template": args.template}
        else:
            source = {"kind": "url", "url": args.url}
    except OSError as exc:
        raise CliError(f"cannot read {exc.filename}: {exc.strerror}", EXIT_BAD_INPUT) from None
    except UnicodeDecodeError as exc:
        name = args.html or args.menu
        raise CliError(f"{name} is not UTF-8 text (bad byte at offset {exc.start})", EXIT_BAD_INPUT) from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{args.menu} is not JSON: {exc}", EXIT_BAD_INPUT) from None
    data: dict[str, Any] = {"source": source}
    if args.options:
        try:
            options = json.loads(args.options)
        except json.JSONDecodeError as exc:
            raise CliError(f"--options is not JSON: {exc}", EXIT_BAD_INPUT) from None
        if not isinstance(options, dict):
            raise CliError("--options must be a JSON object", EXIT_BAD_INPUT)
        data.update(options)
    if args.email:
        data["email"] = args.email
    try:
        # The same checks as the HTTP API: a url source must be allowed (ALLOWED_URL_HOSTS) at creation.
        payload = parse_payload(data, args.export_type, max_input_bytes=settings.render.max_input_bytes,
                                allowed_url_hosts=settings.render.allowed_url_hosts)
    except PayloadError as exc:
        raise CliError(f"invalid request: {exc}", EXIT_BAD_INPUT) from None
    return payload_to_builtins(payload)


async def _create(queue: Any, args: argparse.Namespace, payload: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The new job's row; a refusal (unsafe webhook, limit, invalid job) as a CliError in the flags' words."""
    from supervisor.delivery.webhook_targets import refuse_unsafe
    from supervisor.queue.store import InvalidJob, LimitExceeded

    if args.webhook is not None:
        refused = await refuse_unsafe(args.webhook, settings)
        if refused is not None:
            raise CliError(f"invalid request: webhook_url (--webhook) is refused: {refused}", EXIT_BAD_INPUT)
    try:
        job: dict[str, Any] = await queue.create_job(
            user_id=args.user_id,
            export_type=args.export_type,
            payload=payload,
            menu_id=args.menu_id,
            subscriber=args.subscriber,
            idempotency_key=args.idempotency_key,
            recipient=args.email,
            webhook_url=args.webhook,
        )
    except LimitExceeded as exc:
        raise CliError(f"refused: {exc.message} (retry after {exc.retry_after_seconds}s)", EXIT_LIMIT) from None
    except InvalidJob as exc:
        raise CliError(f"invalid request: {exc.message}", EXIT_BAD_INPUT) from None
    return job


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    payload = _build_payload(args, settings)
    waiting: dict[str, str] = {}  # the job --wait is following, and its last status

    async def work(queue: Any) -> int:
        job = await _create(queue, args, payload, settings)
        job_id = str(job["id"])
        if args.json:
            if not args.wait:  # with --wait, the one JSON document is the final job
                print(json.dumps(_jsonable(job), indent=2, sort_keys=True))
        else:
            print(job_id, flush=True)
        if not args.wait:
            return 0
        waiting.update(id=job_id, status=str(job["status"]))
        final = await _signed_on_read(await _wait_for(queue, job_id, args.timeout, waiting), settings)
        if args.json:
            print(json.dumps(_jsonable(final), indent=2, sort_keys=True))
        else:
            _describe_outcome(final, settings)
        return 0 if final["status"] == "completed" else EXIT_JOB_FAILED

    try:
        result: int = run_queue(settings, work)
    except KeyboardInterrupt:
        if not waiting:
            raise
        # Ctrl-C stops the waiting, not the job: say so, and how to follow or stop it.
        job_id = waiting["id"]
        print(f"\ninterrupted: stopped waiting; job {job_id} is still {waiting['status']} and stays queued "
              f"(follow it: export-worker status {job_id}; stop it: export-worker cancel {job_id})",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    return result


async def _wait_for(queue: Any, job_id: str, timeout: float, seen: dict[str, str]) -> dict[str, Any]:
    """Show progress on stderr until the job ends (polls; the job row is the truth)."""
    started = time.monotonic()
    last = None
    tty = sys.stderr.isatty()
    spinner = "|/-\\"
    tick = 0
    while True:
        job = await queue.get_job(job_id)
        if job is None:
            raise CliError(f"job {job_id} disappeared")
        seen["status"] = str(job["status"])
        state = (job["status"], job["attempts"])
        elapsed = time.monotonic() - started
        if state != last or tty:
            text = f"{job['status']} (attempt {job['attempts']} of {job['max_attempts']}) {elapsed:5.1f}s"
            if tty:
                print(f"\r{spinner[tick % 4]} {text}   ", end="", file=sys.stderr, flush=True)
            else:
                print(text, file=sys.stderr, flush=True)
            last = state
        if job["status"] in FINAL:
            if tty:
                print(file=sys.stderr)
            return dict(job)
        if elapsed > timeout:
            raise CliError(f"job {job_id} still {job['status']} after {timeout:.0f}s")
        tick += 1
        await asyncio.sleep(0.2)


async def _signed_on_read(job: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The job with ``file_url`` signed now: the one stored at completion dies after
    SIGNED_URL_TTL_SECONDS (7 days) while the file lives 30."""
    if not has_file(job):
        return job

    def sign() -> str:
        from supervisor.delivery.storage import SupabaseStorage, build_storage  # only when a link is shown

        storage = build_storage(settings, Path(settings.data_dir).resolve())
        try:
            return download_link(storage, str(job["storage_path"]), settings.storage.signed_url_ttl_seconds)
        finally:
            if isinstance(storage, SupabaseStorage):
                storage.close()  # its HTTP client

    try:
        return job | {"file_url": await asyncio.to_thread(sign)}
    except Exception as exc:
        print(f"warning: could not sign a download link now: {exc}", file=sys.stderr)
        return job | {"file_url": None}


def _describe_outcome(job: dict[str, Any], settings: Settings) -> None:
    if job["status"] == "completed":
        where = _local_file(job, settings)
        print(f"completed: {job['file_size_bytes']} bytes", file=sys.stderr)
        print(f"  file: {where or job['storage_path']}", file=sys.stderr)
        print(f"  link: {job['file_url']}", file=sys.stderr)
    else:
        print(f"{job['status']}: [{job['error_category']}] {job['error_message']}", file=sys.stderr)


def _local_file(job: dict[str, Any], settings: Settings) -> str | None:
    if settings.storage.supabase_url or not job.get("storage_path"):
        return None
    return str(Path(settings.data_dir).resolve() / "files" / job["storage_path"])


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    async def work(queue: Any) -> int:
        job = await queue.get_job(args.job_id)
        if job is None:
            raise CliError(f"no job {args.job_id}")
        _print_job(await _signed_on_read(job, settings), args.json)
        return 0

    result: int = run_queue(settings, work)
    return result


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(queue: Any) -> int:
        rows = await queue.list_jobs(status=args.status, user_id=args.user_id, limit=args.limit)
        if args.json:
            print(json.dumps([_jsonable(r) for r in rows], indent=2))
            return 0
        print(f"{'id':36}  {'status':10}  {'type':5}  {'pri':>3}  {'att':>3}  created")
        for r in rows:
            print(f"{r['id']!s:36}  {r['status']:10}  {r['export_type']:5}  {r['priority']:>3}  "
                  f"{r['attempts']:>3}  {r['created_at']:%Y-%m-%d %H:%M:%S}")
        return 0

    result: int = run_queue(settings, work)
    return result


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    async def work(queue: Any) -> int:
        outcome = await queue.cancel(args.job_id)
        if outcome is None:
            raise CliError(f"job {args.job_id} does not exist or has already ended")
        print("cancelled" if outcome == "cancelled" else "cancel requested; the worker stops the render")
        return 0

    result: int = run_queue(settings, work)
    return result


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    async def work(queue: Any) -> int:
        if not await queue.retry_failed(args.job_id):
            raise CliError(f"job {args.job_id} does not exist or is not failed or cancelled")
        print("pending")
        return 0

    result: int = run_queue(settings, work)
    return result
