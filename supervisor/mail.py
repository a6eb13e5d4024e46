"""Completion and failure mails: composing them, and three ways to send them.

- :class:`SendGridMail` through the `sendgrid` client (``SENDGRID_API_KEY``),
- :class:`SmtpMail` with smtplib for self-hosters (``SMTP_HOST``),
- :class:`EmlFileMail`, the embedded default: one ``.eml`` file per job and kind.

A backend raises :class:`MailError`; ``transient`` says whether the outbox should
try again later (5xx, 429, connection problems) or give up (other 4xx).
"""

from __future__ import annotations

import contextlib
import html
import http.client
import json
import os
import re
import secrets
import smtplib
import ssl
import urllib.error
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from shared.config import Settings

JOB_ID_HEADER = "X-Export-Job-Id"


class OutgoingMail(msgspec.Struct, kw_only=True):
    to: str
    subject: str
    text: str
    html: str
    kind: str  # "completed" | "failed"
    job_id: str
    template_data: dict[str, str] = msgspec.field(default_factory=dict)


class MailError(Exception):
    """Sending failed; `transient` says whether a later try may succeed."""

    def __init__(self, transient: bool, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.message = message
        self.status = status


@runtime_checkable
class MailBackend(Protocol):
    def send(self, mail: OutgoingMail) -> None:
        """Deliver one mail or raise MailError."""


# ---- composing ---------------------------------------------------------------


def _type_words(export_type: str) -> str:
    return "PDF" if export_type == "pdf" else "image" if export_type == "image" else export_type


_REASON_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("cancel",), "the export was cancelled"),
    (("storage", "bucket", "upload"), "the file could not be stored"),
    (("timed out", "timeout", "took too long", "deadline"), "the page took too long to render"),
    (("memory", "oom"), "the page needed more memory than an export may use"),
    (("max_input", "input too large", "document too large"), "the document is larger than allowed"),
    (("max_pages", "page count", "too many pages", "pages"), "the document has more pages than allowed"),
    (("pixel",), "the image would be larger than allowed"),
    (("max_output", "too large", "output size", "bytes"), "the file would be larger than allowed"),
    (("blocked", "not allowed", "allowlist"), "the page tried to load something that is not allowed"),
)


def plain_reason(category: str, message: str) -> str:
    """A failure in plain words for the user (no internals, no stack traces)."""
    lowered = (message or "").lower()
    for needles, words in _REASON_RULES:
        if any(n in lowered for n in needles):
            return words
    if category == "validation":
        short = (message or "").strip().splitlines()[0] if message and message.strip() else ""
        if not short:
            return "the document could not be read"
        return f"the document could not be read ({short[:200]})"
    if category == "resource":
        return "the export needed more resources than are available"
    if category == "transient":
        return "a temporary problem kept the export from finishing, even after several tries"
    return "the export could not be completed"


def _wrap_html(title: str, body_html: str) -> str:
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>\n"
        f'<body style="font-family: sans-serif; line-height: 1.5">\n{body_html}\n</body></html>\n'
    )


def compose_completed(
    job_id: str,
    export_type: str,
    download_url: str,
    expires_at_iso: str,
    from_name: str = "Exports",
    *,
    to: str = "",
) -> OutgoingMail:
    what = _type_words(export_type)
    subject = f"Your {what} export is ready"
    text = (
        f"Hello,\n\nyour {what} export is ready. Download it here:\n\n{download_url}\n\n"
        f"The link works until {expires_at_iso}.\n\nJob: {job_id}\n\n-- {from_name}\n"
    )
    e = html.escape
    body = (
        f"<p>Hello,</p>\n<p>your {e(what)} export is ready.</p>\n"
        f'<p><a href="{e(download_url, quote=True)}">Download your {e(what)}</a></p>\n'
        f"<p>The link works until {e(expires_at_iso)}.<br>"
        f"If the button does not work, copy this address: {e(download_url)}</p>\n"
        f'<p style="color:#666">Job: {e(job_id)}<br>&mdash; {e(from_name)}</p>'
    )
    return OutgoingMail(
        to=to,
        subject=subject,
        text=text,
        html=_wrap_html(subject, body),
        kind="completed",
        job_id=job_id,
        template_data={
            "status": "completed",
            "subject": subject,
            "job_id": job_id,
            "export_type": export_type,
            "download_url": download_url,
            "expires_at": expires_at_iso,
            "from_name": from_name,
        },
    )


