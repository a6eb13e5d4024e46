-- Named queries of the job queue (procrastinate style: `-- name:` starts one).
-- Every write of a claim is fenced on (id, worker_id, attempts, status).

-- name: create_job
SELECT * FROM create_export_job(
    %(user_id)s, %(export_type)s, %(payload)s, %(menu_id)s,
    %(subscriber)s, %(idempotency_key)s, %(recipient)s, %(webhook_url)s);

-- name: claim_jobs
-- Claim up to %(limit)s jobs: pending, available now, lowest claim order first.
WITH picked AS (
    SELECT id FROM export_jobs
     WHERE status = 'pending' AND available_at <= now()
     ORDER BY claim_order
     LIMIT %(limit)s
     FOR UPDATE SKIP LOCKED
)
UPDATE export_jobs AS j
   SET status = 'processing', worker_id = %(worker_id)s, attempts = j.attempts + 1,
       started_at = now(), heartbeat_at = now(), cancel_requested_at = NULL
  FROM picked
 WHERE j.id = picked.id
RETURNING j.id, j.user_id, j.menu_id, j.export_type, j.payload, j.attempts, j.max_attempts,
          j.priority, j.created_at,
          extract(epoch FROM now() - greatest(j.created_at, j.available_at))::float8 AS waited_seconds;

-- name: next_available_in
-- Seconds until the earliest pending job becomes claimable (NULL: none pending).
-- (greatest() ignores NULL, so an empty queue must be tested for explicitly.)
SELECT CASE WHEN min(available_at) IS NULL THEN NULL
            ELSE greatest(0, extract(epoch FROM min(available_at) - now()))::float8 END
  FROM export_jobs WHERE status = 'pending';

-- name: heartbeat
-- Refresh every claim this worker holds; returns the ones still held, with
-- whether a cancel was requested. A claim missing from the result is lost.
UPDATE export_jobs AS j SET heartbeat_at = now()
  FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS held(id, attempts)
 WHERE j.id = held.id AND j.attempts = held.attempts
   AND j.worker_id = %(worker_id)s AND j.status = 'processing'
RETURNING j.id, j.cancel_requested_at IS NOT NULL AS cancel_requested;

-- name: complete_jobs
-- Completed, each with its mail and webhook queued (export_job_queue_notices,
-- migration 0011) and its object's upload entry closed, in one statement for
-- every delivery that finished together (group commit, supervisor/queue/group_commit.py).
-- Each row is fenced on its own claim; the result names the ones this worker still held. Rows are locked in id order, so
-- two batches that overlap (a rescue, a cancel) cannot deadlock on lock order.
-- Each completed row says whether it queued a mail and a webhook (whom to wake).
WITH f AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(storage_paths)s::text[],
                         %(file_urls)s::text[], %(sizes)s::bigint[], %(content_types)s::text[],
                         %(metadata)s::jsonb[])
                  AS f(id, attempts, storage_path, file_url, file_size_bytes, content_type, metadata)
), held AS (
    SELECT j.id FROM export_jobs AS j JOIN f ON j.id = f.id AND j.attempts = f.attempts
     WHERE j.worker_id = %(worker_id)s AND j.status = 'processing'
     ORDER BY j.id
       FOR UPDATE OF j
), done AS (
    UPDATE export_jobs AS j
       SET status = 'completed', completed_at = now(), heartbeat_at = now(),
           storage_path = f.storage_path, file_url = f.file_url,
           file_size_bytes = f.file_size_bytes, content_type = f.content_type,
           metadata = (j.metadata - 'failure_reason') || f.metadata, error_message = NULL, error_category = NULL
      FROM held JOIN f ON f.id = held.id
     WHERE j.id = held.id
    RETURNING j.id, j.storage_path, j AS job
), uploaded AS (
    DELETE FROM export_uploads AS u USING done
     WHERE u.storage_key = done.storage_path AND u.job_id = done.id
)
SELECT done.id, notices.mail, notices.webhook
  FROM done CROSS JOIN LATERAL export_job_queue_notices(done.job) AS notices;

