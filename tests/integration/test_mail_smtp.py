"""SmtpMail against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from shared.config import MailSettings, Settings
from supervisor.delivery.mail import MailError, SmtpMail, build_mail_backend, compose_completed, compose_failed

pytestmark = pytest.mark.timeout(300)

JOB = "9b2d4c1a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


class Sink:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.reject_rcpt = False

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.reject_rcpt:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def smtp_server() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    port = _free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


def test_multipart_mail_is_delivered(smtp_server: tuple[Sink, int]) -> None:
    sink, port = smtp_server
    backend = SmtpMail("127.0.0.1", port, "", "", False, "exports@example.com", timeout=5)
    link = "https://files.example/u/j.pdf?a=1&b=2"
    backend.send(compose_completed(JOB, "pdf", link, "2030-01-01T00:00:00Z", recipient="ada@example.com"))

    assert len(sink.envelopes) == 1
    env = sink.envelopes[0]
    assert env.mail_from == "exports@example.com"
    assert env.rcpt_tos == ["ada@example.com"]
    msg = email.message_from_bytes(env.content, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Subject"] == "Your PDF export is ready"
    assert msg["X-Export-Job-Id"] == JOB
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None and html is not None
    assert link in plain.get_content()
    assert "a=1&amp;b=2" in html.get_content()


def test_rejected_recipient_is_permanent(smtp_server: tuple[Sink, int]) -> None:
    sink, port = smtp_server
    sink.reject_rcpt = True
    backend = SmtpMail("127.0.0.1", port, "", "", False, "exports@example.com", timeout=5)
    with pytest.raises(MailError) as info:
        backend.send(compose_failed(JOB, "pdf", "the file could not be stored", recipient="nobody@example.com"))
    assert not info.value.transient
    assert sink.envelopes == []


def test_unreachable_is_transient() -> None:
    backend = SmtpMail("127.0.0.1", _free_port(), "", "", False, "exports@example.com", timeout=2)
    with pytest.raises(MailError) as info:
        backend.send(compose_failed(JOB, "pdf", "the file could not be stored", recipient="ada@example.com"))
    assert info.value.transient


def test_build_mail_backend_smtp(tmp_path: Any) -> None:
    settings = Settings(mail=MailSettings(smtp_host="mail.example", smtp_port=2525, smtp_starttls=False))
    backend = build_mail_backend(settings, tmp_path)
    assert isinstance(backend, SmtpMail)
    assert (backend.host, backend.port, backend.starttls) == ("mail.example", 2525, False)


def test_a_resend_carries_the_same_message_id(smtp_server: tuple[Sink, int]) -> None:
    """After a crash between sending and recording, the outbox sends the row again; the
    Message-ID, derived from the row (job and kind), is the same, so receivers drop the repeat."""
    sink, port = smtp_server
    backend = SmtpMail("127.0.0.1", port, "", "", False, "exports@example.com", timeout=5)
    ada = "ada@example.com"
    backend.send(compose_completed(JOB, "pdf", "https://x/f.pdf?s=1", "2030-01-01T00:00:00Z", recipient=ada))
    backend.send(compose_completed(JOB, "pdf", "https://x/f.pdf?s=2", "2030-01-02T00:00:00Z", recipient=ada))
    backend.send(compose_failed(JOB, "pdf", "the file could not be stored", recipient=ada))
    ids = [
        email.message_from_bytes(env.content, policy=email.policy.default)["Message-ID"].strip()
        for env in sink.envelopes
    ]
    assert ids == [f"<{JOB}.completed@example.com>"] * 2 + [f"<{JOB}.failed@example.com>"]
