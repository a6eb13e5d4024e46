-- The workers table: one row per worker, upserted every heartbeat (supervisor/queue/workers.py).

-- name: upsert_worker
INSERT INTO export_workers AS w (
    worker_id, host, pid, version, started_at, last_heartbeat,
    children_ready, children_busy, capacity, children_memory_bytes,
    container_memory_bytes, container_limit_bytes, claiming, not_claiming,
    canary_ok, breaker_state, detail, registered_at)
VALUES (
    %(worker_id)s, %(host)s, %(pid)s, %(version)s, %(started_at)s, now(),
    %(children_ready)s, %(children_busy)s, %(capacity)s, %(children_memory_bytes)s,
    %(container_memory_bytes)s, %(container_limit_bytes)s, %(claiming)s, %(not_claiming)s,
    %(canary_ok)s, %(breaker_state)s, %(detail)s, now())
ON CONFLICT (worker_id) DO UPDATE SET
    -- A new process under the same WORKER_ID: its claims start after this (0010).
    registered_at = CASE WHEN (w.host, w.pid, w.started_at) IS DISTINCT FROM
                              (EXCLUDED.host, EXCLUDED.pid, EXCLUDED.started_at)
                         THEN now() ELSE w.registered_at END,
    host = EXCLUDED.host, pid = EXCLUDED.pid, version = EXCLUDED.version,
    started_at = EXCLUDED.started_at, last_heartbeat = now(),
    children_ready = EXCLUDED.children_ready, children_busy = EXCLUDED.children_busy,
    capacity = EXCLUDED.capacity, children_memory_bytes = EXCLUDED.children_memory_bytes,
    container_memory_bytes = EXCLUDED.container_memory_bytes,
    container_limit_bytes = EXCLUDED.container_limit_bytes,
    claiming = EXCLUDED.claiming, not_claiming = EXCLUDED.not_claiming,
    canary_ok = EXCLUDED.canary_ok, breaker_state = EXCLUDED.breaker_state, detail = EXCLUDED.detail;

-- name: forget_gone_workers
-- Retention of the workers table: rows gone longer than the bound.
DELETE FROM export_workers
 WHERE last_heartbeat < now() - make_interval(hours => %(forget_hours)s)
RETURNING worker_id;

-- name: list_workers
-- Every worker, live ones first; `gone` once its heartbeat is older than the bound.
SELECT worker_id, host, pid, version, started_at, last_heartbeat,
       children_ready, children_busy, capacity, children_memory_bytes,
       container_memory_bytes, container_limit_bytes, claiming, not_claiming,
       canary_ok, breaker_state, detail,
       last_heartbeat < now() - make_interval(secs => %(gone_seconds)s) AS gone,
       extract(epoch FROM now() - last_heartbeat)::float8 AS silent_seconds
  FROM export_workers
 ORDER BY last_heartbeat < now() - make_interval(secs => %(gone_seconds)s), worker_id;
