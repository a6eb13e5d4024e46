-- A least-privilege role for `serve` (issue 21): migrations run as the owner
-- (on Supabase: postgres, which owns the realtime publication), the worker runs
-- as a role that may only use the worker's own objects.
--
--   SELECT export_worker_grant_runtime('export_worker');
--
-- grants that role, on every export_* table, sequence and function (and
-- create_export_job): what `serve` uses, nothing else; and, where row-level
-- security is on (Supabase), a policy that lets it see the worker's rows. The
-- role is remembered: `migrate` re-applies the grants after every later
-- migration, so new tables and functions are covered without a new recipe.

CREATE TABLE IF NOT EXISTS export_worker_runtime_roles (
    role_name  name PRIMARY KEY,
    granted_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION export_worker_apply_runtime_grants() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    runtime text;
    obj     record;
BEGIN
    SELECT string_agg(quote_ident(role_name), ', ' ORDER BY role_name) INTO runtime
      FROM export_worker_runtime_roles WHERE to_regrole(quote_ident(role_name)) IS NOT NULL;
    IF runtime IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %s', runtime);
    FOR obj IN
        SELECT p.oid::regprocedure AS sig
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public' AND p.prokind = 'f'
           AND (p.proname LIKE 'export\_%' OR p.proname = 'create_export_job')
           AND p.proname NOT IN ('export_worker_grant_runtime', 'export_worker_apply_runtime_grants',
                                 'export_worker_lock_down')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', obj.sig, runtime);
    END LOOP;
    FOR obj IN
        SELECT c.oid::regclass AS rel, c.relkind, c.relrowsecurity
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S')
           AND c.relname LIKE 'export\_%' AND c.relname <> 'export_worker_runtime_roles'
    LOOP
        IF obj.relkind = 'S' THEN
            EXECUTE format('GRANT USAGE, SELECT, UPDATE ON SEQUENCE %s TO %s', obj.rel, runtime);
            CONTINUE;
        END IF;
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE %s TO %s', obj.rel, runtime);
        IF obj.relrowsecurity THEN
            EXECUTE format('DROP POLICY IF EXISTS export_worker_runtime ON %s', obj.rel);
            EXECUTE format('CREATE POLICY export_worker_runtime ON %s TO %s USING (true) WITH CHECK (true)',
                           obj.rel, runtime);
        END IF;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION export_worker_grant_runtime(p_role name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regrole(quote_ident(p_role)) IS NULL THEN
        RAISE EXCEPTION 'role "%" does not exist: CREATE ROLE it first', p_role;
    END IF;
    INSERT INTO export_worker_runtime_roles (role_name) VALUES (p_role) ON CONFLICT DO NOTHING;
    PERFORM export_worker_apply_runtime_grants();
END $$;
