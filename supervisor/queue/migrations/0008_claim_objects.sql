-- Each claim writes its own object ({user_id}/{job_id}/{attempt}.{ext}), so a
-- worker that lost its claim can never replace a finished job's file. Before
-- uploading, a claim records its key here (in the same statement as its fence
-- check); the fenced completion removes the winner's entry. What stays behind
-- belongs to a claim that lost or died, and retention's orphan sweep deletes
-- those objects once they are older than any claim could still be writing.
-- No foreign key: an entry must outlive its job row (retention may delete the
-- row first, and the late object must still be found).
CREATE TABLE IF NOT EXISTS export_uploads (
    storage_key text PRIMARY KEY,
    job_id      uuid NOT NULL,
    attempt     int NOT NULL,
    worker_id   text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS export_uploads_started_at ON export_uploads (started_at);
