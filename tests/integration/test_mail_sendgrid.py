"""SendGridMail: the real sendgrid client against a local fake of POST /v3/mail/send."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.config import MailSettings, Settings
from supervisor.delivery.mail import (
    MailBackend,
    MailError,
    SendGridMail,
    build_mail_backend,
    compose_completed,
    compose_failed,
    explain_failure,
)

try:
    from tests.fakes.sendgrid_api import FakeSendGrid
except ModuleNotFoundError:  # pytest puts tests/ (the conftest's folder) on sys.path, not the repo root
    from fakes.sendgrid_api import FakeSendGrid  # type: ignore[no-redef,import-not-found,unused-ignore]

pytestmark = pytest.mark.timeout(300)

KEY = "SG.test-key"
JOB = "9b2d4c1a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
LINK = "https://files.example/sign/u/j.pdf?token=abc&x=<1>"


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(api_key=KEY) as server:
        yield server


def _completed() -> object:
    return compose_completed(JOB, "pdf", LINK, "2030-01-01T00:00:00Z", recipient="ada@example.com")


def test_plain_and_html_content(fake: FakeSendGrid) -> None:
    backend = SendGridMail(KEY, "exports@example.com", base_url=fake.url, timeout=5)
    assert isinstance(backend, MailBackend)
    mail = compose_completed(JOB, "pdf", LINK, "2030-01-01T00:00:00Z", recipient="ada@example.com")
    backend.send(mail)

    assert fake.authorizations == [f"Bearer {KEY}"]
    body = fake.messages[0]
    assert body["personalizations"][0]["to"] == [{"email": "ada@example.com"}]
    assert body["from"] == {"email": "exports@example.com"}
    assert body["subject"] == "Your PDF export is ready"
    content = {c["type"]: c["value"] for c in body["content"]}
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert LINK in content["text/plain"]
    assert 'href="https://files.example/sign/u/j.pdf?token=abc&amp;x=&lt;1&gt;"' in content["text/html"]
    assert "<1>" not in content["text/html"]  # escaped
    assert body["custom_args"]["job_id"] == JOB
    assert body["headers"]["X-Export-Job-Id"] == JOB
    assert "template_id" not in body


def test_template_mode(fake: FakeSendGrid) -> None:
    backend = SendGridMail(KEY, "exports@example.com", template_id="d-123abc", base_url=fake.url, timeout=5)
    reason, _ = explain_failure("transient", "timeout", "job timed out after 60s")
    backend.send(compose_failed(JOB, "image", reason, recipient="ada@example.com"))
    body = fake.messages[0]
    assert body["template_id"] == "d-123abc"
    data = body["personalizations"][0]["dynamic_template_data"]
    assert data["job_id"] == JOB
    assert data["status"] == "failed"
    assert data["reason"] == "the page took too long to render"
    assert data["export_type"] == "image"
    assert body["personalizations"][0]["to"] == [{"email": "ada@example.com"}]
    assert "content" not in body


def test_503_is_transient(fake: FakeSendGrid) -> None:
    fake.set_mode("503")
    backend = SendGridMail(KEY, "exports@example.com", base_url=fake.url, timeout=5)
    mail = compose_completed(JOB, "pdf", LINK, "2030-01-01T00:00:00Z", recipient="ada@example.com")
    with pytest.raises(MailError) as info:
        backend.send(mail)
    assert info.value.transient
    assert info.value.status == 503
    fake.set_mode("429")
    with pytest.raises(MailError) as info:
        backend.send(mail)
    assert info.value.transient
    fake.set_mode("ok")
    backend.send(mail)
    assert len(fake.messages) == 1


def test_400_is_permanent_with_sendgrids_message(fake: FakeSendGrid) -> None:
    fake.set_mode("400", "The from address does not match a verified Sender Identity.", "from")
    backend = SendGridMail(KEY, "exports@example.com", base_url=fake.url, timeout=5)
    with pytest.raises(MailError) as info:
        backend.send(compose_completed(JOB, "pdf", LINK, "2030-01-01T00:00:00Z", recipient="ada@example.com"))
    assert not info.value.transient
    assert info.value.status == 400
    assert "does not match a verified Sender Identity" in info.value.message
    assert "from" in info.value.message


def test_wrong_key_is_permanent(fake: FakeSendGrid) -> None:
    backend = SendGridMail("SG.wrong", "exports@example.com", base_url=fake.url, timeout=5)
    with pytest.raises(MailError) as info:
        backend.send(compose_completed(JOB, "pdf", LINK, "2030-01-01T00:00:00Z", recipient="ada@example.com"))
    assert not info.value.transient
    assert info.value.status == 401


def test_unreachable_is_transient() -> None:
    server = FakeSendGrid()
    url = server.url
    server.server_close()
    backend = SendGridMail(KEY, "exports@example.com", base_url=url, timeout=2)
    with pytest.raises(MailError) as info:
        backend.send(compose_completed(JOB, "pdf", LINK, "2030-01-01T00:00:00Z", recipient="ada@example.com"))
    assert info.value.transient


def test_no_recipient_is_permanent(fake: FakeSendGrid) -> None:
    backend = SendGridMail(KEY, "exports@example.com", base_url=fake.url, timeout=5)
    with pytest.raises(MailError) as info:
        backend.send(compose_completed(JOB, "pdf", LINK, "2030-01-01T00:00:00Z"))
    assert not info.value.transient
    assert fake.request_count == 0


def test_build_mail_backend_prefers_sendgrid(fake: FakeSendGrid, tmp_path: object) -> None:
    from pathlib import Path

    settings = Settings(mail=MailSettings(sendgrid_api_key=KEY, sendgrid_base_url=fake.url, smtp_host="x"))
    backend = build_mail_backend(settings, Path(str(tmp_path)))
    assert isinstance(backend, SendGridMail)
    backend.send(compose_completed(JOB, "pdf", LINK, "2030-01-01T00:00:00Z", recipient="ada@example.com"))
    assert len(fake.messages) == 1
