"""Retention: old jobs go with their files, files first, one worker at a time."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from shared.config import RetentionSettings
from supervisor.queue.retention import RETENTION_LOCK_KEY, run_retention
from tests.conftest import make_settings

pytestmark = pytest.mark.timeout(300)


class RecordingStorage:
    """Records delete calls; checks the rows still exist when their files are deleted."""

    def __init__(self, db_url: str, fail: bool = False) -> None:
        self.db_url = db_url
        self.fail = fail
        self.calls: list[list[str]] = []
        self.rows_present: list[int] = []

    def delete(self, paths: list[str]) -> None:
        self.calls.append(list(paths))
        with psycopg.connect(self.db_url) as conn:  # another session: sees committed rows only
            row = conn.execute(
                "SELECT count(*) FROM export_jobs WHERE storage_path = ANY(%s)", (paths,)
            ).fetchone()
        assert row is not None
        self.rows_present.append(int(row[0]))
        if self.fail:
            raise OSError("storage is down")

    @property
    def deleted(self) -> set[str]:
        return {p for call in self.calls for p in call}


def insert(
    db_url: str,
    status: str,
    created_days: float,
    *,
    path: str | None = None,
    completed_days: float | None = None,
) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            """INSERT INTO export_jobs (user_id, export_type, payload, status, created_at, completed_at,
                                        storage_path, file_url)
               VALUES (gen_random_uuid(), 'pdf', '{"source":{"kind":"html","html":"x"}}', %s,
                       now() - make_interval(secs => %s * 86400),
                       CASE WHEN %s::float8 IS NULL THEN NULL
                            ELSE now() - make_interval(secs => %s * 86400) END,
                       %s, CASE WHEN %s::text IS NULL THEN NULL ELSE 'https://files/' || %s END)
               RETURNING id""",
            (status, created_days, completed_days, completed_days, path, path, path),
        ).fetchone()
    assert row is not None
    return str(row[0])


def ids(db_url: str) -> set[str]:
    with psycopg.connect(db_url) as conn:
        return {str(r[0]) for r in conn.execute("SELECT id FROM export_jobs")}


def retention(tmp_path: Path, db_url: str, **env: str) -> RetentionSettings:
    return make_settings(tmp_path, db_url, **env).retention


async def test_old_jobs_and_their_files_go_new_and_open_ones_stay(
    pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path
) -> None:
    old_done = insert(db_url, "completed", 31, path="old-done.pdf", completed_days=31)
    new_done = insert(db_url, "completed", 29, path="new-done.pdf", completed_days=1)
    old_failed = insert(db_url, "failed", 8, completed_days=8)
    old_cancelled = insert(db_url, "cancelled", 8, completed_days=8)
    new_failed = insert(db_url, "failed", 6, completed_days=6)
    old_pending = insert(db_url, "pending", 90)
    old_processing = insert(db_url, "processing", 90)
    storage = RecordingStorage(db_url)
    result = await run_retention(pool, storage, retention(tmp_path, db_url))
    assert not result.skipped
    assert result.jobs_deleted == 3
    assert ids(db_url) == {new_done, new_failed, old_pending, old_processing}
    assert old_done not in ids(db_url) and old_failed not in ids(db_url) and old_cancelled not in ids(db_url)
    assert storage.deleted == {"old-done.pdf"}
    # Files first: when storage was asked, the rows were still there.
    assert storage.rows_present == [len(c) for c in storage.calls]
    # A second run finds nothing.
    again = await run_retention(pool, RecordingStorage(db_url), retention(tmp_path, db_url))
    assert (again.jobs_deleted, again.files_deleted) == (0, 0)


async def test_storage_failure_deletes_no_rows(
    pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path
) -> None:
    a = insert(db_url, "completed", 40, path="a.pdf", completed_days=40)
    b = insert(db_url, "completed", 35, path="b.pdf", completed_days=35)
    storage = RecordingStorage(db_url, fail=True)
    with pytest.raises(OSError):
        await run_retention(pool, storage, retention(tmp_path, db_url))
    assert storage.calls
    assert ids(db_url) == {a, b}
    with psycopg.connect(db_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM export_jobs WHERE file_deleted_at IS NOT NULL"
        ).fetchone() == (0,)
    # Storage is back: the next run finishes the job.
    ok = RecordingStorage(db_url)
    result = await run_retention(pool, ok, retention(tmp_path, db_url))
    assert result.jobs_deleted == 2 and ids(db_url) == set()
    assert ok.deleted == {"a.pdf", "b.pdf"}


async def test_files_only_retention_marks_file_deleted(
    pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path
) -> None:
    settings = retention(tmp_path, db_url, RETENTION_FILES_DAYS="1", RETENTION_COMPLETED_DAYS="30")
    stale_file = insert(db_url, "completed", 3, path="three-days.pdf", completed_days=3)
    fresh_file = insert(db_url, "completed", 0.5, path="half-day.pdf", completed_days=0.5)
    failed = insert(db_url, "failed", 3, completed_days=3)
    storage = RecordingStorage(db_url)
    result = await run_retention(pool, storage, settings)
    assert (result.jobs_deleted, result.files_deleted) == (0, 1)
    assert storage.calls == [["three-days.pdf"]]
    assert ids(db_url) == {stale_file, fresh_file, failed}
    with psycopg.connect(db_url) as conn:
        rows = dict(
            conn.execute(
                "SELECT id::text, (file_deleted_at IS NOT NULL)::text || (file_url IS NULL)::text "
                "FROM export_jobs"
            ).fetchall()
        )
    assert rows[stale_file] == "truetrue"
    assert rows[fresh_file] == "falsefalse"
    # The file is not deleted twice, and when the row itself expires no second delete is asked for the file.
    again = RecordingStorage(db_url)
    await run_retention(pool, again, settings)
    assert again.calls == []
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE export_jobs SET created_at = now() - interval '31 days' WHERE id = %s", (stale_file,)
        )
    last = RecordingStorage(db_url)
    result = await run_retention(pool, last, settings)
    assert result.jobs_deleted == 1 and stale_file not in ids(db_url)
    assert "three-days.pdf" not in last.deleted


async def test_second_run_is_skipped_while_the_first_holds_the_lock(
    pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path
) -> None:
    insert(db_url, "completed", 40, path="slow.pdf", completed_days=40)
    settings = retention(tmp_path, db_url)
    entered = threading.Event()
    release = threading.Event()

    class SlowStorage(RecordingStorage):
        def delete(self, paths: list[str]) -> None:
            super().delete(paths)
            entered.set()
            assert release.wait(20)

    first_storage = SlowStorage(db_url)
    first = asyncio.create_task(run_retention(pool, first_storage, settings))
    assert await asyncio.to_thread(entered.wait, 20)
    second_storage = RecordingStorage(db_url)
    second = await run_retention(pool, second_storage, settings)
    assert second.skipped and second_storage.calls == []
    release.set()
    result = await first
    assert not result.skipped and result.jobs_deleted == 1


async def test_lock_held_elsewhere_skips(pool: AsyncConnectionPool[Any], db_url: str, tmp_path: Path) -> None:
    insert(db_url, "completed", 40, completed_days=40)
    with psycopg.connect(db_url) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (RETENTION_LOCK_KEY,))
        result = await run_retention(pool, RecordingStorage(db_url), retention(tmp_path, db_url))
        assert result.skipped
        conn.rollback()
    result = await run_retention(pool, RecordingStorage(db_url), retention(tmp_path, db_url))
    assert not result.skipped and result.jobs_deleted == 1
