"""What the commands that reach the database share: the exit codes, the error that
carries one, and the configured (or embedded) database and a queue on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from shared.config import Settings
from supervisor.queue.database import one_line

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_LIMIT, EXIT_JOB_FAILED = 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
NOT_MIGRATED = "this database has no export-worker schema yet: run `export-worker migrate` first"


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def with_database(settings: Settings, work: Callable[[str], Any]) -> Any:
    from supervisor.queue.database import BadDatabaseUrl, DatabaseUnavailable, database_url

    try:
        with database_url(settings) as url:
            return work(url)
    except BadDatabaseUrl as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    except DatabaseUnavailable as exc:
        raise CliError(str(exc)) from None


def run_queue(settings: Settings, work: Callable[[Any], Any]) -> Any:
    """Open a queue on the configured (or embedded) database and run `work(queue)`."""
    import psycopg
    from psycopg_pool import PoolTimeout

    from supervisor.queue.store import InvalidJob
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
        except InvalidJob as exc:  # a malformed id or filter, from any command: bad input, exit 2
            raise CliError(exc.message, EXIT_BAD_INPUT) from None
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction) as exc:
            raise CliError(f"{NOT_MIGRATED} ({one_line(exc)})") from None
        finally:
            await pool.close()

    return with_database(settings, lambda url: asyncio.run(go(url)))
