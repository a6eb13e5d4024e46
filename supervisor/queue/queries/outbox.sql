-- Named queries of the outbox engine (supervisor/delivery/outbox.py), one set for both outboxes:
-- {outbox} is the table (export_mail_outbox, export_webhook_outbox) and {done_at} the
-- column that marks a row sent (sent_at, delivered_at); both tables have the same
-- lease, attempt and outcome columns (migrations 0001, 0009, 0011).
-- Every outcome is fenced on the lease (locked_by and attempts): a sender whose lease
-- ended and was taken by another claim, even its own worker's, writes nothing.

-- name: outbox_claim
-- The sender takes due rows for a lease; a crashed sender's are taken by another
-- worker once the lease ends (the at-least-once edge: see API.md). At most
-- %(per_target)s rows per target are in flight on this worker: targets already full
-- are skipped, the others get what is left of their share (a slow webhook receiver
-- holds up only its own deliveries). Each row comes with its job's row joined (no
-- second query per row); job_status is NULL when retention deleted the job.
WITH due AS (
    SELECT id, target, available_at FROM {outbox}
     WHERE {done_at} IS NULL AND disabled_at IS NULL AND gave_up_at IS NULL
       AND available_at <= now()
       AND (locked_until IS NULL OR locked_until < now())
       AND coalesce(target, '') <> ALL (%(full_targets)s::text[])
     ORDER BY available_at
     LIMIT %(scan)s
     FOR UPDATE SKIP LOCKED
), ranked AS (
    SELECT due.id, due.available_at,
           row_number() OVER (PARTITION BY due.target ORDER BY due.available_at, due.id)
               + coalesce(busy.sending, 0) AS place
      FROM due
      LEFT JOIN unnest(%(busy_targets)s::text[], %(busy_counts)s::int[]) AS busy(target, sending)
        ON busy.target = due.target
), picked AS (
    SELECT id FROM ranked WHERE place <= %(per_target)s ORDER BY available_at, id LIMIT %(limit)s
), leased AS (
    UPDATE {outbox} AS o
       SET locked_by = %(worker_id)s, locked_until = now() + make_interval(secs => %(lease_seconds)s),
           attempts = o.attempts + 1
      FROM picked WHERE o.id = picked.id
    RETURNING o.*
)
SELECT l.*, extract(epoch FROM now() - l.created_at)::float8 AS age_seconds,
       j.status AS job_status, j.export_type, j.storage_path, j.payload, j.metadata,
       j.error_category, j.error_message, j.content_type, j.file_size_bytes, j.completed_at
  FROM leased AS l LEFT JOIN export_jobs AS j ON j.id = l.job_id
 ORDER BY l.id;

-- name: outbox_done
-- Rows sent, each fenced on its own lease (locked_by and attempts). The sends that end
-- while one such write is in flight share the next statement (group commit,
-- supervisor/queue/group_commit.py): one round trip for many mails, each row still its own.
UPDATE {outbox} AS o
   SET {done_at} = now(), locked_until = NULL, last_status = d.status, last_error = NULL
  FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(statuses)s::int[]) AS d(id, attempts, status)
 WHERE o.id = d.id AND o.locked_by = %(worker_id)s AND o.attempts = d.attempts;

-- name: outbox_disabled
-- The receiver said never again (a webhook's 410 Gone).
UPDATE {outbox}
   SET disabled_at = now(), locked_until = NULL, last_status = %(status)s, last_error = left(%(error)s, 1000)
 WHERE id = %(id)s AND locked_by = %(worker_id)s AND attempts = %(attempts)s;

-- name: outbox_failed
-- Retried after %(delay_seconds)s, or (give_up) failed for good.
UPDATE {outbox}
   SET locked_until = NULL, last_status = %(status)s, last_error = left(%(error)s, 1000),
       available_at = now() + make_interval(secs => %(delay_seconds)s),
       gave_up_at = CASE WHEN %(give_up)s THEN now() END
 WHERE id = %(id)s AND locked_by = %(worker_id)s AND attempts = %(attempts)s;
