-- Named queries of retention (supervisor/queue/retention.py): old jobs, old files, orphaned objects.

-- name: expired_jobs
-- Retention: jobs past their keep time, locked so one worker handles each.
-- A file already removed by files-only retention is not deleted (or counted) again.
SELECT id, CASE WHEN file_deleted_at IS NULL THEN storage_path END AS storage_path FROM export_jobs
 WHERE (status = 'completed' AND created_at < now() - make_interval(days => %(completed_days)s))
    OR (status IN ('failed', 'cancelled') AND created_at < now() - make_interval(days => %(failed_days)s))
 LIMIT %(limit)s
 FOR UPDATE SKIP LOCKED;

-- name: expired_files
SELECT id, storage_path FROM export_jobs
 WHERE status = 'completed' AND storage_path IS NOT NULL AND file_deleted_at IS NULL
   AND completed_at < now() - make_interval(days => %(files_days)s)
 LIMIT %(limit)s
 FOR UPDATE SKIP LOCKED;

-- name: mark_files_deleted
UPDATE export_jobs SET file_deleted_at = now(), file_url = NULL
 WHERE id = ANY(%(ids)s::uuid[]);

-- name: delete_jobs
DELETE FROM export_jobs WHERE id = ANY(%(ids)s::uuid[]);

-- name: orphan_uploads
-- Retention: objects written by claims that lost or died (no completion took
-- them), old enough that no claim can still be writing them. The join keeps a
-- completed job's own object even if its entry somehow survived.
SELECT u.storage_key FROM export_uploads AS u
  LEFT JOIN export_jobs AS j ON j.id = u.job_id AND j.storage_path = u.storage_key
 WHERE j.id IS NULL AND u.started_at < now() - make_interval(secs => %(older_than_seconds)s)
 ORDER BY u.started_at
 LIMIT %(limit)s
 FOR UPDATE OF u SKIP LOCKED;

-- name: forget_uploads
DELETE FROM export_uploads WHERE storage_key = ANY(%(keys)s::text[]);
