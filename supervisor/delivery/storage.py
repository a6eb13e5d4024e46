"""Where rendered files go: Supabase Storage, or a local directory with signed links.

The interface is synchronous; the supervisor calls it through ``asyncio.to_thread``.
Every failure is a :class:`StorageError` whose category tells the queue what to do:
HTTP 5xx, 429, 408, timeouts and connection errors are ``transient`` (retried);
any other 4xx is ``permanent`` and carries the provider's message.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import httpx

from shared.data_dir import make_private_dir, write_private_file
from shared.errors import ErrorCategory, JobError
from shared.vocabulary import OutputFormat
from supervisor.delivery.links import LinkSigner, load_or_create_secret

if TYPE_CHECKING:
    from shared.config import Settings

T = TypeVar("T")

# Upload temp files live here, one folder per writing process ({host}-{pid}), so
# the temp sweep can tell a dead writer's leftovers from a live one's.
UPLOAD_TEMP_DIR = ".uploads"


class StorageError(JobError):
    """A store operation failed. ``breaker_open`` is True when the circuit breaker refused the call."""

    breaker_open: bool = False
    retry_after: float | None = None

    def __init__(self, category: ErrorCategory, message: str, status: int | None = None) -> None:
        super().__init__(category, message)
        self.status = status


@runtime_checkable
class Storage(Protocol):
    name: str

    def put(self, path: str, file: Path, content_type: str) -> None:
        """Store `file` at `path`, overwriting what is there (upsert)."""

    def signed_url(self, path: str, ttl_seconds: int) -> str:
        """A download link for `path` that expires after `ttl_seconds`."""

    def delete(self, paths: list[str]) -> None:
        """Delete objects; missing ones are fine."""

    def check(self) -> None:
        """Raise StorageError if the store is unusable (bucket missing, root not writable)."""


def object_key(user_id: str, job_id: str, attempt: int, content_type: str) -> str:
    """The object key one claim writes: ``{user_id}/{job_id}/{attempt}.{ext}``.

    Every claim of a job has its own attempt number, so its own key: a worker that
    lost its claim can never overwrite the object a later claim completed with.
    """
    fmt = OutputFormat.from_content_type(content_type.split(";", 1)[0].strip().lower())
    for label, value in (("user_id", user_id), ("job_id", job_id)):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", value):
            raise StorageError(ErrorCategory.VALIDATION, f"{label} {value!r} cannot be used in a storage path")
    return f"{user_id}/{job_id}/{int(attempt)}.{fmt.extension}"


def writer_tag() -> str:
    """``{host}-{pid}``: names this process's temp folders (see supervisor/delivery/sweep.py)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def validate_path(path: str) -> tuple[str, ...]:
    """Split a relative object path; refuse absolute paths, ``..``, ``.``, empty segments."""
    if not path or path.startswith(("/", "\\")) or "\\" in path or "\x00" in path:
        raise StorageError(ErrorCategory.PERMANENT, f"invalid storage path {path!r}: must be relative")
    parts = tuple(path.split("/"))
    if any(p in {"", ".", ".."} for p in parts) or re.match(r"^[A-Za-z]:", path):
        raise StorageError(ErrorCategory.PERMANENT, f"invalid storage path {path!r}: must not escape the store")
    return parts


def _is_transient_status(status: int) -> bool:
    return status >= 500 or status in {408, 429}


# ---- local directory -------------------------------------------------------


class LocalStorage:
    """Files under `root`, served by the worker at ``/files/{path}`` with signed expiring links."""

    name = "local"

    def __init__(
        self,
        root: Path,
        links: LinkSigner,
        public_base_url: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.links = links
        self.public_base_url = public_base_url.rstrip("/")
        self._clock = clock
        self.temp_dir = self.root / UPLOAD_TEMP_DIR / writer_tag()

    def resolve(self, path: str) -> Path:
        """The file for an object path, refusing anything outside root."""
        parts = validate_path(path)
        # os.path on str: the same checks as Path.resolve()/parents, at a fraction of
        # the CPU (this runs for every upload; measured 12 % of put in the null bench).
        root = os.path.realpath(self.root)
        target = os.path.join(root, *parts)
        # Symlinks inside root must not lead out of it either.
        resolved = os.path.realpath(target)
        if resolved != root and not resolved.startswith(root.rstrip(os.sep) + os.sep):
            raise StorageError(ErrorCategory.PERMANENT, f"invalid storage path {path!r}: escapes the store")
        return Path(target)

    def put(self, path: str, file: Path, content_type: str) -> None:
        target = self.resolve(path)
        try:
            make_private_dir(target.parent)
            make_private_dir(self.temp_dir)
            with open(file, "rb") as src:  # opened first: a missing input writes nothing
                # Private (0600): exports are users' documents.
                write_private_file(target, lambda dst: shutil.copyfileobj(src, dst, 1024 * 1024),
                                   temp_dir=self.temp_dir)
        except FileNotFoundError as exc:
            if not Path(file).exists():
                raise StorageError(ErrorCategory.PERMANENT, f"local storage: input file {file} does not exist") from exc
            raise StorageError(ErrorCategory.TRANSIENT, f"local storage: cannot write {path}: {exc}") from exc
        except OSError as exc:
            raise StorageError(ErrorCategory.TRANSIENT, f"local storage: cannot write {path}: {exc}") from exc

    def signed_url(self, path: str, ttl_seconds: int) -> str:
        validate_path(path)
        expires = int(self._clock()) + int(ttl_seconds)
        sig = self.links.sign(path, expires)
        quoted = urllib.parse.quote(path, safe="/")
        return f"{self.public_base_url}/files/{quoted}?expires={expires}&sig={sig}"

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            target = self.resolve(path)
            try:
                target.unlink(missing_ok=True)
            except IsADirectoryError:
                continue
            except OSError as exc:
                raise StorageError(ErrorCategory.TRANSIENT, f"local storage: cannot delete {path}: {exc}") from exc
            parent = target.parent
            if parent != self.root and parent.resolve() != self.root.resolve():
                with contextlib.suppress(OSError):
                    parent.rmdir()  # only when empty

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".check-{secrets.token_hex(4)}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageError(
                ErrorCategory.PERMANENT, f"local storage root {self.root} is not writable: {exc}") from exc


