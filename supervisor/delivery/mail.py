"""Completion and failure mails: composing them, and three ways to send them.

- :class:`SendGridMail` through the `sendgrid` client (``SENDGRID_API_KEY``),
- :class:`SmtpMail` with smtplib for self-hosters (``SMTP_HOST``),
- :class:`EmlFileMail`, the embedded default: one ``.eml`` file per job and kind.

A backend raises :class:`MailError`; ``transient`` says whether the outbox should
try again later (5xx, 429, connection problems) or give up (other 4xx).
"""

from __future__ import annotations

import http.client
import json
import re
import smtplib
import ssl
import urllib.error
from datetime import UTC, datetime
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, parseaddr
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import jinja2
import msgspec

from shared.data_dir import make_private_dir, write_private_file
from shared.vocabulary import FailureReason, RenderFailure

if TYPE_CHECKING:
    from shared.config import Settings

JOB_ID_HEADER = "X-Export-Job-Id"


class OutgoingMail(msgspec.Struct, kw_only=True):
    recipient: str  # the one name for the address, from the queue's SQL to here (the API says `email`)
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

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("supervisor.delivery", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    auto_reload=False,  # package files: no stat of the template per mail
)


def _type_words(export_type: str) -> str:
    return "PDF" if export_type == "pdf" else "image" if export_type == "image" else export_type


_CATEGORY_WORDS = {
    "validation": ("the document could not be read",  # never the validator's words: they may hold a path
                   "Correct the menu where the reason above points, then export again."),
    "resource": ("the export needed more resources than are available",
                 "Export again later. If it keeps failing, split the menu into smaller parts."),
    "transient": ("a temporary problem kept the export from finishing, even after several tries",
                  "Please export again in a few minutes. If it still fails, reply to this mail."),
}
_LAST_WORDS = ("the export could not be completed",
               "Please reply to this mail so that we can look into it; exporting again will not help yet.")


# A payload the validator refused: "invalid payload: {field}: {the owner's words}" (supervisor/settle.py,
# shared/field_words.py). The mail shows the owner's words; the dotted field stays for operators.
_PAYLOAD_PROBLEM = re.compile(r"^invalid payload: (?:[\w.\-]+: )?(?P<words>\S.*)$", re.DOTALL)
_SETTING_NAME = re.compile(r"\s*\([A-Z][A-Z0-9_]{2,}\)")  # "(MAX_INPUT_BYTES)": for operators, not owners
_NEEDS_CORRECTING = "something in the document needs correcting"


def owner_problem(message: str) -> str | None:
    """The owner's words of a refused payload, or None for any other failure."""
    found = _PAYLOAD_PROBLEM.match((message or "").strip())
    if found is None:
        return None
    words = _SETTING_NAME.sub("", found.group("words")).strip()
    return words if words.endswith((".", "!", "?")) else f"{words}."


_TOO_SLOW = ("the page took too long to render",
             "Export again. If it keeps happening, remove very large images or split the menu into smaller parts.")
_TRY_LATER = "Please export again in a few minutes. If it still fails, reply to this mail."

# The failure's reason code (metadata.failure_reason, written where the failure was
# decided) in plain words, with the next step.
_REASON_WORDS: dict[FailureReason, tuple[str, str]] = {
    FailureReason.TIMEOUT: _TOO_SLOW,
    FailureReason.MEMORY: ("the page needed more memory than an export may use",
                           "Remove or shrink large images, or split the menu into smaller parts, then export again."),
    FailureReason.CONTAINER_MEMORY: ("the export service was short of memory while rendering it",
                                     "Please export again in a few minutes."),
    FailureReason.CHILD_CRASHED: ("the renderer stopped unexpectedly, even after several tries", _TRY_LATER),
    FailureReason.STORAGE: ("the file could not be stored",
                            "This was a problem on our side, not in your menu. Please export again in a few "
                            "minutes."),
    FailureReason.STALE: ("the export service handling it stopped, even after several tries", _TRY_LATER),
}

