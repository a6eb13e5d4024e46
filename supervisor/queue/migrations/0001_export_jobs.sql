-- The queue table. Column names and meanings are a contract (DESIGN.md section 3):
-- the seed's own troubleshooting and maintenance SQL runs against them unchanged.
CREATE TABLE IF NOT EXISTS export_jobs (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid NOT NULL,
    menu_id          uuid,
    export_type      text NOT NULL CHECK (export_type IN ('pdf', 'image')),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    priority         integer NOT NULL DEFAULT 10,
    worker_id        text,
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    available_at     timestamptz NOT NULL DEFAULT now(),
    heartbeat_at     timestamptz,
    error_message    text,
    error_category   text CHECK (error_category IN ('transient', 'permanent', 'resource', 'validation')),
    storage_path     text,
    file_url         text,
    file_size_bytes  bigint,
    payload          jsonb NOT NULL,
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Beyond the contract.
    subscriber       boolean NOT NULL DEFAULT false,
    idempotency_key  text,
    notify_email     text,
    -- Lower is claimed first: epoch(created_at) - priority * priority_aging_seconds.
    -- Ageing folded into one constant per row, so the claim can walk an index.
    claim_order      double precision NOT NULL DEFAULT 0,
    cancel_requested_at timestamptz,
    error_history    jsonb NOT NULL DEFAULT '[]'::jsonb,
    content_type     text,
    file_deleted_at  timestamptz
);

-- Claim: pending jobs in claim order.
CREATE INDEX IF NOT EXISTS export_jobs_claim_idx
    ON export_jobs (claim_order) WHERE status = 'pending';
-- Stale rescue: processing jobs by heartbeat.
CREATE INDEX IF NOT EXISTS export_jobs_processing_heartbeat_idx
    ON export_jobs (heartbeat_at) WHERE status = 'processing';
-- Retention and the seed's cleanup DELETEs.
CREATE INDEX IF NOT EXISTS export_jobs_status_created_idx
    ON export_jobs (status, created_at);
-- Per-user limits: jobs created in the last hour, and open jobs.
CREATE INDEX IF NOT EXISTS export_jobs_user_created_idx
    ON export_jobs (user_id, created_at DESC);
CREATE INDEX IF NOT EXISTS export_jobs_user_open_idx
    ON export_jobs (user_id) WHERE status IN ('pending', 'processing');
CREATE UNIQUE INDEX IF NOT EXISTS export_jobs_idempotency_idx
    ON export_jobs (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- Exactly-once mail: one row per job and kind, written in the same transaction
-- as the status change, drained by any worker's sender.
CREATE TABLE IF NOT EXISTS export_mail_outbox (
    id            bigserial PRIMARY KEY,
    job_id        uuid NOT NULL REFERENCES export_jobs (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('completed', 'failed')),
    recipient     text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    available_at  timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 0,
    locked_by     text,
    locked_until  timestamptz,
    sent_at       timestamptz,
    gave_up_at    timestamptz,
    last_error    text,
    UNIQUE (job_id, kind)
);
CREATE INDEX IF NOT EXISTS export_mail_outbox_due_idx
    ON export_mail_outbox (available_at) WHERE sent_at IS NULL AND gave_up_at IS NULL;

-- The worker's limits and priorities, written by `migrate` and `serve` from the
-- configuration, read by the creation function (which a web app may call directly).
CREATE TABLE IF NOT EXISTS export_queue_settings (
    id                        boolean PRIMARY KEY DEFAULT true CHECK (id),
    free_user_hourly_limit    integer NOT NULL DEFAULT 10,
    subscriber_hourly_limit   integer NOT NULL DEFAULT 50,
    free_user_pending_limit   integer NOT NULL DEFAULT 5,
    subscriber_pending_limit  integer NOT NULL DEFAULT 20,
    subscriber_priority       integer NOT NULL DEFAULT 100,
    free_user_priority        integer NOT NULL DEFAULT 10,
    priority_aging_seconds    double precision NOT NULL DEFAULT 2.0,
    max_attempts              integer NOT NULL DEFAULT 3,
    max_payload_bytes         integer NOT NULL DEFAULT 2000000,
    updated_at                timestamptz NOT NULL DEFAULT now()
);
INSERT INTO export_queue_settings (id) VALUES (true) ON CONFLICT (id) DO NOTHING;
