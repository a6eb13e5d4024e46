-- One outbox engine (issue 25): what a final status queues, written once, and the
-- two outbox tables given the same shape so one set of queries drives both
-- (supervisor/delivery/outbox.py, queries/outbox.sql).

-- Moving a job to a final status queues its notices: the mail (when the job has a
-- recipient) and the webhook (when it names a URL), once per job and kind/event
-- whatever path got it there (completion, final failure, stale rescue). Called
-- with the job's row as it is after the change (a RETURNING j), so it reads no
-- table the calling statement writes. Returns which outbox got a row, so the
-- caller wakes only that sender. A cancelled job queues nothing.
CREATE OR REPLACE FUNCTION export_job_queue_notices(p_job export_jobs)
RETURNS TABLE (mail boolean, webhook boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_recipient text;
BEGIN
    mail := false;
    webhook := false;
    IF p_job.status IN ('completed', 'failed') THEN
        v_recipient := export_job_recipient(p_job.user_id, p_job.notify_email);
        IF v_recipient IS NOT NULL THEN
            INSERT INTO export_mail_outbox (job_id, kind, recipient)
            VALUES (p_job.id, p_job.status, v_recipient)
            ON CONFLICT (job_id, kind) DO NOTHING;
            mail := true;
        END IF;
        IF p_job.webhook_url IS NOT NULL THEN
            INSERT INTO export_webhook_outbox (job_id, event, url)
            VALUES (p_job.id, 'export.' || p_job.status, p_job.webhook_url)
            ON CONFLICT (job_id, event) DO NOTHING;
            webhook := true;
        END IF;
    END IF;
    RETURN NEXT;
END $$;

-- The same columns in both outboxes, so the engine's lease, fence and outcome
-- writes are one set of queries: a mail may now end "disabled" too (never used
-- yet) and keeps the provider's last status code.
ALTER TABLE export_mail_outbox ADD COLUMN IF NOT EXISTS disabled_at timestamptz;
ALTER TABLE export_mail_outbox ADD COLUMN IF NOT EXISTS last_status integer;

-- Where a send goes, for the per-target concurrency limit: a slow webhook receiver
-- holds up only its own deliveries. A webhook's target is its URL's origin
-- (scheme, host, port); every mail goes through the one mail provider.
ALTER TABLE export_webhook_outbox ADD COLUMN IF NOT EXISTS target text
    GENERATED ALWAYS AS (lower(substring(url FROM '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]+'))) STORED;
ALTER TABLE export_mail_outbox ADD COLUMN IF NOT EXISTS target text
    GENERATED ALWAYS AS ('mail') STORED;
