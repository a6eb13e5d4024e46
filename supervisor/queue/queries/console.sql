-- The operator console's own queries (supervisor/http/console/). Actions on single jobs
-- use the queue's (queue.sql: retry_failed_job, cancel_job, get_job, queue_stats).

-- name: counts_by_status_priority
-- Overview and live counts: jobs by status and priority (an index-only scan).
SELECT status, priority, count(*)::int AS jobs
  FROM export_jobs
 GROUP BY status, priority;

-- name: finished_per_minute
-- The last hour's throughput and failures, one row per minute that had any.
SELECT date_trunc('minute', completed_at) AS minute,
       count(*) FILTER (WHERE status = 'completed')::int AS completed,
       count(*) FILTER (WHERE status = 'failed')::int AS failed
  FROM export_jobs
 WHERE completed_at IS NOT NULL AND completed_at >= date_trunc('minute', now()) - interval '59 minutes'
 GROUP BY 1;

-- name: oldest_pending
-- The pending job created first (ready or waiting for a retry): one step down an index.
SELECT id, created_at, available_at, extract(epoch FROM now() - created_at)::float8 AS age_seconds
  FROM export_jobs
 WHERE status = 'pending'
 ORDER BY created_at
 LIMIT 1;

-- name: jobs_page
-- The jobs list, newest first; the WHERE clause joins the filter_* pieces below.
SELECT id, user_id, export_type, status, priority, attempts, max_attempts, created_at, updated_at,
       completed_at, error_category, left(error_message, 300) AS error_message, worker_id,
       cancel_requested_at IS NOT NULL AS cancel_requested
  FROM export_jobs
 WHERE {filters}
 ORDER BY created_at DESC, id DESC
 LIMIT %(limit)s;

-- name: filter_all
TRUE

-- name: filter_status
status = %(status)s

-- name: filter_user
user_id = %(user_id)s

-- name: filter_type
export_type = %(export_type)s

-- name: filter_created_from
created_at >= %(created_from)s

-- name: filter_created_to
created_at < %(created_to)s

-- name: filter_before
-- Keyset pagination: rows older than the last one shown.
(created_at, id) < (%(before_at)s, %(before_id)s)

-- name: job_rows
-- Live rows: the jobs a page shows, by id.
SELECT id, user_id, export_type, status, priority, attempts, max_attempts, created_at, updated_at,
       completed_at, error_category, left(error_message, 300) AS error_message, worker_id,
       cancel_requested_at IS NOT NULL AS cancel_requested
  FROM export_jobs
 WHERE id = ANY(%(ids)s::uuid[]);

-- name: failed_by_category
SELECT coalesce(error_category, 'none') AS category, count(*)::int AS jobs
  FROM export_jobs
 WHERE status = 'failed'
 GROUP BY 1
 ORDER BY 2 DESC;

-- name: retry_failed_category
-- Operator retry of every failed job of a category, as retry_failed_job does for one.
UPDATE export_jobs
   SET status = 'pending', available_at = now(), completed_at = NULL,
       max_attempts = attempts + (SELECT s.max_attempts FROM export_queue_settings AS s WHERE s.id),
       worker_id = NULL, cancel_requested_at = NULL
 WHERE status = 'failed' AND error_category = %(category)s
RETURNING id;

-- name: audit
INSERT INTO export_console_audit (actor, action, target, outcome, affected)
VALUES (%(actor)s, %(action)s, %(target)s, %(outcome)s, %(affected)s);

-- name: recent_audit
SELECT at, actor, action, target, outcome, affected
  FROM export_console_audit
 ORDER BY at DESC
 LIMIT %(limit)s;

-- name: sign_out
-- Revokes one session (its nonce) until its cookie's own expiry; the expired ones go.
WITH forgotten AS (DELETE FROM export_console_signouts WHERE expires_at < now())
INSERT INTO export_console_signouts (nonce, operator, expires_at)
VALUES (%(nonce)s, %(operator)s, to_timestamp(%(expires)s))
ON CONFLICT (nonce) DO NOTHING;

-- name: signed_out
-- Whether this session was signed out (a primary-key probe on every console request).
SELECT 1 AS signed_out FROM export_console_signouts WHERE nonce = %(nonce)s;
