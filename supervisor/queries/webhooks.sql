-- Named queries of the webhook outbox (supervisor/webhooks.py): leases, outcomes.
-- Every outcome is fenced on the lease (locked_by, attempts): a sender whose lease
-- ended and was taken by another worker writes nothing.

-- name: claim_webhooks
-- The sender takes due deliveries for a lease; a crashed sender's are taken by
-- another worker once the lease ends (the at-least-once edge: see API.md).
WITH due AS (
    SELECT id FROM export_webhook_outbox
     WHERE delivered_at IS NULL AND disabled_at IS NULL AND gave_up_at IS NULL
       AND available_at <= now()
       AND (locked_until IS NULL OR locked_until < now())
     ORDER BY available_at
     LIMIT %(limit)s
     FOR UPDATE SKIP LOCKED
)
UPDATE export_webhook_outbox AS w
   SET locked_by = %(worker_id)s, locked_until = now() + make_interval(secs => %(lease_seconds)s),
       attempts = w.attempts + 1
  FROM due WHERE w.id = due.id
RETURNING w.id, w.job_id, w.event, w.webhook_id, w.url, w.attempts, w.created_at,
          extract(epoch FROM now() - w.created_at)::float8 AS age_seconds;

-- name: webhook_delivered
UPDATE export_webhook_outbox
   SET delivered_at = now(), locked_until = NULL, last_status = %(status)s, last_error = NULL
 WHERE id = %(id)s AND locked_by = %(worker_id)s AND attempts = %(attempts)s;

-- name: webhook_disabled
-- The receiver answered 410 Gone: never again.
UPDATE export_webhook_outbox
   SET disabled_at = now(), locked_until = NULL, last_status = %(status)s, last_error = left(%(error)s, 1000)
 WHERE id = %(id)s AND locked_by = %(worker_id)s AND attempts = %(attempts)s;

-- name: webhook_failed
-- Retried after %(delay_seconds)s, or (give_up) failed for good.
UPDATE export_webhook_outbox
   SET locked_until = NULL, last_status = %(status)s, last_error = left(%(error)s, 1000),
       available_at = now() + make_interval(secs => %(delay_seconds)s),
       gave_up_at = CASE WHEN %(give_up)s THEN now() END
 WHERE id = %(id)s AND locked_by = %(worker_id)s AND attempts = %(attempts)s;
