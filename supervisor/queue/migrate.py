"""Ordered SQL migrations, applied once each, safe when several workers start at once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import psycopg

from shared.config import Settings

# One lock for every migrating process: the second waits, then finds nothing to do.
MIGRATION_LOCK_KEY = 7_312_000
# In each migration's transaction: what it added is locked down before it is
# committed (0004_grants.sql), then the runtime roles get their rights on it
# (0012_runtime_role.sql); each a no-op until its migration exists.
LOCK_DOWN = """DO $$ BEGIN
    IF to_regprocedure('export_worker_lock_down()') IS NOT NULL THEN PERFORM export_worker_lock_down(); END IF;
    IF to_regprocedure('export_worker_apply_runtime_grants()') IS NOT NULL THEN
        PERFORM export_worker_apply_runtime_grants();
    END IF;
END $$"""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    folder = resources.files("supervisor.queue") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [Migration(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


def migrate(conninfo: str) -> list[str]:
    """Apply pending migrations; return the names applied by this call.

    Everything happens in one transaction that first takes a transaction-level
    advisory lock: through a transaction-mode pooler the whole run stays on one
    server connection, and the lock goes with the commit or rollback whatever
    happens to this process (a session lock would stay held by a pooled backend).
    A second run waits for the first, then finds nothing to do.
    """
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None,
                         application_name="export-worker-migrate") as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        # Only when missing: a runtime role without CREATE on the schema (0012) runs
        # `serve`, which migrates at start and finds nothing to do.
        if conn.execute("SELECT to_regclass('export_worker_migrations')").fetchone() == (None,):
            conn.execute(
                """CREATE TABLE export_worker_migrations (
                       name text PRIMARY KEY,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
        done = {row[0] for row in conn.execute("SELECT name FROM export_worker_migrations")}
        for migration in available_migrations():
            if migration.name in done:
                continue
            with conn.transaction():  # a savepoint: the error names the migration that failed
                conn.execute(migration.sql.encode())
                conn.execute(LOCK_DOWN.encode())
                conn.execute(
                    "INSERT INTO export_worker_migrations (name, checksum) VALUES (%s, %s)",
                    (migration.name, migration.checksum),
                )
            applied_now.append(migration.name)
    return applied_now


def sync_queue_settings(conninfo: str, settings: Settings) -> None:
    """Write the limits and priorities the creation function reads."""
    limits = settings.limits
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None,
                         application_name="export-worker-migrate") as conn:
        conn.execute(
            """UPDATE export_queue_settings SET
                   free_user_hourly_limit = %s, subscriber_hourly_limit = %s,
                   free_user_pending_limit = %s, subscriber_pending_limit = %s,
                   subscriber_priority = %s, free_user_priority = %s,
                   priority_aging_seconds = %s, max_attempts = %s, max_payload_bytes = %s,
                   poison_kill_limit = %s, webhook_default_url = nullif(%s, ''), updated_at = now()
               WHERE id""",
            (
                limits.free_user_hourly_limit,
                limits.subscriber_hourly_limit,
                limits.free_user_pending_limit,
                limits.subscriber_pending_limit,
                limits.subscriber_priority,
                limits.free_user_priority,
                limits.priority_aging_seconds,
                settings.retry.max_attempts,
                settings.render.max_input_bytes + 65_536,  # the source plus its options
                settings.retry.poison_kill_limit,
                settings.webhooks.webhook_default_url,  # checked by webhook_targets.check_default_url
            ),
        )
