-- One outbox engine (issue 25): what a final status queues, written once.

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
