-- Console sign-outs (issue 22). A console session is a signed cookie, not a row, so
-- signing out records the session's nonce here until the cookie would have expired
-- anyway; every worker behind the load balancer checks it on each console request,
-- so a copied cookie stops working everywhere the moment its operator signs out.
-- Rows past expires_at are deleted at the next sign-out.
CREATE TABLE IF NOT EXISTS export_console_signouts (
    nonce text PRIMARY KEY,
    operator text NOT NULL,
    expires_at timestamptz NOT NULL,
    signed_out_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS export_console_signouts_expires ON export_console_signouts (expires_at);
