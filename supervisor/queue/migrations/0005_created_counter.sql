-- export_jobs_created_total counts every job created, by any path: the
-- create_export_job function (Supabase RPC, the HTTP API, the CLI, another
-- worker) or a direct INSERT. A trigger counts inserts into a table of its own,
-- so the count survives retention deleting the rows; /metrics reads the sums.
--
-- Concurrent inserts add to one of 16 slots (by backend pid) rather than one
-- row, so creators do not queue on a single row lock until they commit.
CREATE TABLE IF NOT EXISTS export_jobs_created_counts (
    export_type text     NOT NULL,
    slot        smallint NOT NULL,
    created     bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (export_type, slot)
);

-- SECURITY DEFINER: the web app's role may create jobs without any right on
-- the counter table.
CREATE OR REPLACE FUNCTION export_jobs_count_created() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO export_jobs_created_counts AS c (export_type, slot, created)
    SELECT export_type, (pg_backend_pid() % 16)::smallint, count(*) FROM new_rows GROUP BY export_type
    ON CONFLICT (export_type, slot) DO UPDATE SET created = c.created + excluded.created;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS export_jobs_count_created ON export_jobs;
CREATE TRIGGER export_jobs_count_created AFTER INSERT ON export_jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION export_jobs_count_created();

-- Jobs that exist already were created too (those retention has deleted are lost).
INSERT INTO export_jobs_created_counts (export_type, slot, created)
SELECT export_type, 0, count(*) FROM export_jobs GROUP BY export_type
ON CONFLICT (export_type, slot) DO NOTHING;

-- Supabase: no API role reads or writes the counters directly (as 0003 does
-- for the worker's other tables).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'auth')
       AND to_regclass('auth.users') IS NOT NULL THEN
        EXECUTE 'ALTER TABLE export_jobs_created_counts ENABLE ROW LEVEL SECURITY';
    END IF;
END $$;
