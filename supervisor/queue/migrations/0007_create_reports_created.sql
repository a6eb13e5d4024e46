-- create_export_job tells its caller whether it created the job (`created`), so
-- no caller has to guess by looking first; the recipient is the argument or,
-- when that is null, the payload's `email` (one name: `email`).
--
-- The return type is export_jobs' row plus `created boolean`: every column a
-- caller read before is still there (`SELECT * FROM create_export_job(...)`,
-- `supabase.rpc(...).data.id`). The view gives that row type a name; a later
-- migration that adds a column to export_jobs recreates it (DROP ... CASCADE
-- drops the function too, so recreate both) to return the new column as well.
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
    p_email           text    DEFAULT NULL
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
                             subscriber, idempotency_key, notify_email, claim_order)
    VALUES (p_user_id, p_menu_id, p_export_type, p_payload,
            CASE WHEN p_subscriber THEN s.subscriber_priority ELSE s.free_user_priority END,
            s.max_attempts, p_subscriber, p_idempotency_key, recipient,
            extract(epoch FROM now())
              - (CASE WHEN p_subscriber THEN s.subscriber_priority ELSE s.free_user_priority END)
                * s.priority_aging_seconds)
    RETURNING * INTO result;
    result.created := true;
    RETURN result;
END $$;

-- Supabase: only the service role may create jobs (as 0003 set it up; the drop
-- above took the grant with the old function).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'auth')
       AND to_regclass('auth.users') IS NOT NULL
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        EXECUTE 'REVOKE ALL ON FUNCTION create_export_job(uuid, text, jsonb, uuid, boolean, text, text) FROM PUBLIC';
        EXECUTE 'GRANT EXECUTE ON FUNCTION create_export_job(uuid, text, jsonb, uuid, boolean, text, text) TO service_role';
    END IF;
END $$;
