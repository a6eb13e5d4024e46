"""Webhooks over real TLS with IP pinning: the sender connects to the checked address but
must still send SNI for, and verify the certificate against, the URL's host name.

A throwaway CA (made here with `cryptography`) signs the receiver's certificate; the
sender trusts it through the bundle httpx's default context loads (``certifi.where``,
read on every client the sender builds), with verification left on. The name resolves
to 127.0.0.1 through the resolver argument of ``resolve_target`` (the product's seam),
allowed on loopback by TRUSTED_PRIVATE_HOSTS ``name:port``, as a test receiver needs.
"""

from __future__ import annotations

import functools
import ssl
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from standardwebhooks.webhooks import Webhook

import supervisor.delivery.webhooks
from shared.config import Settings
from supervisor.delivery.webhook_targets import Target, resolve_target
from tests.conftest import html_payload
from tests.integration.test_delivery_e2e import running, settings_for, until
from tests.integration.test_webhooks import FAST, SECRET, create_job, deliveries

try:
    from tests.fakes._http import FakeHandler, FakeHTTPServer
except ModuleNotFoundError:  # pragma: no cover
    from fakes._http import FakeHandler, FakeHTTPServer  # type: ignore[no-redef,import-not-found,unused-ignore]

pytestmark = pytest.mark.timeout(300)

HOST = "hooks.example.test"