# ---- Supabase Storage ------------------------------------------------------


class SupabaseStorage:
    """Supabase Storage through the `supabase` client (storage3), with bounded timeouts."""

    name = "supabase"

    def __init__(self, url: str, service_role_key: str, bucket: str, timeout_seconds: float = 30) -> None:
        import supabase

        self.bucket = bucket
        self.timeout_seconds = timeout_seconds
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_seconds, connect=min(10.0, float(timeout_seconds))),
            follow_redirects=True,
        )
        try:
            options = supabase.ClientOptions(httpx_client=self._http)
            self._client = supabase.create_client(url, service_role_key, options)
        except Exception as exc:
            self._http.close()
            raise StorageError(ErrorCategory.PERMANENT, f"supabase storage: cannot create client: {exc}") from exc
        self._storage: Any = self._client.storage

    def _bucket(self) -> Any:
        return self._storage.from_(self.bucket)

    def _run(self, operation: str, fn: Callable[[], T]) -> T:
        from storage3.exceptions import StorageApiError
        from storage3.utils import StorageException

        try:
            return fn()
        except StorageApiError as exc:
            try:
                status = int(exc.status)
            except (TypeError, ValueError):
                status = 500
            category: ErrorCategory = (
                ErrorCategory.TRANSIENT if _is_transient_status(status) else ErrorCategory.PERMANENT
            )
            raise StorageError(
                category,
                f"supabase storage {operation} failed: {status} {exc.code}: {exc.message}",
                status=status,
            ) from exc
        except httpx.TimeoutException as exc:
            raise StorageError(
                ErrorCategory.TRANSIENT,
                f"supabase storage {operation} timed out after {self.timeout_seconds}s: {exc!r}"
            ) from exc
        except httpx.TransportError as exc:
            raise StorageError(
                ErrorCategory.TRANSIENT, f"supabase storage {operation}: connection error: {exc!r}"
            ) from exc
        except StorageException as exc:
            raise StorageError(ErrorCategory.TRANSIENT, f"supabase storage {operation}: {exc}") from exc
        except ValueError as exc:
            # pydantic's ValidationError (a malformed answer) is a ValueError too.
            raise StorageError(
                ErrorCategory.TRANSIENT, f"supabase storage {operation}: unexpected answer: {exc}"
            ) from exc

    def put(self, path: str, file: Path, content_type: str) -> None:
        validate_path(path)
        if not Path(file).is_file():
            raise StorageError(ErrorCategory.PERMANENT, f"supabase storage upload: input file {file} does not exist")
        options = {"content-type": content_type, "upsert": "true", "cache-control": "3600"}
        self._run("upload", lambda: self._bucket().upload(path, Path(file), options))

    def signed_url(self, path: str, ttl_seconds: int) -> str:
        validate_path(path)
        result = self._run("sign", lambda: self._bucket().create_signed_url(path, int(ttl_seconds)))
        url = result.get("signedURL") or result.get("signedUrl")
        if not url:
            raise StorageError(
                ErrorCategory.TRANSIENT,
                f"supabase storage sign: no signed URL in the answer for {path}"
            )
        return str(url)

    def delete(self, paths: list[str]) -> None:
        if not paths:
            return
        for path in paths:
            validate_path(path)
        self._run("remove", lambda: self._bucket().remove(list(paths)))

    def check(self) -> None:
        self._run("bucket check", lambda: self._storage.get_bucket(self.bucket))

    def close(self) -> None:
        self._http.close()


def build_storage(settings: Settings, data_dir: Path) -> Storage:
    """SupabaseStorage when SUPABASE_URL is set, else LocalStorage under data_dir/files."""
    s = settings.storage
    if s.supabase_url:
        return SupabaseStorage(s.supabase_url, s.supabase_service_role_key, s.storage_bucket)
    secret = load_or_create_secret(s.link_secret, data_dir)
    base = s.public_base_url or f"http://localhost:{settings.worker.port}"
    return LocalStorage(data_dir / "files", LinkSigner(secret), base)