def compose_failed(
    job_id: str,
    export_type: str,
    reason_in_plain_words: str,
    from_name: str = "Exports",
    *,
    to: str = "",
) -> OutgoingMail:
    what = _type_words(export_type)
    subject = f"Your {what} export could not be completed"
    text = (
        f"Hello,\n\nyour {what} export could not be completed: {reason_in_plain_words}.\n\n"
        f"You can try again; if it keeps failing, reply with the job id below.\n\n"
        f"Job: {job_id}\n\n-- {from_name}\n"
    )
    e = html.escape
    body = (
        f"<p>Hello,</p>\n<p>your {e(what)} export could not be completed: "
        f"<strong>{e(reason_in_plain_words)}</strong>.</p>\n"
        "<p>You can try again; if it keeps failing, reply with the job id below.</p>\n"
        f'<p style="color:#666">Job: {e(job_id)}<br>&mdash; {e(from_name)}</p>'
    )
    return OutgoingMail(
        to=to,
        subject=subject,
        text=text,
        html=_wrap_html(subject, body),
        kind="failed",
        job_id=job_id,
        template_data={
            "status": "failed",
            "subject": subject,
            "job_id": job_id,
            "export_type": export_type,
            "reason": reason_in_plain_words,
            "from_name": from_name,
        },
    )


def to_email_message(mail: OutgoingMail, from_email: str) -> EmailMessage:
    """An RFC 5322 multipart/alternative message (text/plain + text/html)."""
    msg = EmailMessage()
    msg["From"] = from_email
    if mail.to:
        msg["To"] = mail.to
    msg["Subject"] = mail.subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    domain = from_email.rsplit("@", 1)[-1] if "@" in from_email else None
    msg["Message-ID"] = make_msgid(idstring=f"{mail.job_id}.{mail.kind}", domain=domain)
    msg[JOB_ID_HEADER] = mail.job_id
    msg.set_content(mail.text)
    msg.add_alternative(mail.html, subtype="html")
    return msg


def _require_recipient(mail: OutgoingMail) -> None:
    if not mail.to or "@" not in mail.to:
        raise MailError(False, f"mail for job {mail.job_id} has no valid recipient ({mail.to!r})")


# ---- SendGrid ----------------------------------------------------------------


def _sendgrid_message(body: bytes | str | None) -> str:
    if not body:
        return ""
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        data = json.loads(raw)
    except ValueError:
        return raw[:500]
    errors = data.get("errors") if isinstance(data, dict) else None
    if isinstance(errors, list) and errors:
        parts = []
        for item in errors:
            if isinstance(item, dict):
                msg = str(item.get("message", ""))
                field = item.get("field")
                parts.append(f"{msg} (field {field})" if field else msg)
        return "; ".join(p for p in parts if p)
    return raw[:500]


