"""SupabaseStorage: the real supabase/storage3 client against a local fake of the Storage API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.delivery.breaker import BreakerStorage, CircuitBreaker
from supervisor.delivery.storage import StorageError, SupabaseStorage, build_storage, object_key

try:
    from tests.fakes.supabase_storage import FakeSupabaseStorage
except ModuleNotFoundError:  # pytest puts tests/ (the conftest's folder) on sys.path, not the repo root
    from fakes.supabase_storage import FakeSupabaseStorage  # type: ignore[no-redef,import-not-found,unused-ignore]

pytestmark = pytest.mark.timeout(300)


def _state(b: CircuitBreaker) -> str:
    """The state as a plain str (mypy would otherwise narrow the property between calls)."""
    return b.state


KEY = "service-role-key-for-tests"
USER = "3f1c2b9e-7f5a-4c51-9a43-0a8f4f1d2e11"
JOB = "9b2d4c1a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


@pytest.fixture
def fake() -> Iterator[FakeSupabaseStorage]:
    with FakeSupabaseStorage(service_key=KEY) as server:
        yield server


@pytest.fixture
def store(fake: FakeSupabaseStorage) -> Iterator[SupabaseStorage]:
    s = SupabaseStorage(fake.url, KEY, "export-files", timeout_seconds=5)
    yield s
    s.close()


@pytest.fixture
def pdf_file(tmp_path: Path) -> Path:
    p = tmp_path / "out.pdf"
    p.write_bytes(PDF)
    return p


def test_object_key_is_a_function_of_the_claim() -> None:
    assert object_key(USER, JOB, 1, "application/pdf") == f"{USER}/{JOB}/1.pdf"
    assert object_key(USER, JOB, 2, "image/png") == f"{USER}/{JOB}/2.png"
    assert object_key(USER, JOB, 1, "image/jpeg") == f"{USER}/{JOB}/1.jpg"
    assert object_key(USER, JOB, 3, "image/webp") == f"{USER}/{JOB}/3.webp"
    # Another claim of the same job never writes the same object.
    assert object_key(USER, JOB, 1, "application/pdf") != object_key(USER, JOB, 2, "application/pdf")
    with pytest.raises(StorageError):
        object_key("../etc", JOB, 1, "application/pdf")
    with pytest.raises(ValueError, match="unknown content type"):
        object_key(USER, JOB, 1, "text/html")


def test_upload_sends_path_headers_and_body(
    fake: FakeSupabaseStorage, store: SupabaseStorage, pdf_file: Path
) -> None:
    path = object_key(USER, JOB, 1, "application/pdf")
    store.put(path, pdf_file, "application/pdf")

    assert fake.requests == [("POST", f"/storage/v1/object/export-files/{USER}/{JOB}/1.pdf")]
    up = fake.uploads[0]
    assert up.headers["authorization"] == f"Bearer {KEY}"
    assert up.headers["apikey"] == KEY
    assert up.x_upsert == "true"
    assert up.content_type == "application/pdf"
    assert up.request_content_type.startswith("multipart/form-data")
    assert up.body == PDF
    assert up.cache_control == "3600"


def test_upload_is_idempotent_upsert(
    fake: FakeSupabaseStorage, store: SupabaseStorage, pdf_file: Path
) -> None:
    path = object_key(USER, JOB, 1, "application/pdf")
    store.put(path, pdf_file, "application/pdf")
    pdf_file.write_bytes(PDF + b"retried")
    store.put(path, pdf_file, "application/pdf")  # a retried job writes the same object
    assert fake.upload_counts[path] == 2
    assert fake.objects[("export-files", path)].body == PDF + b"retried"
    assert len(fake.objects) == 1


def test_signed_url(fake: FakeSupabaseStorage, store: SupabaseStorage, pdf_file: Path) -> None:
    path = object_key(USER, JOB, 1, "application/pdf")
    store.put(path, pdf_file, "application/pdf")
    url = store.signed_url(path, 3600)
    assert url.startswith(f"{fake.url}/storage/v1/object/sign/export-files/{USER}/{JOB}/1.pdf?token=")
    assert fake.sign_requests[0]["expiresIn"] == "3600"
    assert ("POST", f"/storage/v1/object/sign/export-files/{path}") in fake.requests


def test_sign_missing_object_is_permanent(store: SupabaseStorage) -> None:
    with pytest.raises(StorageError) as info:
        store.signed_url(f"{USER}/nope.pdf", 60)
    assert info.value.category == "permanent"
    assert "Object not found" in info.value.message


def test_remove(fake: FakeSupabaseStorage, store: SupabaseStorage, pdf_file: Path) -> None:
    path = object_key(USER, JOB, 1, "application/pdf")
    store.put(path, pdf_file, "application/pdf")
    store.delete([path, f"{USER}/missing.pdf"])  # missing objects are fine
    assert fake.requests[-1] == ("DELETE", "/storage/v1/object/export-files")
    assert fake.remove_requests == [[path, f"{USER}/missing.pdf"]]
    assert ("export-files", path) not in fake.objects
    store.delete([])  # nothing to do: no request
    assert len(fake.remove_requests) == 1


def test_bucket_check(fake: FakeSupabaseStorage, store: SupabaseStorage) -> None:
    store.check()
    assert fake.requests == [("GET", "/storage/v1/bucket/export-files")]


def test_missing_bucket_is_permanent_with_the_message(fake: FakeSupabaseStorage) -> None:
    s = SupabaseStorage(fake.url, KEY, "no-such-bucket", timeout_seconds=5)
    try:
        with pytest.raises(StorageError) as info:
            s.check()
        assert info.value.category == "permanent"
        assert info.value.status == 404
        assert "Bucket not found" in info.value.message
    finally:
        s.close()


def test_wrong_key_is_permanent(fake: FakeSupabaseStorage, pdf_file: Path) -> None:
    s = SupabaseStorage(fake.url, "wrong-key", "export-files", timeout_seconds=5)
    try:
        with pytest.raises(StorageError) as info:
            s.put(f"{USER}/{JOB}.pdf", pdf_file, "application/pdf")
        assert info.value.category == "permanent"
        assert "invalid signature" in info.value.message
    finally:
        s.close()


def test_503_is_transient_and_recovers(
    fake: FakeSupabaseStorage, store: SupabaseStorage, pdf_file: Path
) -> None:
    fake.fail(503)
    for call in (
        lambda: store.put(f"{USER}/{JOB}.pdf", pdf_file, "application/pdf"),
        lambda: store.signed_url(f"{USER}/{JOB}.pdf", 60),
        lambda: store.delete([f"{USER}/{JOB}.pdf"]),
        store.check,
    ):
        with pytest.raises(StorageError) as info:
            call()
        assert info.value.category == "transient"
        assert info.value.status == 503
    fake.recover()
    store.put(f"{USER}/{JOB}.pdf", pdf_file, "application/pdf")
    assert ("export-files", f"{USER}/{JOB}.pdf") in fake.objects


def test_429_is_transient(fake: FakeSupabaseStorage, store: SupabaseStorage) -> None:
    fake.fail(429)
    with pytest.raises(StorageError) as info:
        store.check()
    assert info.value.category == "transient"


def test_timeout_is_transient(fake: FakeSupabaseStorage) -> None:
    s = SupabaseStorage(fake.url, KEY, "export-files", timeout_seconds=0.5)
    fake.slow(2.0)
    try:
        with pytest.raises(StorageError) as info:
            s.check()
        assert info.value.category == "transient"
        assert "timed out" in info.value.message
    finally:
        s.close()
        fake.recover()


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    fake = FakeSupabaseStorage(service_key=KEY)
    url = fake.url
    fake.server_close()  # nothing listens on that port any more
    s = SupabaseStorage(url, KEY, "export-files", timeout_seconds=2)
    try:
        with pytest.raises(StorageError) as info:
            s.check()
        assert info.value.category == "transient"
    finally:
        s.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_rejects_probes_and_closes(
    fake: FakeSupabaseStorage, store: SupabaseStorage, pdf_file: Path
) -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_seconds=30, clock=clock)
    guarded = BreakerStorage(store, breaker)
    path = object_key(USER, JOB, 1, "application/pdf")
    url_path = f"/storage/v1/object/export-files/{path}"

    fake.fail(503)
    for _ in range(3):
        with pytest.raises(StorageError) as info:
            guarded.put(path, pdf_file, "application/pdf")
        assert info.value.category == "transient"
        assert not info.value.breaker_open
    assert _state(breaker) == "open"
    assert fake.path_counts[url_path] == 3

    # Open: refused without calling the server.
    before = fake.request_count
    clock.now += 10
    with pytest.raises(StorageError) as info:
        guarded.put(path, pdf_file, "application/pdf")
    assert info.value.breaker_open
    assert info.value.category == "transient"
    assert "retry in 20s" in info.value.message
    with pytest.raises(StorageError):
        guarded.check()
    assert fake.request_count == before
    assert fake.path_counts[url_path] == 3

    # After the cooldown: one probe; it fails, the breaker opens again.
    clock.now += 21
    assert _state(breaker) == "half_open"
    with pytest.raises(StorageError) as info:
        guarded.put(path, pdf_file, "application/pdf")
    assert not info.value.breaker_open
    assert fake.path_counts[url_path] == 4
    assert _state(breaker) == "open"

    # The store recovers; the next probe succeeds and closes the breaker.
    fake.recover()
    clock.now += 31
    guarded.put(path, pdf_file, "application/pdf")
    assert _state(breaker) == "closed"
    assert fake.path_counts[url_path] == 5
    assert fake.upload_counts[path] == 1
    assert guarded.signed_url(path, 60).startswith(fake.url)


def test_permanent_errors_do_not_open_the_breaker(fake: FakeSupabaseStorage) -> None:
    s = SupabaseStorage(fake.url, KEY, "no-such-bucket", timeout_seconds=5)
    breaker = CircuitBreaker(failure_threshold=2, cooldown_seconds=30, clock=Clock())
    guarded = BreakerStorage(s, breaker)
    try:
        for _ in range(5):
            with pytest.raises(StorageError) as info:
                guarded.check()
            assert info.value.category == "permanent"
        assert _state(breaker) == "closed"
        assert fake.request_count == 5
    finally:
        s.close()


def test_build_storage_picks_supabase_when_url_set(fake: FakeSupabaseStorage, tmp_path: Path) -> None:
    from shared.config import Settings, StorageSettings

    settings = Settings(storage=StorageSettings(supabase_url=fake.url, supabase_service_role_key=KEY))
    s = build_storage(settings, tmp_path)
    assert s.name == "supabase"
    s.check()
    assert isinstance(s, SupabaseStorage)
    s.close()