-- name: fence_uploads
-- The pre-upload fence: refresh each claim and, for those still held and not
-- cancelled, record the object key it is about to write, in one statement.
-- A claim missing from the result is lost and must upload nothing.
WITH held AS (
    UPDATE export_jobs AS j SET heartbeat_at = now()
      FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(keys)s::text[]) AS f(id, attempts, storage_key)
     WHERE j.id = f.id AND j.attempts = f.attempts
       AND j.worker_id = %(worker_id)s AND j.status = 'processing'
    RETURNING j.id, j.attempts, f.storage_key, j.cancel_requested_at IS NOT NULL AS cancel_requested
), journal AS (
    INSERT INTO export_uploads (storage_key, job_id, attempt, worker_id)
    SELECT storage_key, id, attempts, %(worker_id)s FROM held WHERE NOT cancel_requested
    ON CONFLICT (storage_key) DO NOTHING
)
SELECT id, cancel_requested FROM held;

-- name: forget_upload
-- A claim that lost deleted its own object: its entry goes too.
DELETE FROM export_uploads WHERE storage_key = %(storage_key)s AND job_id = %(id)s;

-- name: settle_failure
-- A failed attempt: back to pending after %(delay_ms)s, or failed for good with
-- its mail and webhook (export_job_queue_notices), in one statement.
-- export_job_is_final is the one retry rule (the stale rescue uses it too). A render that killed its child (time or memory)
-- counts toward POISON_KILL_LIMIT and goes back in line behind newer work.
WITH claim AS (
    SELECT id, attempts, max_attempts, priority,
           coalesce((metadata ->> 'child_kills')::int, 0) + CASE WHEN %(child_killed)s THEN 1 ELSE 0 END AS kills
      FROM export_jobs
     WHERE id = %(id)s AND worker_id = %(worker_id)s AND attempts = %(attempts)s
       AND status = 'processing'
       FOR UPDATE
), decided AS (
    SELECT claim.*, export_job_is_final(%(category)s, attempts, max_attempts, kills) AS final,
           now() + make_interval(secs => %(delay_ms)s / 1000.0) AS retry_at
      FROM claim
), settled AS (
    UPDATE export_jobs AS j
       SET status = CASE WHEN d.final THEN 'failed' ELSE 'pending' END,
           completed_at = CASE WHEN d.final THEN now() END,
           worker_id = CASE WHEN d.final THEN j.worker_id END,
           heartbeat_at = CASE WHEN d.final THEN j.heartbeat_at END,
           available_at = CASE WHEN d.final THEN j.available_at ELSE d.retry_at END,
           claim_order = CASE WHEN %(child_killed)s AND NOT d.final
                              THEN export_job_requeue_order(d.retry_at, d.priority) ELSE j.claim_order END,
           error_message = %(message)s,
           error_category = %(category)s,
           metadata = j.metadata || %(metadata)s
                      || CASE WHEN %(child_killed)s THEN jsonb_build_object('child_kills', d.kills) ELSE '{}' END,
           error_history = (j.error_history || jsonb_build_array(jsonb_build_object(
               'attempt', j.attempts, 'at', now(), 'worker_id', j.worker_id,
               'category', %(category)s::text, 'message', left(%(message)s::text, 500))))
               #- '{-11}'
      FROM decided AS d
     WHERE j.id = d.id
    RETURNING j.id, j.status, d.kills, d.retry_at, j AS job
)
SELECT settled.id, settled.status, kills, greatest(0, extract(epoch FROM retry_at - now()) * 1000)::int AS retry_in_ms,
       notices.mail, notices.webhook
  FROM settled CROSS JOIN LATERAL export_job_queue_notices(settled.job) AS notices;

