"""`export-worker`: serve, migrate, enqueue, status, and what operators need.

Exit codes: 0 ok; 1 an operation failed (job not found, database error); 2 bad
configuration or bad input; 3 refused by a per-user limit; 4 a waited-for job
ended failed or cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from shared.config import ConfigError, Settings, load_settings, masked, render_config_toml, render_reference_markdown
from shared.logs import setup_logging
from shared.payload import PayloadError, parse_payload, payload_to_builtins
from supervisor.database import mask_password, one_line

log = logging.getLogger("export_worker.cli")

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_LIMIT, EXIT_JOB_FAILED = 1, 2, 3, 4
FINAL = ("completed", "failed", "cancelled")
SAMPLES = Path(__file__).resolve().parent.parent / "shared" / "samples"


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        settings = load_settings(Path(args.config) if args.config else None)
    except ConfigError as exc:
        print(mask_password(str(exc), os.environ.get("DATABASE_URL")), file=sys.stderr)
        return EXIT_BAD_INPUT
    # `serve` logs to stdout (the seed's JSON logs); other commands keep stdout for results.
    serving = args.command == "serve"
    if serving:
        from supervisor.runner import default_worker_id

        setup_logging(settings.worker.log_level, settings.worker.worker_id or default_worker_id(), sys.stdout)
    else:
        setup_logging("debug" if args.verbose else "warn", settings.worker.worker_id or "cli", sys.stderr)
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        return handler(args, settings)
    except CliError as exc:
        print(f"error: {mask_password(str(exc), settings.database.database_url)}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if getattr(args, "verbose", False):
            raise
        # One line, never a traceback that could carry a connection string (--verbose shows it).
        masked = mask_password(one_line(exc), settings.database.database_url)
        print(f"error: {type(exc).__name__}: {masked}", file=sys.stderr)
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export-worker",
        description="PDF and image export worker: a Postgres queue, a supervisor, a pool of Chromium children.",
    )
    parser.add_argument("--config", help="config file (default: ./config.toml, or EXPORT_WORKER_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug lines to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="run the worker: claim and render jobs, serve /health and /metrics")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("migrate", help="apply database migrations (safe to run concurrently)")
    p.set_defaults(handler=cmd_migrate)

    p = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--toml", action="store_true", help="print config.toml with every default")
    group.add_argument("--markdown", action="store_true", help="print the configuration reference table")
    p.set_defaults(handler=cmd_config)

    p = sub.add_parser("enqueue", help="create a job through create_export_job")
    p.add_argument("--user-id", required=True, help="the owner's UUID")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--html", metavar="FILE", help="an HTML file to render")
    source.add_argument("--menu", metavar="FILE", help="a menu document (JSON) to render with a template")
    source.add_argument("--url", help="a URL on the allowlist (ALLOWED_URL_HOSTS)")
    p.add_argument("--type", dest="export_type", choices=("pdf", "image"), default="pdf")
    p.add_argument("--template", choices=("classic", "modern"), default="classic", help="menu template")
    p.add_argument("--options", metavar="JSON", help='render options, e.g. \'{"pdf": {"landscape": true}}\'')
    p.add_argument("--subscriber", action="store_true", help="subscriber tier (priority and limits)")
    p.add_argument("--idempotency-key", help="a repeat with the same key returns the same job")
    p.add_argument("--email", help="where the completion or failure mail goes")
    p.add_argument("--menu-id", help="the menu's UUID, when the source is a menu")
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    p.add_argument("--wait", action="store_true", help="show progress until the job ends")
    p.add_argument("--timeout", type=float, default=600, help="seconds --wait waits at most")
    p.set_defaults(handler=cmd_enqueue)

    p = sub.add_parser("status", help="show a job")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("list", help="list jobs")
    p.add_argument("--status", choices=("pending", "processing", "completed", "failed", "cancelled"))
    p.add_argument("--user-id")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("cancel", help="cancel a pending job, or ask the worker to stop a running one")
    p.add_argument("job_id")
    p.set_defaults(handler=cmd_cancel)

    p = sub.add_parser("retry", help="send a failed or cancelled job back to pending with fresh attempts")
    p.add_argument("job_id")
    p.set_defaults(handler=cmd_retry)

    p = sub.add_parser("rescue", help="return stale processing jobs now (what every worker does on its own)")
    p.set_defaults(handler=cmd_rescue)

    p = sub.add_parser("cleanup", help="apply retention now: delete old jobs with their files")
    p.set_defaults(handler=cmd_cleanup)

    p = sub.add_parser("demo", help="render the sample menus on the embedded defaults and show the results")
    p.add_argument("--timeout", type=float, default=180)
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("bench", help="run the benchmarks and print a table (see BENCHMARKS.md)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check the harness works")
    p.add_argument("--jobs", type=int, default=200, help="jobs per end-to-end case")
    p.add_argument("--out", default="bench/results/latest.json")
    p.set_defaults(handler=cmd_bench)
    return parser


# ---- helpers ----------------------------------------------------------------------


def _with_database(settings: Settings, work: Callable[[str], Any]) -> Any:
    from supervisor.database import DatabaseUnavailable, database_url

    try:
        with database_url(settings) as url:
            return work(url)
    except DatabaseUnavailable as exc:
        raise CliError(str(exc)) from None


def _run_queue(settings: Settings, work: Callable[[Any], Any]) -> Any:
    """Open a queue on the configured (or embedded) database and run `work(queue)`."""
    import psycopg
    from psycopg_pool import PoolTimeout

    from supervisor.runner import open_queue

    async def go(url: str) -> Any:
        try:
            # One direct attempt first: a refused connection is one clear line at
            # once, not a pool retrying in the background.
            probe = await psycopg.AsyncConnection.connect(
                url, connect_timeout=settings.database.connect_timeout_seconds
            )
            await probe.close()
            pool, queue = await open_queue(settings, url)
        except (psycopg.Error, PoolTimeout, OSError, TimeoutError) as exc:
            raise CliError(f"database unavailable: {one_line(exc)}") from None
        try:
            return await work(queue)
        finally:
            await pool.close()

    return _with_database(settings, lambda url: asyncio.run(go(url)))


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(msgspec.json.encode(row, enc_hook=str))  # type: ignore[no-any-return]


def _print_job(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(_jsonable(job), indent=2, sort_keys=True))
        return
    fields = ("id", "status", "export_type", "user_id", "priority", "attempts", "max_attempts", "worker_id",
              "created_at", "started_at", "completed_at", "error_category", "error_message",
              "storage_path", "file_url", "file_size_bytes")
    for name in fields:
        value = job.get(name)
        if name == "attempts":
            value = f"{job['attempts']} of {job['max_attempts']}"
        if name == "max_attempts" or value is None:
            continue
        print(f"{name:>16}  {value}")


# ---- commands -----------------------------------------------------------------------


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    if args.toml:
        print(render_config_toml(), end="")
    elif args.markdown:
        print(render_reference_markdown())
    else:
        print(json.dumps(masked(settings), indent=2))
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from supervisor.migrate import migrate, sync_queue_settings

    def work(url: str) -> list[str]:
        import psycopg

        try:
            applied = migrate(url)
            sync_queue_settings(url, settings)
        except psycopg.Error as exc:
            raise CliError(f"migration failed: {one_line(exc)}") from None
        return applied

    applied = _with_database(settings, work)
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")
    return 0


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
        payload = parse_payload(data, args.export_type, max_input_bytes=settings.render.max_input_bytes)
    except PayloadError as exc:
        raise CliError(f"invalid request: {exc}", EXIT_BAD_INPUT) from None
    return payload_to_builtins(payload)


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    from supervisor.queue import InvalidJob, LimitExceeded

    payload = _build_payload(args, settings)

    async def work(queue: Any) -> int:
        try:
            job = await queue.create_job(
                user_id=args.user_id,
                export_type=args.export_type,
                payload=payload,
                menu_id=args.menu_id,
                subscriber=args.subscriber,
                idempotency_key=args.idempotency_key,
                email=args.email,
            )
        except LimitExceeded as exc:
            raise CliError(f"refused: {exc.message} (retry after {exc.retry_after_seconds}s)", EXIT_LIMIT) from None
        except InvalidJob as exc:
            raise CliError(f"invalid request: {exc.message}", EXIT_BAD_INPUT) from None
        job_id = str(job["id"])
        if args.json:
            if not args.wait:  # with --wait, the one JSON document is the final job
                print(json.dumps(_jsonable(job), indent=2, sort_keys=True))
        else:
            print(job_id, flush=True)
        if not args.wait:
            return 0
        final = await _wait_for(queue, job_id, args.timeout)
        if args.json:
            print(json.dumps(_jsonable(final), indent=2, sort_keys=True))
        else:
            _describe_outcome(final, settings)
        return 0 if final["status"] == "completed" else EXIT_JOB_FAILED

    result: int = _run_queue(settings, work)
    return result


async def _wait_for(queue: Any, job_id: str, timeout: float) -> dict[str, Any]:
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
    from supervisor.queue import InvalidJob

    async def work(queue: Any) -> int:
        try:
            job = await queue.get_job(args.job_id)
        except InvalidJob as exc:
            raise CliError(exc.message, EXIT_BAD_INPUT) from None
        if job is None:
            raise CliError(f"no job {args.job_id}")
        _print_job(job, args.json)
        return 0

    result: int = _run_queue(settings, work)
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

    result: int = _run_queue(settings, work)
    return result


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    async def work(queue: Any) -> int:
        outcome = await queue.cancel(args.job_id)
        if outcome is None:
            raise CliError(f"job {args.job_id} does not exist or has already ended")
        print("cancelled" if outcome == "cancelled" else "cancel requested; the worker stops the render")
        return 0

    result: int = _run_queue(settings, work)
    return result


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    async def work(queue: Any) -> int:
        if not await queue.retry_failed(args.job_id):
            raise CliError(f"job {args.job_id} does not exist or is not failed or cancelled")
        print("pending")
        return 0

    result: int = _run_queue(settings, work)
    return result


def cmd_rescue(args: argparse.Namespace, settings: Settings) -> int:
    async def work(queue: Any) -> int:
        rescued = await queue.rescue_stale(settings.retry.stale_after_seconds)
        for job_id, status in rescued:
            print(f"{job_id}  -> {status}")
        print(f"{len(rescued)} stale job(s) rescued", file=sys.stderr)
        return 0

    result: int = _run_queue(settings, work)
    return result


def cmd_cleanup(args: argparse.Namespace, settings: Settings) -> int:
    from supervisor.retention import run_retention
    from supervisor.storage import build_storage
    from supervisor.sweep import sweep_temp

    data_dir = Path(settings.data_dir).resolve()
    storage = build_storage(settings, data_dir)

    async def work(queue: Any) -> int:
        result = await run_retention(queue.pool, storage, settings.retention)
        if result.skipped:
            print("another worker is running retention right now; nothing done")
        else:
            print(f"deleted {result.jobs_deleted} job(s), {result.files_deleted} file(s) "
                  f"and {result.orphans_deleted} orphaned object(s)")
        swept = sweep_temp(data_dir)
        print(f"removed {swept} temp file(s) of dead workers")
        return 0

    code: int = _run_queue(settings, work)
    return code


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from shared.config import accepted_but_inactive
    from supervisor.runner import Supervisor

    for note in accepted_but_inactive(settings):
        log.warning(note)
    if settings.worker.node_env != "production":
        log.info("NODE_ENV is not 'production'; it has no other effect in this worker",
                 extra={"node_env": settings.worker.node_env})

    def work(url: str) -> int:
        import psycopg
        from psycopg_pool import PoolTimeout

        supervisor = Supervisor(settings, url)
        try:
            code: int = asyncio.run(supervisor.run())
        except (psycopg.OperationalError, PoolTimeout) as exc:
            # Before anything was claimed: say why in one line and let the platform restart us.
            first_line = one_line(exc)
            log.error("cannot start: database unavailable", extra={"error": mask_password(first_line, url)})
            raise CliError(f"database unavailable: {first_line}") from None
        except OSError as exc:
            log.error("cannot start: cannot listen", extra={"port": settings.worker.port, "error": str(exc)})
            raise CliError(f"cannot listen on PORT {settings.worker.port}: {exc.strerror or exc}") from None
        return code

    result: int = _with_database(settings, work)
    return result


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from supervisor.demo import run_demo

    result: int = _with_database(settings, lambda url: asyncio.run(run_demo(settings, url, args.timeout)))
    return result


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    root = Path(__file__).resolve().parent.parent
    if (root / "bench" / "run.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))  # the harness lives in the source checkout, not the wheel
    try:
        from bench.run import run_bench  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise CliError(f"the benchmark harness needs a source checkout (bench/): {exc}") from None
    result: int = run_bench(settings, smoke=args.smoke, jobs=args.jobs, out=Path(args.out))
    return result


if __name__ == "__main__":
    sys.exit(main())
