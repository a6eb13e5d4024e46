-- Named queries of the mail outbox (supervisor/outbox.py): leases, sent, retried.

-- name: claim_mail
-- The sender takes due mails for a while; another worker takes them only after
-- the lease ends (a crashed sender's mails are not lost). Each comes with what its
-- mail says about the job (no second query per mail); job_status is NULL when
-- the job is gone.
WITH due AS (
    SELECT id FROM export_mail_outbox
     WHERE sent_at IS NULL AND gave_up_at IS NULL AND available_at <= now()
       AND (locked_until IS NULL OR locked_until < now())
     ORDER BY available_at
     LIMIT %(limit)s
     FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE export_mail_outbox AS m
       SET locked_by = %(worker_id)s, locked_until = now() + make_interval(secs => %(lease_seconds)s),
           attempts = m.attempts + 1
      FROM due WHERE m.id = due.id
    RETURNING m.id, m.job_id, m.kind, m.recipient, m.attempts
)
SELECT l.id, l.job_id, l.kind, l.recipient, l.attempts,
       j.status AS job_status, j.export_type, j.storage_path, j.payload, j.metadata,
       j.error_category, j.error_message
  FROM leased AS l LEFT JOIN export_jobs AS j ON j.id = l.job_id
 ORDER BY l.id;

-- name: mail_sent
UPDATE export_mail_outbox SET sent_at = now(), locked_until = NULL, last_error = NULL
 WHERE id = %(id)s AND locked_by = %(worker_id)s;

-- name: mail_failed
UPDATE export_mail_outbox
   SET locked_until = NULL, last_error = left(%(error)s, 1000),
       available_at = now() + make_interval(secs => %(delay_seconds)s),
       gave_up_at = CASE WHEN %(give_up)s THEN now() END
 WHERE id = %(id)s AND locked_by = %(worker_id)s;
