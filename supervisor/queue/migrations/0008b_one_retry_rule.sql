-- One rule decides whether a failed attempt is retried or final, for every path
-- (a render's failure, a killed child, a stale claim): export_job_is_final.
-- A job whose render killed its child (time or memory) POISON_KILL_LIMIT times is
-- final too (category resource), however many attempts it has left. The count is
-- metadata.child_kills (no new column: create_export_job returns export_jobs' row
-- type, see 0007).
ALTER TABLE export_queue_settings ADD COLUMN IF NOT EXISTS poison_kill_limit int NOT NULL DEFAULT 2;

CREATE OR REPLACE FUNCTION export_job_is_final(
    p_category text, p_attempts int, p_max_attempts int, p_child_kills int
) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT p_category NOT IN ('transient', 'resource')
        OR p_attempts >= p_max_attempts
        OR p_child_kills >= coalesce((SELECT poison_kill_limit FROM export_queue_settings WHERE id), 2)
$$;

-- Where a retried job stands in line: as if created when it becomes available
-- again, so a job that killed its child waits behind work that came after it.
CREATE OR REPLACE FUNCTION export_job_requeue_order(p_available_at timestamptz, p_priority int)
RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT extract(epoch FROM p_available_at)
         - p_priority * coalesce((SELECT priority_aging_seconds FROM export_queue_settings WHERE id), 2.0)
$$;