# A render's own failure: the child's code (metadata.render_failure) in plain words.
# BROWSER and INTERNAL say nothing the person can act on: the category's words then.
_RENDER_WORDS: dict[RenderFailure, tuple[str, str]] = {
    RenderFailure.TIMEOUT: _TOO_SLOW,
    RenderFailure.CRASHED: ("the renderer stopped unexpectedly while drawing the page", _TRY_LATER),
    RenderFailure.PAGE_LIMIT: ("the document has more pages than allowed",
                               "Split the menu into smaller parts (one per section, for example) or choose a "
                               "smaller scale, then export again."),
    RenderFailure.PIXEL_LIMIT: ("the image would be larger than allowed",
                                "Choose a smaller width or scale for the image, or export a PDF instead."),
    RenderFailure.OUTPUT_LIMIT: ("the file would be larger than allowed",
                                 "Remove or shrink large images, then export again."),
    RenderFailure.URL_NOT_ALLOWED: ("the page's address is not one this service may export",
                                    "Use an address your administrator allows, then export again."),
    RenderFailure.URL_UNREACHABLE: ("the page's address could not be reached",
                                    "Check that the address opens in a browser, then export again."),
    RenderFailure.URL_HTTP_ERROR: ("the page's address answered with an error",
                                   "Check that the address opens in a browser, then export again."),
    RenderFailure.INVALID_JOB: ("this kind of export is not available here",
                                "Please reply to this mail so that we can look into it."),
}


def _known(table: dict[Any, tuple[str, str]], enum: type[StrEnum], code: str | None) -> tuple[str, str] | None:
    try:
        return table.get(enum(code)) if code else None
    except ValueError:  # a code of a newer or older worker
        return None


def explain_failure(category: str, reason: str | None, message: str,
                    render_failure: str | None = None) -> tuple[str, str]:
    """(the failure in plain words, what to do next), from its codes: the failure reason,
    then a render's own code; a refused payload shows the owner's words; else the category's."""
    if reason == FailureReason.INVALID_PAYLOAD:
        problem = owner_problem(message)
        if problem is not None:
            return _NEEDS_CORRECTING, f"{problem} Then export again."
    known = _known(_REASON_WORDS, FailureReason, reason)
    if known is None and reason == FailureReason.RENDER:
        known = _known(_RENDER_WORDS, RenderFailure, render_failure)
    return known or _CATEGORY_WORDS.get(category, _LAST_WORDS)


def document_name(payload: Any) -> str:
    """``Bistro Lumière — Dinner`` for a menu, else the requested file name, else empty."""
    if not isinstance(payload, dict):
        return ""
    source = payload.get("source")
    if isinstance(source, dict) and source.get("kind") == "menu" and isinstance(source.get("menu"), dict):
        menu = source["menu"]
        restaurant = menu.get("restaurant") if isinstance(menu.get("restaurant"), dict) else {}
        parts = [str(restaurant.get("name") or "").strip(), str(menu.get("name") or "").strip()]
        return _one_line(" \u2014 ".join(p for p in parts if p))
    return _one_line(str(payload.get("filename") or ""))


def human_expiry(when: datetime | str) -> str:
    """``7 December 2026, 12:35 UTC`` (English month names, whatever the server's locale)."""
    moment = datetime.fromisoformat(when) if isinstance(when, str) else when
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return f"{moment.day} {_MONTHS[moment.month - 1]} {moment.year}, {moment:%H:%M} UTC"


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def _compose(kind: str, *, recipient: str, job_id: str, subject: str, values: dict[str, str]) -> OutgoingMail:
    context = {"subject": subject, "job_id": job_id, **values}
    return OutgoingMail(
        recipient=recipient,
        subject=subject,
        text=_env.get_template(f"mail_{kind}.txt.j2").render(context),
        html=_env.get_template(f"mail_{kind}.html.j2").render(context),
        kind=kind,
        job_id=job_id,
        template_data={"status": kind, **context},
    )


def compose_completed(
    job_id: str,
    export_type: str,
    download_url: str,
    expires_at: datetime | str,
    from_name: str = "Exports",
    *,
    recipient: str = "",
    document: str = "",
) -> OutgoingMail:
    what = _type_words(export_type)
    document = _one_line(document)
    subject = _one_line(_env.get_template("mail_subjects.j2").module.completed(what, document))  # type: ignore[attr-defined]
    expires = human_expiry(expires_at)
    return _compose(
        "completed", recipient=recipient, job_id=job_id, subject=subject,
        values={
            "export_type": export_type, "what": what, "document": document,
            "download_url": download_url,
            "expires": expires, "expires_at": str(expires_at), "from_name": from_name,
        },
    )


