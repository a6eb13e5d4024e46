"""The mail as bytes (supervisor/delivery/mail.py ``to_email_message``): whatever the
subject, the names and the scripts, a standard reader gets back exactly what was
composed, every line fits 78 characters, and the bytes are 7-bit."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from email.utils import parseaddr

import pytest

from supervisor.delivery.mail import JOB_ID_HEADER, MailError, OutgoingMail, to_email_message

TEXT = ("Hello,\n\nYour PDF of مطعم الشام is ready.\n\n"
        "https://exports.example/files/u/j.pdf?expires=1796646900&sig=" + "ab12" * 30 + "\n")
HTML = '<p dir="rtl">مطعم الشام</p><p><a href="https://x/?a=1&amp;b=2">Download the PDF</a></p>' * 4

CASES = [
    # (subject, recipient, MAIL_FROM)
    ("Your PDF export is ready", "ada@example.com", "no-reply@example.com"),
    ("مطعم الشام — قائمة العشاء: your PDF is ready", "ada@example.com", "Exports <no-reply@example.com>"),
    ("Bistro Lumière — Menu du soir: your PDF is ready 🍷", "Zoë Durand <zoe@example.com>", "مطعم <menu@example.com>"),
    (" ".join(["Brasserie du Grand Café de la Gare et des Voyageurs"] * 4), "ada@example.com",
     '"Exports, Inc." <no-reply@example.com>'),
    ("A" * 120 + " is ready", "ada@example.com", "no-reply@example.com"),  # a word longer than a line
    ("菜单 " * 40, "ada@example.com", "no-reply@example.com"),
]


def _read(subject: str, recipient: str, from_email: str) -> tuple[bytes, EmailMessage]:
    mail = OutgoingMail(recipient=recipient, subject=subject.strip(), text=TEXT, html=HTML, kind="completed",
                        job_id="9b2d4c1a-5e6f-4a7b-8c9d-0e1f2a3b4c5d")
    raw = to_email_message(mail, from_email).as_bytes()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return raw, msg


@pytest.mark.parametrize(("subject", "recipient", "from_email"), CASES)
def test_a_reader_gets_back_what_was_composed(subject: str, recipient: str, from_email: str) -> None:
    raw, msg = _read(subject, recipient, from_email)
    assert str(msg["Subject"]) == subject.strip()
    assert parseaddr(str(msg["From"])) == parseaddr(from_email)
    assert parseaddr(str(msg["To"])) == parseaddr(recipient)
    assert msg.get_content_type() == "multipart/alternative"
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content() == TEXT
    assert html.get_content() == HTML
    assert msg[JOB_ID_HEADER] == "9b2d4c1a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
    domain = parseaddr(from_email)[1].split("@")[1]
    assert msg["Message-ID"] == f"<9b2d4c1a-5e6f-4a7b-8c9d-0e1f2a3b4c5d.completed@{domain}>"
    assert raw.isascii()
    assert max(len(line) for line in raw.splitlines()) <= 78


def test_the_link_stays_readable_in_the_file() -> None:
    """Quoted-printable, not base64: someone opening the .eml file by hand can find the link."""
    raw, _ = _read("Your PDF export is ready", "ada@example.com", "no-reply@example.com")
    assert b"https://exports.example/files/u/j.pdf?expires=3D1796646900" in raw
    assert b"Content-Transfer-Encoding: quoted-printable" in raw


def test_a_sender_with_a_line_break_is_refused_not_written_as_a_header_of_its_own() -> None:
    with pytest.raises(MailError, match="contains a line break") as refused:
        _read("Your PDF export is ready", "ada@example.com", "no-reply@example.com\r\nBcc: all@example.com")
    assert refused.value.transient is False
