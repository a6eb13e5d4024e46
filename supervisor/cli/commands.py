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
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.config import ConfigError, Settings, load_settings, masked, render_config_toml, render_reference_markdown
from shared.logs import setup_logging
from supervisor.cli.database import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, CliError, run_queue, with_database
from supervisor.cli.jobs import cmd_cancel, cmd_enqueue, cmd_list, cmd_retry, cmd_status
from supervisor.queue.database import mask_password, one_line

log = logging.getLogger("export_worker.cli")



BENCH_CASES = ("all", "fleet", "jobcpu", "null")  # `export-worker bench [case]` (bench/run.py, fleet.py, jobcpu.py)


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
        from supervisor.identity import default_worker_id

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
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (`| head`) has what it wanted: no error line, and no second
        # BrokenPipeError when the interpreter flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if getattr(args, "verbose", False):
            raise
        # One line, never a traceback that could carry a connection string (--verbose shows it).
        masked = mask_password(one_line(exc), settings.database.database_url)
        print(f"error: {type(exc).__name__}: {masked}", file=sys.stderr)
        return EXIT_FAILED


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    # nan compares false with everything, so `elapsed > nan` would wait forever
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds above 0")
    return value


def _list_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"{value} is out of range: expected 1 to 100000")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export-worker",
        description="PDF and image export worker: a Postgres queue, a supervisor, a pool of Chromium children.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="config file (default: ./config.toml, or EXPORT_WORKER_CONFIG)"
    )
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

    _add_enqueue(sub)
    _add_job_commands(sub)

    p = sub.add_parser("rescue", help="return stale processing jobs now (what every worker does on its own)")
    p.set_defaults(handler=cmd_rescue)

    p = sub.add_parser("cleanup", help="apply retention now: delete old jobs with their files")
    p.set_defaults(handler=cmd_cleanup)

    p = sub.add_parser("demo", help="render the sample menus on the embedded defaults and show the results")
    p.add_argument("--timeout", type=_positive_seconds, default=180, help="seconds to wait for the renders at most")
    p.set_defaults(handler=cmd_demo)

    _add_bench(sub)

    p = sub.add_parser("help", help="show this help; --markdown prints the command reference (the README's)")
    p.add_argument("--markdown", action="store_true", help="print the command reference as Markdown")
    p.set_defaults(handler=cmd_help)
    return parser


