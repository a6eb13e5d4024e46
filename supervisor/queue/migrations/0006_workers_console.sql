-- The workers table (each worker upserts its own row every heartbeat), the
-- console's audit log, and the indexes the console's pages need at 100,000 jobs.

CREATE TABLE IF NOT EXISTS export_workers (
    worker_id          text PRIMARY KEY,
    host               text NOT NULL,
    pid                integer NOT NULL,
    version            text NOT NULL,
    started_at         timestamptz NOT NULL,
    last_heartbeat     timestamptz NOT NULL DEFAULT now(),
    children_ready     integer NOT NULL DEFAULT 0,
    children_busy      integer NOT NULL DEFAULT 0,
    capacity           integer NOT NULL DEFAULT 0,
    -- PSS of all render children's trees; the container's use and limit.
    children_memory_bytes  bigint NOT NULL DEFAULT 0,
    container_memory_bytes bigint,
    container_limit_bytes  bigint,
    claiming           boolean NOT NULL DEFAULT false,
    -- Why not claiming (NULL while claiming).
    not_claiming       text CHECK (not_claiming IN ('starting', 'brake', 'high_water', 'canary', 'database',
                                                    'shutting_down')),
    canary_ok          boolean,
    breaker_state      text,
    -- Each child (pid, state, renders, age, memory), kills by reason, recent kills.
    detail             jsonb NOT NULL DEFAULT '{}'::jsonb
);
-- Gone workers: the console's "gone" marking and the cleanup.
CREATE INDEX IF NOT EXISTS export_workers_heartbeat_idx ON export_workers (last_heartbeat);

-- Every console action: who, what, on what, when, and what it did.
CREATE TABLE IF NOT EXISTS export_console_audit (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL CHECK (action IN ('retry_job', 'cancel_job', 'retry_failed_category')),
    target    text NOT NULL,
    outcome   text NOT NULL,
    affected  integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS export_console_audit_at_idx ON export_console_audit (at DESC);

-- Console: the jobs list, newest first, unfiltered or by type.
CREATE INDEX IF NOT EXISTS export_jobs_created_idx ON export_jobs (created_at DESC, id DESC);
-- Console: the last hour's throughput and failure rate (finished jobs by completion
-- time; with the status, read from the index alone).
CREATE INDEX IF NOT EXISTS export_jobs_completed_at_idx ON export_jobs (completed_at) INCLUDE (status)
    WHERE completed_at IS NOT NULL;
-- Console: jobs by status and priority, counted from the index alone (an index-only scan).
CREATE INDEX IF NOT EXISTS export_jobs_status_priority_idx ON export_jobs (status, priority);
-- Console: failed jobs by category (the Actions page), from the index alone.
CREATE INDEX IF NOT EXISTS export_jobs_failed_category_idx ON export_jobs (error_category)
    WHERE status = 'failed';
