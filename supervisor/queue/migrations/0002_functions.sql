-- Triggers and the creation function.

CREATE OR REPLACE FUNCTION export_jobs_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS export_jobs_touch ON export_jobs;
CREATE TRIGGER export_jobs_touch BEFORE UPDATE ON export_jobs
    FOR EACH ROW EXECUTE FUNCTION export_jobs_touch();

-- Status announcements. Channel `export_job_status`, payload
-- {"id", "user_id", "status", "attempts"}; channel `export_jobs_available`
-- wakes idle workers whenever a job becomes pending.
CREATE OR REPLACE FUNCTION export_jobs_announce() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status
       OR NEW.cancel_requested_at IS DISTINCT FROM OLD.cancel_requested_at THEN
        PERFORM pg_notify('export_job_status', json_build_object(
            'id', NEW.id, 'user_id', NEW.user_id, 'status', NEW.status,
            'attempts', NEW.attempts,
            'cancel_requested', NEW.cancel_requested_at IS NOT NULL)::text);
    END IF;
    IF NEW.status = 'pending' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'pending') THEN
        PERFORM pg_notify('export_jobs_available', '');
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS export_jobs_announce ON export_jobs;
CREATE TRIGGER export_jobs_announce AFTER INSERT OR UPDATE ON export_jobs
    FOR EACH ROW EXECUTE FUNCTION export_jobs_announce();

-- The recipient of a job's mail. Replaced on Supabase (0003) to fall back to
-- auth.users.email.
CREATE OR REPLACE FUNCTION export_job_recipient(p_user_id uuid, p_email text) RETURNS text
LANGUAGE sql STABLE AS $$ SELECT p_email $$;

-- create_export_job: the one way jobs are made (Supabase RPC, Python, HTTP API, CLI).
--
-- In one transaction: validates, serialises the user's concurrent calls on an
-- advisory lock so limits hold, honours the idempotency key (a repeat returns the
-- existing job and uses no quota), applies the hourly and pending limits of the
-- user's tier, sets priority and claim order, inserts (the trigger notifies).
--
-- Errors (SQLSTATE, message; DETAIL is JSON for programs):
--   EW422  invalid argument, DETAIL {"field": ...}
--   EW429  over a limit, DETAIL {"limit": "free_user_hourly_limit"|..., "max": n,
--          "retry_after_seconds": n}
CREATE OR REPLACE FUNCTION create_export_job(
    p_user_id         uuid,
    p_export_type     text,
    p_payload         jsonb,
    p_menu_id         uuid    DEFAULT NULL,
    p_subscriber      boolean DEFAULT false,
    p_idempotency_key text    DEFAULT NULL,
    p_email           text    DEFAULT NULL
) RETURNS export_jobs
LANGUAGE plpgsql AS $$
DECLARE
    s            export_queue_settings;
    existing     export_jobs;
    created      export_jobs;
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
    IF p_email IS NOT NULL AND p_email !~ '^[^@\s]+@[^@\s]+\.[^@\s]+$' THEN
        RAISE EXCEPTION 'email is not an address: %', p_email
            USING ERRCODE = 'EW422', DETAIL = '{"field": "email"}';
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
        SELECT * INTO existing FROM export_jobs
         WHERE user_id = p_user_id AND idempotency_key = p_idempotency_key;
        IF FOUND THEN
            RETURN existing;
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
                             subscriber, idempotency_key, notify_email, claim_order)
    VALUES (p_user_id, p_menu_id, p_export_type, p_payload,
            CASE WHEN p_subscriber THEN s.subscriber_priority ELSE s.free_user_priority END,
            s.max_attempts, p_subscriber, p_idempotency_key, p_email,
            extract(epoch FROM now())
              - (CASE WHEN p_subscriber THEN s.subscriber_priority ELSE s.free_user_priority END)
                * s.priority_aging_seconds)
    RETURNING * INTO created;
    RETURN created;
END $$;

-- The seed's manual reset and any other direct write keep claim order sane: a
-- row inserted without create_export_job gets its claim order from its priority.
CREATE OR REPLACE FUNCTION export_jobs_default_claim_order() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    aging double precision;
BEGIN
    IF NEW.claim_order = 0 THEN
        SELECT priority_aging_seconds INTO aging FROM export_queue_settings WHERE id;
        NEW.claim_order := extract(epoch FROM NEW.created_at) - NEW.priority * coalesce(aging, 2.0);
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS export_jobs_default_claim_order ON export_jobs;
CREATE TRIGGER export_jobs_default_claim_order BEFORE INSERT ON export_jobs
    FOR EACH ROW EXECUTE FUNCTION export_jobs_default_claim_order();
