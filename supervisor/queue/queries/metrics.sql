-- Queries /metrics runs at scrape time.

-- name: jobs_created
-- Jobs ever created, by export type (migration 0005's counter).
SELECT export_type, sum(created)::bigint AS created FROM export_jobs_created_counts GROUP BY export_type;
