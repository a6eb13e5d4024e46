"""EmlFileMail (the embedded default) and composing mails."""

from __future__ import annotations

import concurrent.futures
import email
import email.policy
import stat
from email.message import EmailMessage
from pathlib import Path

import pytest

from shared.config import Settings
from supervisor.delivery.mail import (
    EmlFileMail,
    MailError,
    build_mail_backend,
    compose_completed,
    compose_failed,
    explain_failure,
)

pytestmark = pytest.mark.timeout(300)

JOB = "9b2d4c1a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


def _read(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_one_file_per_job_and_kind(tmp_path: Path) -> None:
    backend = EmlFileMail(tmp_path / "mail", "exports@example.com")
    backend.send(
        compose_completed(JOB, "pdf", "http://x/f.pdf", "2030-01-01T00:00:00Z", recipient="ada@example.com")
    )
    backend.send(compose_failed(JOB, "pdf", "the file could not be stored", recipient="ada@example.com"))
    files = sorted(p.name for p in (tmp_path / "mail").iterdir())
    assert files == [f"{JOB}-completed.eml", f"{JOB}-failed.eml"]
    msg = _read(tmp_path / "mail" / f"{JOB}-completed.eml")
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["To"] == "ada@example.com"
    assert msg["From"] == "exports@example.com"
    plain = msg.get_body(("plain",))
    assert plain is not None and "http://x/f.pdf" in plain.get_content()
    failed = _read(tmp_path / "mail" / f"{JOB}-failed.eml")
    assert failed["Subject"] == "Your PDF export could not be completed"


def test_a_second_send_of_the_same_row_does_nothing(tmp_path: Path) -> None:
    """A worker that died between writing the mail and recording it as sent sends it again
    after the outbox lease; the file named after the row is found and left as it was."""
    backend = EmlFileMail(tmp_path / "mail", "exports@example.com")
    first = compose_completed(JOB, "image", "http://x/f.png?sig=1", "2030-01-01T00:00:00Z", recipient="ada@example.com")
    backend.send(first)
    target = tmp_path / "mail" / f"{JOB}-completed.eml"
    before = target.stat()
    content = target.read_bytes()
    # the retry composes anew: a fresh link and expiry, a new Date header
    again = compose_completed(JOB, "image", "http://x/f.png?sig=2", "2030-01-02T00:00:00Z", recipient="ada@example.com")
    backend.send(again)
    backend.send(again)
    after = target.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert target.read_bytes() == content
    assert [p.name for p in (tmp_path / "mail").iterdir()] == [f"{JOB}-completed.eml"]  # no temp files
    assert _read(target)["Subject"] == "Your image export is ready"


def test_file_and_directory_are_private(tmp_path: Path) -> None:
    backend = EmlFileMail(tmp_path / "mail", "exports@example.com")
    backend.send(compose_failed(JOB, "pdf", "the file could not be stored", recipient="ada@example.com"))
    assert stat.S_IMODE((tmp_path / "mail" / f"{JOB}-failed.eml").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "mail").stat().st_mode) == 0o700


def test_concurrent_sends_of_one_row_leave_one_whole_file(tmp_path: Path) -> None:
    backend = EmlFileMail(tmp_path, "exports@example.com")
    mail = compose_completed(JOB, "pdf", "http://x/f.pdf", "2030-01-01T00:00:00Z", recipient="ada@example.com")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: backend.send(mail), range(32)))
    assert [p.name for p in tmp_path.iterdir()] == [f"{JOB}-completed.eml"]
    msg = _read(tmp_path / f"{JOB}-completed.eml")
    assert msg["Message-ID"].strip() == f"<{JOB}.completed@example.com>"  # strip: a long header may fold
    plain = msg.get_body(("plain",))
    assert plain is not None and "http://x/f.pdf" in plain.get_content()


def test_unsafe_job_id_refused(tmp_path: Path) -> None:
    backend = EmlFileMail(tmp_path, "exports@example.com")
    mail = compose_failed("../../evil", "pdf", "x")
    with pytest.raises(MailError) as info:
        backend.send(mail)
    assert not info.value.transient
    assert list(tmp_path.iterdir()) == []


def test_html_is_escaped_and_reason_in_plain_words() -> None:
    mail = compose_failed(JOB, "pdf", "<script>alert(1)</script>", from_name="A & B")
    assert "<script>" not in mail.html
    assert "&lt;script&gt;" in mail.html
    assert "A &amp; B" in mail.html
    assert "<script>alert(1)</script>" in mail.text
    assert mail.kind == "failed"
    assert mail.template_data["reason"] == "<script>alert(1)</script>"


@pytest.mark.parametrize(
    ("category", "reason", "render_failure", "words"),
    [
        ("transient", "timeout", None, "the page took too long to render"),
        ("transient", "storage", None, "the file could not be stored"),
        ("resource", "memory", None, "the page needed more memory than an export may use"),
        ("validation", "render", "page_limit", "the document has more pages than allowed"),
        ("transient", "render", "browser",
         "a temporary problem kept the export from finishing, even after several tries"),
        ("permanent", "render", "no-such-code", "the export could not be completed"),
        ("permanent", None, None, "the export could not be completed"),
    ],
)
def test_plain_words_come_from_the_codes(category: str, reason: str | None, render_failure: str | None,
                                         words: str) -> None:
    # the message is never read for this: it says "timed out" and "storage" on purpose
    assert explain_failure(category, reason, "timed out; storage", render_failure)[0] == words


def test_build_mail_backend_default_is_eml(tmp_path: Path) -> None:
    backend = build_mail_backend(Settings(), tmp_path)
    assert isinstance(backend, EmlFileMail)
    assert backend.directory == tmp_path / "mail"