class SendGridMail:
    """SendGrid v3 mail/send through the official client, with a bounded timeout."""

    def __init__(
        self,
        api_key: str,
        from_email: str,
        template_id: str = "",
        base_url: str = "https://api.sendgrid.com",
        timeout: float = 15,
    ) -> None:
        import sendgrid

        self.from_email = from_email
        self.template_id = template_id
        self.timeout = timeout
        self._client: Any = sendgrid.SendGridAPIClient(api_key=api_key, host=base_url.rstrip("/"))
        # python_http_client passes Client.timeout to urllib's opener.open(); child
        # clients built per request inherit it. Without it a stalled socket waits forever.
        self._client.client.timeout = timeout

    def build(self, mail: OutgoingMail) -> Any:
        """The sendgrid Mail object for `mail` (public for tests and debugging)."""
        from sendgrid.helpers.mail import CustomArg, Header, Mail

        if self.template_id:
            message = Mail(from_email=self.from_email, to_emails=mail.to)
            message.template_id = self.template_id
            message.dynamic_template_data = dict(mail.template_data)
        else:
            message = Mail(
                from_email=self.from_email,
                to_emails=mail.to,
                subject=mail.subject,
                plain_text_content=mail.text,
                html_content=mail.html,
            )
        message.custom_arg = CustomArg("job_id", mail.job_id)
        message.custom_arg = CustomArg("mail_kind", mail.kind)
        message.header = Header(JOB_ID_HEADER, mail.job_id)
        return message

    def send(self, mail: OutgoingMail) -> None:
        from python_http_client.exceptions import HTTPError as SendGridHTTPError

        _require_recipient(mail)
        message = self.build(mail)
        try:
            response = self._client.send(message)
        except SendGridHTTPError as exc:
            status = int(getattr(exc, "status_code", 0) or 0)
            detail = _sendgrid_message(getattr(exc, "body", b"")) or str(getattr(exc, "reason", ""))
            transient = status >= 500 or status in {408, 429}
            raise MailError(transient, f"sendgrid answered {status}: {detail}", status=status) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            # URLError (refused, DNS), socket timeouts (TimeoutError), dropped connections.
            raise MailError(True, f"sendgrid unreachable: {exc!r}") from exc
        status = int(getattr(response, "status_code", 0) or 0)
        if not 200 <= status < 300:
            raise MailError(status >= 500, f"sendgrid answered {status}", status=status)


# ---- SMTP --------------------------------------------------------------------


class SmtpMail:
    """Plain SMTP (STARTTLS optional, implicit TLS on port 465)."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        starttls: bool,
        from_email: str,
        timeout: float = 30,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.starttls = starttls
        self.from_email = from_email
        self.timeout = timeout

    def send(self, mail: OutgoingMail) -> None:
        _require_recipient(mail)
        msg = to_email_message(mail, self.from_email)
        try:
            smtp: smtplib.SMTP
            if self.port == 465:
                smtp = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                if self.starttls and self.port != 465:
                    smtp.ehlo()
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if self.username:
                    smtp.login(self.username, self.password)
                refused = smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            transient = all(400 <= c < 500 for c in codes)
            raise MailError(transient, f"smtp refused the recipient: {exc.recipients}") from exc
        except smtplib.SMTPResponseException as exc:
            detail = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc
            transient = 400 <= exc.smtp_code < 500
            raise MailError(
                transient, f"smtp answered {exc.smtp_code}: {detail}", status=exc.smtp_code
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError(True, f"smtp {self.host}:{self.port} unreachable: {exc!r}") from exc
        if refused:
            raise MailError(False, f"smtp refused recipients: {refused}")


# ---- .eml files --------------------------------------------------------------


class EmlFileMail:
    """Writes each mail to ``{directory}/{job_id}-{kind}.eml``, atomically; rewriting overwrites."""

    def __init__(self, directory: Path, from_email: str) -> None:
        self.directory = Path(directory)
        self.from_email = from_email

    def path_for(self, job_id: str, kind: str) -> Path:
        for label, value in (("job_id", job_id), ("kind", kind)):
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", value):
                raise MailError(False, f"{label} {value!r} cannot be used in a file name")
        return self.directory / f"{job_id}-{kind}.eml"

    def send(self, mail: OutgoingMail) -> None:
        target = self.path_for(mail.job_id, mail.kind)
        data = to_email_message(mail, self.from_email).as_bytes()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f".{target.name}.{secrets.token_hex(6)}.tmp"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as exc:
            raise MailError(True, f"cannot write {target}: {exc}") from exc


def build_mail_backend(settings: Settings, data_dir: Path) -> MailBackend:
    """SendGrid if SENDGRID_API_KEY, else SMTP if SMTP_HOST, else .eml files in data_dir/mail."""
    m = settings.mail
    if m.sendgrid_api_key:
        return SendGridMail(
            m.sendgrid_api_key, m.sendgrid_from_email, m.sendgrid_template_id, m.sendgrid_base_url
        )
    if m.smtp_host:
        return SmtpMail(
            m.smtp_host, m.smtp_port, m.smtp_username, m.smtp_password, m.smtp_starttls, m.sendgrid_from_email
        )
    return EmlFileMail(data_dir / "mail", m.sendgrid_from_email)
