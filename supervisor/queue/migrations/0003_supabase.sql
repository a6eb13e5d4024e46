-- Supabase only: row-level security, the recipient from auth.users, the
-- realtime publication. Everywhere else each step is skipped harmlessly.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'auth')
       AND to_regclass('auth.users') IS NOT NULL THEN
        -- Users read only their own jobs; writes go through create_export_job
        -- (executed by the web app's service role) and the worker.
        EXECUTE 'ALTER TABLE export_jobs ENABLE ROW LEVEL SECURITY';
        EXECUTE 'DROP POLICY IF EXISTS export_jobs_owner_read ON export_jobs';
        EXECUTE 'CREATE POLICY export_jobs_owner_read ON export_jobs FOR SELECT USING (auth.uid() = user_id)';
        EXECUTE 'ALTER TABLE export_mail_outbox ENABLE ROW LEVEL SECURITY';
        EXECUTE 'ALTER TABLE export_queue_settings ENABLE ROW LEVEL SECURITY';
        EXECUTE $f$
            CREATE OR REPLACE FUNCTION export_job_recipient(p_user_id uuid, p_email text) RETURNS text
            LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, auth AS
            'SELECT coalesce(p_email, (SELECT email FROM auth.users WHERE id = p_user_id))'
        $f$;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
            EXECUTE 'REVOKE ALL ON FUNCTION create_export_job(uuid, text, jsonb, uuid, boolean, text, text) FROM PUBLIC';
            EXECUTE 'GRANT EXECUTE ON FUNCTION create_export_job(uuid, text, jsonb, uuid, boolean, text, text) TO service_role';
        END IF;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime')
       AND NOT EXISTS (SELECT 1 FROM pg_publication_tables
                        WHERE pubname = 'supabase_realtime' AND tablename = 'export_jobs') THEN
        EXECUTE 'ALTER PUBLICATION supabase_realtime ADD TABLE export_jobs';
    END IF;
END $$;