# ---- a throwaway CA and certificates -------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def issue(common: str, issuer: Issued | None = None, *, ca: bool = False) -> Issued:
    """A CA (``ca=True``), or a server certificate for ``common`` signed by ``issuer`` (self-signed if None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(issuer.cert.subject if issuer else _name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = (
            builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(common)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def write_pair(issued: Issued, directory: Path, stem: str) -> tuple[Path, Path]:
    cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert.write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(issued.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    return cert, key


@pytest.fixture
def ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Issued:
    """The throwaway CA, trusted by every httpx client made from now on (public roots kept)."""
    authority = issue("export-worker test CA", ca=True)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n"
                       + authority.cert.public_bytes(serialization.Encoding.PEM))
    # httpx 0.28 builds its default context with ssl.create_default_context(cafile=certifi.where()).
    monkeypatch.setattr(certifi, "where", lambda: str(bundle))
    return authority


# ---- an HTTPS receiver ---------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


class _Handler(FakeHandler):
    server: TLSReceiver

    def do_POST(self) -> None:
        body = self.read_body()
        with self.server.lock:
            self.server.requests.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()


class TLSReceiver(FakeHTTPServer):
    """HTTPS on 127.0.0.1: records each request, the SNI names offered and failed handshakes; answers 204."""

    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__(_Handler)
        self.requests: list[Seen] = []
        self.sni: list[str | None] = []
        self.failures: list[str] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.sni_callback = self._on_sni
        # The handshake then runs in the request's thread (not in the accept loop), where a failure is recorded.
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def _on_sni(self, _conn: Any, name: str | None, _context: ssl.SSLContext) -> None:
        with self.lock:
            self.sni.append(name)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        with self.lock:
            self.failures.append(f"{type(exc).__name__}: {exc}")

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def hook_url(self, path: str = "/hook") -> str:
        return f"https://{HOST}:{self.port}{path}"


@pytest.fixture
def make_receiver(tmp_path: Path) -> Iterator[Callable[[Issued], TLSReceiver]]:
    started: list[TLSReceiver] = []

    def make(issued: Issued) -> TLSReceiver:
        cert, key = write_pair(issued, tmp_path, f"server{len(started)}")
        receiver = TLSReceiver(cert, key).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """HOST resolves to 127.0.0.1 for the sender; every lookup it makes is recorded."""
    seen: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        seen.append((host, port))
        return ["127.0.0.1"] if host == HOST else []

    def resolve(url: str, settings: Settings) -> Target:
        return resolve_target(url, settings, resolver=resolver)  # every rule of the product still applies

    wrapped = functools.update_wrapper(resolve, resolve_target)
    monkeypatch.setattr(supervisor.delivery.webhooks, "resolve_target", wrapped)
    return seen


def first_outcome(db_url: str, job_id: str) -> Callable[[], bool]:
    """The first attempt is written, either way (a mistake fails at once instead of timing out)."""
    return lambda: any(r["delivered_at"] or r["last_error"] for r in deliveries(db_url, job_id))


def tls_settings(tmp_path: Path, db_url: str, receiver: TLSReceiver) -> Settings:
    return settings_for(tmp_path, db_url, **(FAST | {"TRUSTED_PRIVATE_HOSTS": f"{HOST}:{receiver.port}",
                                                      "WEBHOOK_ALLOWED_HOSTS": HOST}))


# ---- the tests -----------------------------------------------------------------------------


async def test_delivered_over_https_to_the_pinned_address(
    tmp_path: Path, db_url: str, ca: Issued, make_receiver: Callable[[Issued], TLSReceiver],
    lookups: list[tuple[str, int]],
) -> None:
    receiver = make_receiver(issue(HOST, ca))
    job_id = create_job(db_url, html_payload(), receiver.hook_url("/done"))
    async with running(tls_settings(tmp_path, db_url, receiver), db_url):
        await until(first_outcome(db_url, job_id), what="the first attempt")

    row = deliveries(db_url, job_id)[0]
    assert row["delivered_at"] is not None, row["last_error"]
    assert row["last_status"] == 204 and row["attempts"] == 1 and row["last_error"] is None, row
    assert lookups == [(HOST, receiver.port)], "the name is resolved by the product's rules, then pinned"
    assert receiver.failures == []
    assert receiver.sni == [HOST], "SNI carries the URL's name, not the pinned address"
    [seen] = receiver.requests
    assert seen.path == "/done"
    assert seen.headers["host"] == f"{HOST}:{receiver.port}"
    assert seen.headers["webhook-id"] == row["webhook_id"]
    payload = Webhook(SECRET).verify(seen.body, seen.headers)  # raises unless the signature verifies
    assert payload["type"] == "export.completed" and payload["data"]["id"] == job_id


async def test_an_absolute_name_with_its_trailing_dot_is_delivered(
    tmp_path: Path, db_url: str, ca: Issued, make_receiver: Callable[[Issued], TLSReceiver],
    lookups: list[tuple[str, int]],
) -> None:
    """`hooks.example.test.` is the same name, absolute: resolved, verified and sent as the name without the dot."""
    receiver = make_receiver(issue(HOST, ca))
    job_id = create_job(db_url, html_payload(), f"https://{HOST}.:{receiver.port}/done")
    async with running(tls_settings(tmp_path, db_url, receiver), db_url):
        await until(first_outcome(db_url, job_id), what="the first attempt")
    row = deliveries(db_url, job_id)[0]
    assert row["delivered_at"] is not None and row["last_status"] == 204, row
    assert lookups == [(HOST, receiver.port)] and receiver.sni == [HOST]


@pytest.mark.parametrize(
    ("served", "why"),
    [
        ("other-name", "Hostname mismatch, certificate is not valid for 'hooks.example.test'"),
        ("self-signed", "self-signed certificate"),
    ],
    ids=["other-name", "self-signed"],
)
async def test_a_certificate_not_valid_for_the_name_is_refused(
    tmp_path: Path, db_url: str, ca: Issued, make_receiver: Callable[[Issued], TLSReceiver],
    lookups: list[tuple[str, int]], served: str, why: str,
) -> None:
    # Same trusted CA, wrong name; or the right name, but signed by nobody the sender trusts.
    cert = issue("other.example.test", ca) if served == "other-name" else issue(HOST)
    receiver = make_receiver(cert)
    job_id = create_job(db_url, html_payload(), receiver.hook_url())
    async with running(tls_settings(tmp_path, db_url, receiver), db_url):
        await until(first_outcome(db_url, job_id), what="the first attempt")

    row = deliveries(db_url, job_id)[0]
    assert row["delivered_at"] is None and row["gave_up_at"] is None and row["last_status"] is None, row
    assert "CERTIFICATE_VERIFY_FAILED" in row["last_error"] and why in row["last_error"], row["last_error"]
    assert receiver.requests == [], "no request is sent over an unverified connection"
    # The sender offered the right name and refused what came back (the async client closes without an
    # alert, so the receiver's side of the failure is not asserted).
    assert receiver.sni and set(receiver.sni) == {HOST}
