-- Least privilege for every object the worker's migrations create.
--
-- Functions: EXECUTE is revoked from PUBLIC (PostgreSQL grants it by default) and
-- from Supabase's API roles (Supabase's default privileges grant it to anon,
-- authenticated and service_role in schema public, and PostgREST exposes every
-- such function at /rest/v1/rpc/...). Only `service_role` gets one back:
-- create_export_job, for the web app. Everything else is the worker's own (the role
-- that runs these migrations owns the objects and keeps every right).
-- Tables: no right for PUBLIC or anon; `authenticated` may SELECT export_jobs, and
-- the row-level policy of 0003 shows it only its own rows; it writes nothing.
-- `service_role` may read and insert jobs and read the queue settings: what
-- create_export_job (SECURITY INVOKER) needs; it bypasses row-level security.
--
-- Worker objects are the tables, sequences and functions in schema public named
-- export_* plus create_export_job. migrate.py runs export_worker_lock_down() in the
-- transaction of every later migration, so what a later migration adds is locked
-- down before it is ever committed.

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
        GRANT EXECUTE ON FUNCTION create_export_job(uuid, text, jsonb, uuid, boolean, text, text) TO service_role;
        GRANT SELECT, INSERT ON export_jobs TO service_role;
        GRANT SELECT ON export_queue_settings TO service_role;
    END IF;
    IF supabase AND to_regrole('authenticated') IS NOT NULL THEN
        GRANT SELECT ON export_jobs TO authenticated;  -- own rows only: export_jobs_owner_read
    END IF;
END $$;

SELECT export_worker_lock_down();

-- New functions start revoked from PUBLIC, and new objects in public get nothing
-- for the API roles, whoever adds them later as this role. Default privileges
-- belong to the role that creates the objects: on Supabase, when that role is
-- `postgres` (the web app's own), they would change the app's defaults too, so
-- they are left alone there and migrate.py's lock-down does the work; give the
-- worker a role of its own (README, Security model) to get both.
DO $$
DECLARE
    api_roles text;
BEGIN
    IF to_regclass('auth.users') IS NOT NULL AND current_user IN ('postgres', 'supabase_admin') THEN
        RAISE NOTICE 'export worker: running as %, shared with the app: default privileges unchanged', current_user;
        RETURN;
    END IF;
    ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
    SELECT string_agg(quote_ident(rolname), ', ' ORDER BY rolname) INTO api_roles
      FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role');
    IF api_roles IS NOT NULL THEN
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM %s', api_roles);
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM %s', api_roles);
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON FUNCTIONS FROM %s', api_roles);
    END IF;
END $$;
