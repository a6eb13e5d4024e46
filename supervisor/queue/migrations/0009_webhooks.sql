-- Webhooks (issue 16): a job may name a webhook_url; its completion and its
-- final failure each write one row to export_webhook_outbox in the same
-- statement as the status change (supervisor/queue/queries/queue.sql), sent by any
-- worker's webhook sender (supervisor/delivery/webhooks.py) with leases like the mail outbox.
--
-- webhook_id is made once per (job, event) when the row is written, so every
-- retry of that event carries the same `webhook-id` header (receivers
-- de-duplicate on it).
ALTER TABLE export_jobs ADD COLUMN IF NOT EXISTS webhook_url text;
-- WEBHOOK_DEFAULT_URL, written by `migrate` and `serve` (sync_queue_settings):
-- the webhook of every job created without one, by any path.
ALTER TABLE export_queue_settings ADD COLUMN IF NOT EXISTS webhook_default_url text;

CREATE TABLE IF NOT EXISTS export_webhook_outbox (
    id            bigserial PRIMARY KEY,
    job_id        uuid NOT NULL REFERENCES export_jobs (id) ON DELETE CASCADE,
    event         text NOT NULL CHECK (event IN ('export.completed', 'export.failed')),
    webhook_id    text NOT NULL UNIQUE DEFAULT 'msg_' || replace(gen_random_uuid()::text, '-', ''),
    url           text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    available_at  timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 0,
    locked_by     text,
    locked_until  timestamptz,
    delivered_at  timestamptz,
    disabled_at   timestamptz,
    gave_up_at    timestamptz,
    last_status   integer,
    last_error    text,
    UNIQUE (job_id, event)
);
CREATE INDEX IF NOT EXISTS export_webhook_outbox_due_idx
    ON export_webhook_outbox (available_at)
 WHERE delivered_at IS NULL AND disabled_at IS NULL AND gave_up_at IS NULL;

-- create_export_job takes p_webhook_url and returns the new column: the view and
-- the function are recreated together (see 0007).
DROP FUNCTION IF EXISTS create_export_job(uuid, text, jsonb, uuid, boolean, text, text);
DROP VIEW IF EXISTS export_job_created;
CREATE VIEW export_job_created AS SELECT export_jobs.*, false AS created FROM export_jobs WHERE false;

CREATE OR REPLACE FUNCTION create_export_job(
    p_user_id         uuid,
    p_export_type     text,
    p_payload         jsonb,
    p_menu_id         uuid    DEFAULT NULL,
    p_subscriber      boolean DEFAULT false,
    p_idempotency_key text    DEFAULT NULL,
    p_email           text    DEFAULT NULL,
    p_webhook_url     text    DEFAULT NULL
) RETURNS export_job_created
LANGUAGE plpgsql AS $$
DECLARE
    s            export_queue_settings;
    result       export_job_created;
    recipient    text := coalesce(p_email, p_payload ->> 'email');
    hourly_used  integer;
    open_used    integer;
    hourly_max   integer;
    open_max     integer;
    oldest       timestamptz;
    tier         text := CASE WHEN p_subscriber THEN 'subscriber' ELSE 'free_user' END;
    retry_after  integer;
