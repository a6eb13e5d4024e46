-- Status of the jobs that event streams are watching, in one round trip for all
-- of them (after a LISTEN reconnect, or each poll when there is no LISTEN).

-- name: job_statuses
SELECT id, status, attempts, cancel_requested_at IS NOT NULL AS cancel_requested
  FROM export_jobs
 WHERE id = ANY(%(ids)s::uuid[]);
