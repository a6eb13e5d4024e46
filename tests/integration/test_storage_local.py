"""LocalStorage (files under the data dir, signed links) and LinkSigner."""

from __future__ import annotations

import os
import stat
import urllib.parse
from pathlib import Path

import pytest

from shared.config import Settings, StorageSettings
from supervisor.delivery.breaker import BreakerStorage, CircuitBreaker
from supervisor.delivery.links import LinkSigner, load_or_create_secret
from supervisor.delivery.storage import LocalStorage, Storage, StorageError, build_storage, object_key

pytestmark = pytest.mark.timeout(300)

USER = "3f1c2b9e-7f5a-4c51-9a43-0a8f4f1d2e11"
JOB = "9b2d4c1a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> LocalStorage:
    signer = LinkSigner(b"s" * 32, clock=clock)
    return LocalStorage(tmp_path / "files", signer, "http://worker.test:3000/", clock=clock)


def _src(tmp_path: Path, data: bytes = b"%PDF-1.7 test") -> Path:
    p = tmp_path / "render-output.pdf"
    p.write_bytes(data)
    return p


def test_local_storage_satisfies_the_protocol(store: LocalStorage) -> None:
    assert isinstance(store, Storage)
    assert store.name == "local"


def test_put_writes_atomically_and_overwrites(store: LocalStorage, tmp_path: Path) -> None:
    path = object_key(USER, JOB, 1, "application/pdf")
    store.put(path, _src(tmp_path, b"one"), "application/pdf")
    target = tmp_path / "files" / USER / JOB / "1.pdf"
    assert target.read_bytes() == b"one"
    store.put(path, _src(tmp_path, b"two"), "application/pdf")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["1.pdf"]
    assert list(store.temp_dir.iterdir()) == []  # no temp files left


def test_put_missing_input_is_permanent(store: LocalStorage, tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        store.put(f"{USER}/{JOB}.pdf", tmp_path / "nope.pdf", "application/pdf")
    assert info.value.category == "permanent"


def test_signed_url_verifies(store: LocalStorage, tmp_path: Path, clock: Clock) -> None:
    path = object_key(USER, JOB, 1, "application/pdf")
    store.put(path, _src(tmp_path), "application/pdf")
    url = store.signed_url(path, 3600)
    parsed = urllib.parse.urlsplit(url)
    assert f"{parsed.scheme}://{parsed.netloc}" == "http://worker.test:3000"
    assert parsed.path == f"/files/{USER}/{JOB}/1.pdf"
    q = dict(urllib.parse.parse_qsl(parsed.query))
    assert int(q["expires"]) == int(clock.now) + 3600
    served = urllib.parse.unquote(parsed.path.removeprefix("/files/"))
    assert store.links.verify(served, q["expires"], q["sig"])
    assert store.resolve(served).read_bytes() == b"%PDF-1.7 test"


def test_link_expired_and_tampered(clock: Clock) -> None:
    signer = LinkSigner(b"k" * 32, clock=clock)
    expires = int(clock.now) + 60
    sig = signer.sign("u/j.pdf", expires)
    assert signer.verify("u/j.pdf", expires, sig)
    assert signer.verify("u/j.pdf", str(expires), sig)
    assert not signer.verify("u/other.pdf", expires, sig)  # another file
    assert not signer.verify("u/j.pdf", expires + 1, sig)  # extended expiry
    assert not signer.verify("u/j.pdf", expires, sig[:-1] + ("0" if sig[-1] != "0" else "1"))
    assert not signer.verify("u/j.pdf", "soon", sig)
    assert not LinkSigner(b"x" * 32, clock=clock).verify("u/j.pdf", expires, sig)  # another secret
    clock.now += 61
    assert not signer.verify("u/j.pdf", expires, sig)


@pytest.mark.parametrize(
    "bad", ["../x.pdf", "/etc/passwd", "a/../../x", "a//b", "./a", "", "a\\..\\b", "C:/x", "a/\x00b"]
)
def test_path_escape_refused(store: LocalStorage, tmp_path: Path, bad: str) -> None:
    with pytest.raises(StorageError):
        store.put(bad, _src(tmp_path), "application/pdf")
    with pytest.raises(StorageError):
        store.signed_url(bad, 60)
    with pytest.raises(StorageError):
        store.delete([bad])


def test_symlink_out_of_root_refused(store: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "files").mkdir()
    os.symlink(outside, tmp_path / "files" / "evil")
    with pytest.raises(StorageError):
        store.put("evil/x.pdf", _src(tmp_path), "application/pdf")
    assert not (outside / "x.pdf").exists()


def test_delete_missing_is_fine(store: LocalStorage, tmp_path: Path) -> None:
    path = object_key(USER, JOB, 1, "application/pdf")
    store.put(path, _src(tmp_path), "application/pdf")
    store.delete([path, f"{USER}/missing.pdf", "nobody/missing.pdf"])
    assert not (tmp_path / "files" / path).exists()
    store.delete([path])


def test_check(store: LocalStorage, tmp_path: Path) -> None:
    store.check()
    assert (tmp_path / "files").is_dir()
    assert list((tmp_path / "files").iterdir()) == []


def test_secret_configured_wins(tmp_path: Path) -> None:
    assert load_or_create_secret("configured", tmp_path) == b"configured"
    assert not (tmp_path / "link-secret").exists()


def test_secret_generated_once_with_mode_0600(tmp_path: Path) -> None:
    first = load_or_create_secret("", tmp_path / "data")
    f = tmp_path / "data" / "link-secret"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert len(first) == 32
    assert load_or_create_secret("", tmp_path / "data") == first
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["link-secret"]


def test_build_storage_local_by_default(tmp_path: Path) -> None:
    settings = Settings(storage=StorageSettings(public_base_url="https://exports.example"))
    s = build_storage(settings, tmp_path)
    assert isinstance(s, LocalStorage)
    assert s.root == tmp_path / "files"
    assert s.signed_url("u/j.pdf", 60).startswith("https://exports.example/files/u/j.pdf?expires=")
    default = build_storage(Settings(), tmp_path)
    assert isinstance(default, LocalStorage)
    assert default.public_base_url == "http://localhost:3000"


def test_breaker_wraps_local_storage(store: LocalStorage, tmp_path: Path) -> None:
    guarded = BreakerStorage(store, CircuitBreaker(1, 5, enabled=False))
    assert isinstance(guarded, Storage)
    assert guarded.name == "local"
    guarded.put(f"{USER}/{JOB}.pdf", _src(tmp_path), "application/pdf")
    assert "sig=" in guarded.signed_url(f"{USER}/{JOB}.pdf", 60)
