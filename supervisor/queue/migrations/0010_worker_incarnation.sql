-- Which process a worker row describes (issue 17: the stale rescue reads the workers
-- table). registered_at is the database's clock when this process of the worker
-- first wrote its row; the row's upsert resets it when host, pid or start time
-- change, i.e. when WORKER_ID (say railway-$RAILWAY_REPLICA_ID after a crash)
-- comes back as a new process. A worker claims nothing before its row is written,
-- so a claim that started before its worker's registered_at belongs to a process
-- that is gone, and the stale rescue returns it at once instead of after
-- STALE_AFTER_SECONDS. One clock (the database's): no skew between hosts.
ALTER TABLE export_workers ADD COLUMN IF NOT EXISTS registered_at timestamptz NOT NULL DEFAULT now();