-- name: cancel_claimed_job
-- The supervisor stopped the render of a job whose cancel was requested.
UPDATE export_jobs
   SET status = 'cancelled', completed_at = now(), error_message = 'cancelled by request'
 WHERE id = %(id)s AND worker_id = %(worker_id)s AND attempts = %(attempts)s
   AND status = 'processing'
RETURNING id;

-- name: release_job
-- Graceful shutdown: hand the job back without spending its attempt. `attempts`
-- keeps counting claims (so every claim's fence stays unique, even when the same
-- WORKER_ID claims it again); the allowance grows by one instead.
UPDATE export_jobs
   SET status = 'pending', worker_id = NULL, heartbeat_at = NULL, started_at = NULL,
       max_attempts = max_attempts + 1, available_at = now()
 WHERE id = %(id)s AND worker_id = %(worker_id)s AND attempts = %(attempts)s
   AND status = 'processing'
RETURNING id;

-- name: rescue_stale
-- Claims whose heartbeat stopped go back to pending (or to failed when
-- export_job_is_final says so, as for any transient error), and at once those whose
-- worker came back as a new process since the claim began (the workers table's
-- registered_at, migration 0010). The outer WHERE re-checks after the row lock, so
-- a job completed between the read and the write stays completed. Final failures
-- get their mail and webhook (export_job_queue_notices).
WITH stale AS (
    SELECT j.id, w.registered_at IS NOT NULL AS restarted FROM export_jobs AS j
      LEFT JOIN export_workers AS w ON w.worker_id = j.worker_id AND w.registered_at > j.started_at
     WHERE j.status = 'processing'
       AND (coalesce(j.heartbeat_at, j.started_at, j.updated_at) < now() - make_interval(secs => %(stale_seconds)s)
            OR w.registered_at IS NOT NULL)
     ORDER BY j.heartbeat_at
     LIMIT 500
     FOR UPDATE OF j SKIP LOCKED
), rescued AS (
    UPDATE export_jobs AS j
       SET status = CASE WHEN export_job_is_final('transient', j.attempts, j.max_attempts,
                                             coalesce((j.metadata ->> 'child_kills')::int, 0))
                         THEN 'failed' ELSE 'pending' END,
           completed_at = CASE WHEN export_job_is_final('transient', j.attempts, j.max_attempts,
                                             coalesce((j.metadata ->> 'child_kills')::int, 0))
                               THEN now() END,
           available_at = now(), heartbeat_at = NULL,
           error_category = 'transient',
           metadata = j.metadata || '{"failure_reason": "stale"}',
           error_message = CASE WHEN stale.restarted
               THEN format('worker %%s restarted as a new process during attempt %%s (last sign of life %%s)',
                           coalesce(j.worker_id, '?'), j.attempts,
                           coalesce(j.heartbeat_at, j.started_at, j.updated_at))
               ELSE format('worker %%s stopped heartbeating during attempt %%s (last sign of life %%s)',
                           coalesce(j.worker_id, '?'), j.attempts,
                           coalesce(j.heartbeat_at, j.started_at, j.updated_at)) END,
           error_history = (j.error_history || jsonb_build_array(jsonb_build_object(
               'attempt', j.attempts, 'at', now(), 'worker_id', j.worker_id,
               'category', 'transient', 'message', 'stale claim rescued by ' || %(rescuer)s)))
               #- '{-11}',
           worker_id = NULL
      FROM stale
     WHERE j.id = stale.id AND j.status = 'processing'
       AND (stale.restarted
            OR coalesce(j.heartbeat_at, j.started_at, j.updated_at) < now() - make_interval(secs => %(stale_seconds)s))
    RETURNING j.id, j.status, j AS job
)
SELECT rescued.id, rescued.status, notices.mail, notices.webhook
  FROM rescued CROSS JOIN LATERAL export_job_queue_notices(rescued.job) AS notices;

