"""Signed, expiring links for files kept by :class:`supervisor.delivery.storage.LocalStorage`.

A link is ``{public_base_url}/files/{path}?expires={unix seconds}&sig={hex}``;
``sig`` is HMAC-SHA256 over the object path and the expiry, keyed by a secret
that is either configured (``LINK_SECRET``) or generated once and kept in the
data directory (``link-secret``, mode 0600) so links survive restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from shared.data_dir import make_private_dir, write_private_file

SECRET_FILE = "link-secret"  # noqa: S105 - a file name, not a secret
_SECRET_BYTES = 32


class LinkSigner:
    """HMAC-SHA256 signatures for (path, expires_at) pairs."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("link secret must not be empty")
        self._secret = secret
        self._clock = clock

    def _mac(self, path: str, expires_at: int) -> str:
        message = f"{path}\n{expires_at}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, path: str, expires_at: int) -> str:
        """The hex signature for `path` valid until `expires_at` (unix seconds)."""
        return self._mac(path, int(expires_at))

    def verify(self, path: str, expires: int | str, sig: str) -> bool:
        """True when `sig` is valid for `path` and `expires` has not passed (constant-time compare)."""
        try:
            expires_at = int(expires)
        except (TypeError, ValueError):
            return False
        if expires_at < self._clock():
            return False
        expected = self._mac(path, expires_at)
        return hmac.compare_digest(expected.encode(), str(sig).encode())


def load_or_create_secret(configured: str, data_dir: Path) -> bytes:
    """The configured secret if set; else the one kept in ``data_dir/link-secret``, created once.

    The file holds hex text and is created with mode 0600. Creation is atomic and
    exclusive (temp file + hard link), so two processes starting at once agree on
    one secret.
    """
    if configured:
        return configured.encode("utf-8")
    make_private_dir(data_dir)
    target = data_dir / SECRET_FILE
    existing = _read_secret(target)
    if existing is not None:
        return existing
    value = secrets.token_bytes(_SECRET_BYTES)
    text = (value.hex() + "\n").encode("ascii")
    if write_private_file(target, lambda fh: fh.write(text), exclusive=True):
        return value
    # Someone else won the race (or the file is unreadable garbage: replaced).
    winner = _read_secret(target)
    if winner is not None:
        return winner
    write_private_file(target, lambda fh: fh.write(text))
    return value


def _read_secret(target: Path) -> bytes | None:
    try:
        text = target.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, OSError):
        return None
    try:
        value = bytes.fromhex(text)
    except ValueError:
        return None
    return value if len(value) >= 16 else None


class Signs(Protocol):
    def signed_url(self, path: str, ttl_seconds: int) -> str: ...


def download_link(storage: Signs, key: str, ttl_seconds: int) -> str:
    """The one place a download link is made: the store signs `key` for SIGNED_URL_TTL_SECONDS.

    Synchronous (a store may call out over the network): call it in a thread.
    """
    return str(storage.signed_url(key, ttl_seconds))


def has_file(job: Mapping[str, Any]) -> bool:
    """Whether a job row has a stored file to link to (completed, stored, not deleted by retention).

    Readers sign a link from ``storage_path`` when they hand one out; none reads
    ``file_url``, which is written once at completion for SQL and Realtime readers
    (the column of the seed's schema) and is dead after SIGNED_URL_TTL_SECONDS.
    """
    return job.get("status") == "completed" and bool(job.get("storage_path")) and job.get("file_deleted_at") is None