def _add_enqueue(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("enqueue", help="create a job through create_export_job")
    p.add_argument("--user-id", required=True, help="the owner's UUID")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--html", metavar="FILE", help="an HTML file to render")
    source.add_argument("--menu", metavar="FILE", help="a menu document (JSON) to render with a template")
    source.add_argument("--url", help="a URL on the allowlist (ALLOWED_URL_HOSTS)")
    p.add_argument("--type", dest="export_type", choices=("pdf", "image"), default="pdf", help="what to render")
    p.add_argument("--template", choices=("classic", "modern"), default="classic", help="menu template")
    p.add_argument("--options", metavar="JSON", help='render options, e.g. \'{"pdf": {"landscape": true}}\'')
    p.add_argument("--subscriber", action="store_true", help="subscriber tier (priority and limits)")
    p.add_argument("--idempotency-key", help="a repeat with the same key returns the same job")
    p.add_argument("--email", help="where the completion or failure mail goes")
    p.add_argument("--webhook", metavar="URL", help="https URL called (signed) when the job ends (completed or failed)")
    p.add_argument("--menu-id", help="the menu's UUID, when the source is a menu")
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    p.add_argument("--wait", action="store_true", help="show progress until the job ends")
    p.add_argument("--timeout", type=_positive_seconds, default=600, help="seconds --wait waits at most")
    p.set_defaults(handler=cmd_enqueue)


def _add_job_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands about one job or a list of them: status, list, cancel, retry."""
    p = sub.add_parser("status", help="show a job")
    p.add_argument("job_id", help="the job's UUID")
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("list", help="list jobs")
    p.add_argument("--status", choices=("pending", "processing", "completed", "failed", "cancelled"),
                   help="only jobs in this status")
    p.add_argument("--user-id", help="only this owner's jobs")
    p.add_argument("--limit", type=_list_limit, default=20, help="at most this many, newest first")
    p.add_argument("--json", action="store_true", help="print the jobs as JSON")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("cancel", help="cancel a pending job, or ask the worker to stop a running one")
    p.add_argument("job_id", help="the job's UUID")
    p.set_defaults(handler=cmd_cancel)

    p = sub.add_parser("retry", help="send a failed or cancelled job back to pending with fresh attempts")
    p.add_argument("job_id", help="the job's UUID")
    p.set_defaults(handler=cmd_retry)


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="run the benchmarks and print a table (see BENCHMARKS.md)")
    p.add_argument("case", nargs="?", choices=BENCH_CASES, default="all",
                   help="all: the pipeline, capacity and container tables; fleet: 20 workers through one "
                        "PgBouncer in transaction mode against max_connections = 60; jobcpu: the light page's "
                        "CPU per job by process and by function, against the bare loop's; null: the null "
                        "renderer's row alone (the full supervisor, children that answer at once)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check the harness works")
    p.add_argument("--jobs", type=int, default=None,
                   help="jobs per end-to-end case (default: 200); with fleet, jobs in the burst round (default: "
                        "2000); with jobcpu, jobs per drain (default: 150); with null, jobs drained (default: 3000)")
    p.add_argument("--out", default=None,
                   help="where the results go (JSON; default: bench/results/latest.json, fleet.json with fleet, "
                        "jobcpu.json with jobcpu, null.json with null)")
    p.set_defaults(handler=cmd_bench)


# ---- the command reference ----------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    """One Markdown table row per option or argument of `parser`, in declaration order."""
    exclusive = {id(a): g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        metavar = action.metavar or (
            "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper()
        )
        if not action.option_strings:
            name = str(metavar)
        elif action.nargs == 0:
            name = ", ".join(action.option_strings)
        else:
            name = f"{', '.join(action.option_strings)} {metavar}"
        notes = []
        group = exclusive.get(id(action))
        if group is not None:
            others = [o.option_strings[-1] for o in group._group_actions if o is not action]
            notes.append(("one of this and " if group.required else "not with ") + ", ".join(others))
        elif action.required:
            notes.append("required")
        if action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS):
            notes.append(f"default: {action.default}")
        text = (action.help or "").strip()
        if notes:
            text = f"{text} ({'; '.join(notes)})" if text else "; ".join(notes)
        rows.append(f"| `{_cell(name)}` | {_cell(text)} |")
    return rows


def render_cli_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The README's command reference, generated from the argparse parser itself."""
    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    lines = ["| command | what it does |", "| --- | --- |"]
    lines += [f"| `{parser.prog} {name}` | {_cell(helps[name])} |" for name in sub.choices]
    lines += ["", f"Options of every command (before the command): `{parser.prog} [--config FILE] [-v] COMMAND`.", ""]
    lines += ["| option | meaning |", "| --- | --- |", *_option_rows(parser)]
    for name, command in sub.choices.items():
        rows = _option_rows(command)
        if rows:
            lines += ["", f"`{parser.prog} {name}`:", "", "| option | meaning |", "| --- | --- |", *rows]
    return "\n".join(lines)


# ---- commands -----------------------------------------------------------------------


def cmd_help(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print(render_cli_markdown())
    else:
        build_parser().print_help()
    return 0


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    if args.toml:
        print(render_config_toml(), end="")
    elif args.markdown:
        print(render_reference_markdown())
    else:
        print(json.dumps(masked(settings), indent=2))
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from supervisor.delivery.webhook_targets import check_default_url
    from supervisor.queue.migrate import migrate, sync_queue_settings

    check_default_url(settings)

    def work(url: str) -> list[str]:
        import psycopg

        try:
            applied = migrate(url)
            sync_queue_settings(url, settings)
        except psycopg.Error as exc:
            raise CliError(f"migration failed: {one_line(exc)}") from None
        return applied

    applied = with_database(settings, work)
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def cmd_rescue(args: argparse.Namespace, settings: Settings) -> int:
    async def work(queue: Any) -> int:
        rescued = await queue.rescue_stale(settings.retry.stale_after_seconds)
        for job_id, status in rescued:
            print(f"{job_id}  -> {status}")
        print(f"{len(rescued)} stale job(s) rescued", file=sys.stderr)
        return 0

    result: int = run_queue(settings, work)
    return result


def cmd_cleanup(args: argparse.Namespace, settings: Settings) -> int:
    from supervisor.delivery.storage import build_storage
    from supervisor.delivery.sweep import sweep_temp
    from supervisor.queue.retention import run_retention

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

    code: int = run_queue(settings, work)
    return code


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from shared.config import accepted_but_inactive
    from supervisor.cli.exit_guard import ExitGuard
    from supervisor.queue.database import BadDatabaseUrl
    from supervisor.runner import Supervisor
    from supervisor.telemetry import error_reporting

    for note in accepted_but_inactive(settings):
        log.warning(note)
    if settings.worker.node_env != "production":
        log.info("NODE_ENV is not 'production'; it has no other effect in this worker",
                 extra={"node_env": settings.worker.node_env})

    def work(url: str) -> int:
        import psycopg
        from psycopg_pool import PoolTimeout

        supervisor = Supervisor(settings, url)
        guard = ExitGuard()
        error_reporting.init(settings.monitoring.sentry_dsn, supervisor.worker_id,
                             environment=settings.worker.node_env)

        async def run_then_arm() -> int:
            error_reporting.watch_loop(asyncio.get_running_loop())
            code = await supervisor.run()
            guard.arm(code)  # the loop's own cleanup and the thread joins come after this
            return code

        try:
            code: int = asyncio.run(run_then_arm())
        except (psycopg.OperationalError, PoolTimeout) as exc:
            # Before anything was claimed: say why in one line and let the platform restart us.
            first_line = one_line(exc)
            log.error("cannot start: database unavailable", extra={"error": mask_password(first_line, url)})
            raise CliError(f"database unavailable: {first_line}") from None
        except OSError as exc:
            log.error("cannot start: cannot listen", extra={"port": settings.worker.port, "error": str(exc)})
            raise CliError(f"cannot listen on PORT {settings.worker.port}: {exc.strerror or exc}") from None
        except BadDatabaseUrl:
            raise  # bad configuration (DATABASE_MODE=direct on a pooler): exit 2 with its words, not a bug report
        except Exception as exc:  # an unhandled error of the supervisor: main() prints it, Sentry gets it
            error_reporting.report_exception(exc)
            raise
        finally:
            guard.disarm()
            error_reporting.flush()
        return code

    result: int = with_database(settings, work)
    return result


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from supervisor.cli.demo import run_demo

    result: int = with_database(settings, lambda url: asyncio.run(run_demo(settings, url, args.timeout)))
    return result


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from bench.fleet import run_fleet_command
    from bench.jobcpu import run_jobcpu_command
    from bench.run import run_bench, run_null_command

    if args.case == "jobcpu":
        jobcpu: int = run_jobcpu_command(settings, jobs=args.jobs or 150,
                                         out=Path(args.out or "bench/results/jobcpu.json"))
        return jobcpu
    if args.case == "null":
        null: int = run_null_command(settings, jobs=args.jobs or 3000, out=Path(args.out or "bench/results/null.json"))
        return null
    if args.case == "fleet":
        fleet: int = run_fleet_command(smoke=args.smoke, jobs=args.jobs,
                                       out=Path(args.out or "bench/results/fleet.json"))
        return fleet
    result: int = run_bench(settings, smoke=args.smoke, jobs=args.jobs or 200,
                            out=Path(args.out or "bench/results/latest.json"))
    return result


if __name__ == "__main__":
    sys.exit(main())