-- name: cancel_job
-- Pending: cancelled at once. Processing: a cancel request the claiming
-- supervisor acts on. Returns the resulting status (NULL: no such job or already final).
WITH target AS (
    SELECT id, status FROM export_jobs
     WHERE id = %(id)s AND (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
     FOR UPDATE
)
UPDATE export_jobs AS j
   SET status = CASE WHEN t.status = 'pending' THEN 'cancelled' ELSE j.status END,
       completed_at = CASE WHEN t.status = 'pending' THEN now() ELSE j.completed_at END,
       cancel_requested_at = CASE WHEN t.status = 'processing' THEN now() ELSE j.cancel_requested_at END
  FROM target AS t
 WHERE j.id = t.id AND t.status IN ('pending', 'processing')
RETURNING j.status, j.cancel_requested_at IS NOT NULL AS cancel_requested;

-- name: retry_failed_job
-- Operator retry: a failed or cancelled job goes back to pending with a fresh
-- allowance (attempts keeps counting, so old claims stay fenced out).
UPDATE export_jobs
   SET status = 'pending', available_at = now(), completed_at = NULL,
       max_attempts = attempts + (SELECT s.max_attempts FROM export_queue_settings AS s WHERE s.id),
       worker_id = NULL, cancel_requested_at = NULL
 WHERE id = %(id)s AND status IN ('failed', 'cancelled')
RETURNING id;

-- name: get_job
-- The job with its webhook deliveries (one per event; [] when it names none).
SELECT j.*, coalesce((
    SELECT jsonb_agg(jsonb_build_object(
               'event', w.event, 'webhook_id', w.webhook_id, 'attempts', w.attempts,
               'status', CASE WHEN w.delivered_at IS NOT NULL THEN 'delivered'
                              WHEN w.disabled_at IS NOT NULL THEN 'disabled'
                              WHEN w.gave_up_at IS NOT NULL THEN 'failed' ELSE 'pending' END,
               'last_status_code', w.last_status, 'last_error', w.last_error,
               'delivered_at', w.delivered_at, 'next_attempt_at',
               CASE WHEN w.delivered_at IS NULL AND w.disabled_at IS NULL AND w.gave_up_at IS NULL
                    THEN w.available_at END) ORDER BY w.id)
      FROM export_webhook_outbox AS w WHERE w.job_id = j.id), '[]') AS webhooks
  FROM export_jobs AS j WHERE j.id = %(id)s;

-- name: list_jobs
SELECT id, user_id, export_type, status, priority, attempts, max_attempts, created_at,
       completed_at, error_category, error_message, storage_path
  FROM export_jobs
 WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
   AND (%(user_id)s::uuid IS NULL OR user_id = %(user_id)s::uuid)
 ORDER BY created_at DESC
 LIMIT %(limit)s;

-- name: queue_stats
SELECT count(*) FILTER (WHERE status = 'pending')::int AS pending,
       count(*) FILTER (WHERE status = 'processing')::int AS processing,
       coalesce(extract(epoch FROM now() - min(greatest(created_at, available_at))
                FILTER (WHERE status = 'pending' AND available_at <= now())), 0)::float8 AS oldest_pending_seconds
  FROM export_jobs WHERE status IN ('pending', 'processing');

-- name: defer_job
-- Storage is down (breaker open): back to pending after the cooldown without
-- spending the attempt; counted, so an endless outage still ends in failure.
UPDATE export_jobs
   SET status = 'pending', worker_id = NULL, heartbeat_at = NULL,
       max_attempts = max_attempts + 1,  -- not spent: see release_job
       available_at = now() + make_interval(secs => %(delay_ms)s / 1000.0),
       error_message = %(message)s, error_category = 'transient',
       metadata = metadata || jsonb_build_object(
           'storage_deferrals', coalesce((metadata ->> 'storage_deferrals')::int, 0) + 1)
 WHERE id = %(id)s AND worker_id = %(worker_id)s AND attempts = %(attempts)s
   AND status = 'processing'
RETURNING (metadata ->> 'storage_deferrals')::int;