BEGIN
    IF p_user_id IS NULL THEN
        RAISE EXCEPTION 'user_id is required' USING ERRCODE = 'EW422', DETAIL = '{"field": "user_id"}';
    END IF;
    IF p_export_type IS NULL OR p_export_type NOT IN ('pdf', 'image') THEN
        RAISE EXCEPTION 'export_type must be pdf or image, got %', coalesce(p_export_type, 'null')
            USING ERRCODE = 'EW422', DETAIL = '{"field": "export_type"}';
    END IF;
    IF p_payload IS NULL OR jsonb_typeof(p_payload) <> 'object'
       OR coalesce(jsonb_typeof(p_payload -> 'source'), '') <> 'object'
       OR coalesce(p_payload #>> '{source,kind}', '') <> ALL (ARRAY['html', 'menu', 'url', 'test-template']) THEN
        RAISE EXCEPTION 'payload.source.kind must be html, menu or url'
            USING ERRCODE = 'EW422', DETAIL = '{"field": "payload.source.kind"}';
    END IF;
    IF p_idempotency_key IS NOT NULL AND (length(p_idempotency_key) = 0 OR length(p_idempotency_key) > 200) THEN
        RAISE EXCEPTION 'idempotency_key must be 1 to 200 characters'
            USING ERRCODE = 'EW422', DETAIL = '{"field": "idempotency_key"}';
    END IF;
    IF recipient IS NOT NULL AND recipient !~ '^[^@\s]+@[^@\s]+\.[^@\s]+$' THEN
        RAISE EXCEPTION 'email is not an address: %', recipient
            USING ERRCODE = 'EW422',
                  DETAIL = json_build_object('field', CASE WHEN p_email IS NULL THEN 'payload.email' ELSE 'email' END)::text;
    END IF;
    -- The full target rules (https, resolved addresses, WEBHOOK_ALLOWED_HOSTS) need
    -- DNS and the worker's settings: the API and the CLI apply them before calling;
    -- here at least nothing but an http(s) URL is stored.
    IF p_webhook_url IS NOT NULL AND (p_webhook_url !~* '^https?://[^/?#@\s]+([/?#]\S*)?$'
                                      OR length(p_webhook_url) > 2048) THEN
        RAISE EXCEPTION 'webhook_url must be an http(s) URL of at most 2048 characters, got %', left(p_webhook_url, 100)
            USING ERRCODE = 'EW422', DETAIL = '{"field": "webhook_url"}';
    END IF;
    SELECT * INTO s FROM export_queue_settings WHERE id;
    IF octet_length(p_payload::text) > s.max_payload_bytes THEN
        RAISE EXCEPTION 'payload is % bytes, more than the limit of %', octet_length(p_payload::text), s.max_payload_bytes
            USING ERRCODE = 'EW422', DETAIL = '{"field": "payload"}';
    END IF;

    -- One user's creations run one at a time, so two concurrent calls can
    -- never both pass a limit that only one of them fits.
    PERFORM pg_advisory_xact_lock(7312001, hashtext(p_user_id::text));

    IF p_idempotency_key IS NOT NULL THEN
        SELECT j.*, false INTO result FROM export_jobs j
         WHERE j.user_id = p_user_id AND j.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            RETURN result;
        END IF;
    END IF;

    hourly_max := CASE WHEN p_subscriber THEN s.subscriber_hourly_limit ELSE s.free_user_hourly_limit END;
    open_max   := CASE WHEN p_subscriber THEN s.subscriber_pending_limit ELSE s.free_user_pending_limit END;

    SELECT count(*) INTO hourly_used FROM export_jobs
     WHERE user_id = p_user_id AND created_at > now() - interval '60 minutes';
    IF hourly_used >= hourly_max THEN
        -- The user is under the limit again once this job leaves the window.
        SELECT created_at INTO oldest FROM export_jobs
         WHERE user_id = p_user_id AND created_at > now() - interval '60 minutes'
         ORDER BY created_at OFFSET hourly_used - hourly_max LIMIT 1;
        retry_after := greatest(1, ceil(extract(epoch FROM coalesce(oldest, now()) + interval '60 minutes' - now())));
        RAISE EXCEPTION 'hourly limit reached: % may create % exports per hour; try again in % s',
            replace(tier, '_', ' ') || 's', hourly_max, retry_after
            USING ERRCODE = 'EW429',
                  DETAIL = json_build_object('limit', tier || '_hourly_limit', 'max', hourly_max,
                                             'retry_after_seconds', retry_after)::text;
    END IF;

    SELECT count(*) INTO open_used FROM export_jobs
     WHERE user_id = p_user_id AND status IN ('pending', 'processing');
    IF open_used >= open_max THEN
        RAISE EXCEPTION 'pending limit reached: % may have % exports pending or processing; try again when one finishes',
            replace(tier, '_', ' ') || 's', open_max
            USING ERRCODE = 'EW429',
                  DETAIL = json_build_object('limit', tier || '_pending_limit', 'max', open_max,
                                             'retry_after_seconds', 30)::text;
    END IF;

    INSERT INTO export_jobs (user_id, menu_id, export_type, payload, priority, max_attempts,
                             subscriber, idempotency_key, notify_email, claim_order, webhook_url)
    VALUES (p_user_id, p_menu_id, p_export_type, p_payload,
            CASE WHEN p_subscriber THEN s.subscriber_priority ELSE s.free_user_priority END,
            s.max_attempts, p_subscriber, p_idempotency_key, recipient,
            extract(epoch FROM now())
              - (CASE WHEN p_subscriber THEN s.subscriber_priority ELSE s.free_user_priority END)
                * s.priority_aging_seconds,
            coalesce(p_webhook_url, s.webhook_default_url))
    RETURNING * INTO result;
    result.created := true;
    RETURN result;
END $$;


-- The lock-down grants the service role whatever signature create_export_job has
-- (0004 named the seven-argument one, which no longer exists).
CREATE OR REPLACE FUNCTION export_worker_lock_down() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    api_roles  text;
    obj        record;
    supabase   boolean := to_regclass('auth.users') IS NOT NULL;
BEGIN
    SELECT string_agg(quote_ident(rolname), ', ' ORDER BY rolname) INTO api_roles
      FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role');

    FOR obj IN
        SELECT p.oid::regprocedure AS sig
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public' AND p.prokind = 'f'
           AND (p.proname LIKE 'export\_%' OR p.proname = 'create_export_job')
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', obj.sig);
        IF api_roles IS NOT NULL THEN
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %s', obj.sig, api_roles);
        END IF;
    END LOOP;

    FOR obj IN
        SELECT c.oid::regclass AS rel, c.relkind
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
           AND c.relname LIKE 'export\_%'
    LOOP
        EXECUTE format('REVOKE ALL ON %s %s FROM PUBLIC',
                       CASE WHEN obj.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, obj.rel);
        IF api_roles IS NOT NULL THEN
            EXECUTE format('REVOKE ALL ON %s %s FROM %s',
                           CASE WHEN obj.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, obj.rel, api_roles);
        END IF;
        -- On Supabase every worker table has row-level security: a grant added by
        -- mistake later still shows no row to an API role without a policy.
        IF supabase AND obj.relkind IN ('r', 'p') THEN
            EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', obj.rel);
        END IF;
    END LOOP;

    IF to_regrole('service_role') IS NOT NULL THEN
        -- Whatever create_export_job's signature is now (0009 added webhook_url).
        FOR obj IN
            SELECT p.oid::regprocedure AS sig
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'public' AND p.proname = 'create_export_job'
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO service_role', obj.sig);
        END LOOP;
        GRANT SELECT, INSERT ON export_jobs TO service_role;
        GRANT SELECT ON export_queue_settings TO service_role;
    END IF;
    IF supabase AND to_regrole('authenticated') IS NOT NULL THEN
        GRANT SELECT ON export_jobs TO authenticated;  -- own rows only: export_jobs_owner_read
    END IF;
END $$;