def compose_failed(
    job_id: str,
    export_type: str,
    reason_in_plain_words: str,
    from_name: str = "Exports",
    *,
    recipient: str = "",
    document: str = "",
    next_step: str = _LAST_WORDS[1],
) -> OutgoingMail:
    what = _type_words(export_type)
    document = _one_line(document)
    subject = _one_line(_env.get_template("mail_subjects.j2").module.failed(what, document))  # type: ignore[attr-defined]
    return _compose(
        "failed", recipient=recipient, job_id=job_id, subject=subject,
        values={
            "export_type": export_type, "what": what, "document": document, "reason": reason_in_plain_words,
            "next_step": next_step, "from_name": from_name,
        },
    )


def message_id(mail: OutgoingMail, from_email: str) -> str:
    """The same for every send of one outbox row (unique per job and kind): receivers drop repeats."""
    address = parseaddr(from_email)[1]  # "Exports <no-reply@example.com>" too, not only the bare address
    domain = address.rsplit("@", 1)[-1] if "@" in address else "export-worker.invalid"
    return f"<{mail.job_id}.{mail.kind}@{domain}>"


# Bodies in quoted-printable: 7-bit safe through any relay, and an .eml file stays readable.
_BODY_CHARSET = Charset("utf-8")
_BODY_CHARSET.body_encoding = QP


def _header_text(name: str, value: str) -> str:
    """Plain when it can fold at its spaces into 78-character lines; else encoded words,
    which may split anywhere (a plain word too long for the line would otherwise be put
    on a line of its own, and read back with a space in front)."""
    longest = 78 - len(f"{name}: ")
    if value.isascii() and all(len(word) <= longest for word in value.split()):
        return value
    return Header(value, "utf-8", header_name=name).encode()


def _address(value: str) -> str:
    """An address header; a display name in any script is encoded, the address never is.

    The compat32 classes write a header as given: a line break (a SENDGRID_FROM_EMAIL
    with one) would start a header of its own, so it is refused here.
    """
    if "\r" in value or "\n" in value:
        raise MailError(False, f"the address {value!r} contains a line break")
    name, address = parseaddr(value)
    return formataddr((name, address), charset="utf-8") if name and address else value


def to_email_message(mail: OutgoingMail, from_email: str) -> Message:
    """An RFC 5322 multipart/alternative message (text/plain + text/html).

    Built with the compat32 classes rather than EmailMessage: the same message for about
    a quarter of the CPU (0.36 against 1.36 ms per mail, measured), which EmailMessage's
    header registry spent re-parsing headers written here.
    """
    msg = MIMEMultipart("alternative")
    msg["From"] = _address(from_email)
    if mail.recipient:
        msg["To"] = _address(mail.recipient)
    msg["Subject"] = _header_text("Subject", mail.subject)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id(mail, from_email)
    msg[JOB_ID_HEADER] = mail.job_id
    msg.attach(MIMEText(mail.text, "plain", _BODY_CHARSET))  # type: ignore[arg-type]
    msg.attach(MIMEText(mail.html, "html", _BODY_CHARSET))  # type: ignore[arg-type]
    return msg


def _require_recipient(mail: OutgoingMail) -> None:
    if not mail.recipient or "@" not in mail.recipient:
        raise MailError(False, f"mail for job {mail.job_id} has no valid recipient ({mail.recipient!r})")


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
            message = Mail(from_email=self.from_email, to_emails=mail.recipient)
            message.template_id = self.template_id
            message.dynamic_template_data = dict(mail.template_data)
        else:
            message = Mail(
                from_email=self.from_email,
                to_emails=mail.recipient,
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
    """Writes each mail to ``{directory}/{job_id}-{kind}.eml``: one file per outbox row.

    The name is the outbox row's identity (the table is unique per job and kind), so
    a second send of the same row, after a crash between writing and recording it as
    sent, finds the file and does nothing. The file appears whole or not at all
    (written to a temporary name, then renamed) and only its owner may read it (0600):
    it holds a signed download link.
    """

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
        if target.exists():
            return  # this row was mailed before; the outbox just had not recorded it
        data = to_email_message(mail, self.from_email).as_bytes()
        try:
            make_private_dir(self.directory)
            write_private_file(target, lambda fh: fh.write(data))
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
