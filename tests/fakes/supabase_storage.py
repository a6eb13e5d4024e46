"""A fake Supabase Storage API (the endpoints storage3 2.34's sync client calls).

Wire format, as read from storage3/_sync/file_api.py and bucket.py:

- upload: ``POST /storage/v1/object/{bucket}/{path}`` (``update`` uses PUT), a
  multipart/form-data body with a ``cacheControl`` field and a ``file`` part whose
  Content-Type is the object's content type; headers ``Authorization: Bearer KEY``,
  ``apiKey: KEY`` and ``x-upsert: true|false`` (POST only). Answer ``{"Key": "bucket/path"}``.
- sign: ``POST /storage/v1/object/sign/{bucket}/{path}`` with ``{"expiresIn": "N"}``;
  answer ``{"signedURL": "/object/sign/{bucket}/{path}?token=..."}`` (relative to /storage/v1).
- remove: ``DELETE /storage/v1/object/{bucket}`` with ``{"prefixes": [...]}``; answer the
  list of removed objects.
- bucket: ``GET /storage/v1/bucket/{id}``; answer the bucket object, or an error.

Errors are JSON ``{"statusCode": "404", "error": "...", "message": "..."}``, the shape
storage3 turns into ``StorageApiError(message, error, statusCode)``.
"""

from __future__ import annotations

import collections
import email.parser
import email.policy
import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from ._http import FakeHandler, FakeHTTPServer

PREFIX = "/storage/v1"


@dataclass
class Upload:
    method: str
    bucket: str
    path: str
    body: bytes
    content_type: str  # of the file part
    request_content_type: str  # of the HTTP request (multipart/form-data; boundary=...)
    headers: dict[str, str]
    x_upsert: str | None
    cache_control: str | None


@dataclass
class StoredObject:
    body: bytes
    content_type: str
    updated: float = field(default_factory=time.time)


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[bytes, str]]:
    """{field name: (bytes, part content type)}"""
    raw = b"Content-Type: " + content_type.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + body
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    out: dict[str, tuple[bytes, str]] = {}
    if not msg.is_multipart():
        return out
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            out[name] = (payload, part.get_content_type() if part.get("Content-Type") else "")
    return out


class _Handler(FakeHandler):
    server: FakeSupabaseStorage

    def _dispatch(self) -> None:
        s = self.server
        body = self.read_body()
        parsed = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(parsed.path)
        with s.lock:
            s.requests.append((self.command, path))
            s.request_count += 1
            s.path_counts[path] += 1
            fail = s.fail_status
            delay = s.delay_seconds
        if delay:
            time.sleep(delay)
        if fail is not None:
            self.reply(fail, b"upstream connect error or disconnect/reset before headers", "text/plain")
            return
        if not path.startswith(PREFIX + "/"):
            self.reply_json(404, {"statusCode": "404", "error": "not_found", "message": "no route"})
            return
        if not self._authorized():
            self.reply_json(
                400, {"statusCode": "403", "error": "Unauthorized", "message": "invalid signature"}
            )
            return
        rest = path[len(PREFIX) + 1 :]
        parts = rest.split("/")
        try:
            if parts[0] == "bucket" and len(parts) == 2 and self.command == "GET":
                self._get_bucket(parts[1])
            elif parts[:2] == ["object", "sign"] and self.command == "POST" and len(parts) >= 4:
                self._sign(parts[2], "/".join(parts[3:]), body)
            elif parts[0] == "object" and len(parts) == 2 and self.command == "DELETE":
                self._remove(parts[1], body)
            elif parts[0] == "object" and len(parts) >= 3 and self.command in {"POST", "PUT"}:
                self._upload(parts[1], "/".join(parts[2:]), body)
            else:
                self.reply_json(404, {"statusCode": "404", "error": "not_found", "message": "no route"})
        except Exception as exc:  # a bug in the fake should be visible, not a hang
            self.reply_json(500, {"statusCode": "500", "error": "internal", "message": repr(exc)})

    do_GET = do_POST = do_PUT = do_DELETE = _dispatch

    def _authorized(self) -> bool:
        key = self.server.service_key
        return self.headers.get("Authorization") == f"Bearer {key}" and self.headers.get("apikey") == key

    def _bucket_missing(self) -> None:
        self.reply_json(
            404, {"statusCode": "404", "error": "Bucket not found", "message": "Bucket not found"}
        )

    def _get_bucket(self, bucket_id: str) -> None:
        if bucket_id not in self.server.buckets:
            self._bucket_missing()
            return
        now = "2024-01-01T00:00:00.000Z"
        self.reply_json(
            200,
            {
                "id": bucket_id,
                "name": bucket_id,
                "owner": "",
                "public": False,
                "created_at": now,
                "updated_at": now,
                "file_size_limit": None,
                "allowed_mime_types": None,
                "type": "STANDARD",
            },
        )

    def _upload(self, bucket: str, obj: str, body: bytes) -> None:
        s = self.server
        if bucket not in s.buckets:
            self._bucket_missing()
            return
        req_ct = self.headers.get("Content-Type", "")
        fields = _parse_multipart(req_ct, body) if req_ct.startswith("multipart/") else {}
        file_body, file_ct = fields.get("file", (body, req_ct))
        cache = fields.get("cacheControl", (b"", ""))[0].decode() or None
        upsert = self.headers.get("x-upsert")
        with s.lock:
            s.uploads.append(
                Upload(
                    method=self.command,
                    bucket=bucket,
                    path=obj,
                    body=file_body,
                    content_type=file_ct,
                    request_content_type=req_ct,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    x_upsert=upsert,
                    cache_control=cache,
                )
            )
            s.upload_counts[obj] += 1
            exists = (bucket, obj) in s.objects
            if self.command == "POST" and exists and upsert != "true":
                conflict = True
            else:
                conflict = False
                s.objects[(bucket, obj)] = StoredObject(file_body, file_ct)
        if conflict:
            self.reply_json(
                400, {"statusCode": "409", "error": "Duplicate", "message": "The resource already exists"}
            )
            return
        self.reply_json(200, {"Key": f"{bucket}/{obj}", "Id": secrets.token_hex(8)})

    def _sign(self, bucket: str, obj: str, body: bytes) -> None:
        s = self.server
        if bucket not in s.buckets:
            self._bucket_missing()
            return
        data = json.loads(body or b"{}")
        with s.lock:
            s.sign_requests.append({"bucket": bucket, "path": obj, **data})
            s.sign_counts[obj] += 1
            exists = (bucket, obj) in s.objects
        if not exists:
            self.reply_json(400, {"statusCode": "404", "error": "not_found", "message": "Object not found"})
            return
        token = secrets.token_urlsafe(16)
        quoted = urllib.parse.quote(obj, safe="/")
        self.reply_json(200, {"signedURL": f"/object/sign/{bucket}/{quoted}?token={token}"})

    def _remove(self, bucket: str, body: bytes) -> None:
        s = self.server
        if bucket not in s.buckets:
            self._bucket_missing()
            return
        prefixes = json.loads(body or b"{}").get("prefixes", [])
        removed = []
        with s.lock:
            s.remove_requests.append(list(prefixes))
            for p in prefixes:
                s.remove_counts[p] += 1
                obj = s.objects.pop((bucket, p), None)
                if obj is not None:
                    removed.append({"name": p, "bucket_id": bucket, "metadata": {"size": len(obj.body)}})
        self.reply_json(200, removed)


class FakeSupabaseStorage(FakeHTTPServer):
    """``with FakeSupabaseStorage(service_key="k") as fake: ... fake.url``."""

    def __init__(self, service_key: str = "service-role-key", buckets: tuple[str, ...] = ("export-files",)):
        super().__init__(_Handler)
        self.service_key = service_key
        self.buckets: set[str] = set(buckets)
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.uploads: list[Upload] = []
        self.sign_requests: list[dict[str, Any]] = []
        self.remove_requests: list[list[str]] = []
        self.requests: list[tuple[str, str]] = []
        self.request_count = 0
        self.path_counts: collections.Counter[str] = collections.Counter()  # every request, by URL path
        self.upload_counts: collections.Counter[str] = collections.Counter()  # accepted uploads, by object
        self.sign_counts: collections.Counter[str] = collections.Counter()
        self.remove_counts: collections.Counter[str] = collections.Counter()
        self.fail_status: int | None = None
        self.delay_seconds = 0.0

    def fail(self, status: int = 503) -> None:
        """Answer every request with `status` (a plain-text body, like a proxy would)."""
        with self.lock:
            self.fail_status = status

    def recover(self) -> None:
        with self.lock:
            self.fail_status = None
            self.delay_seconds = 0.0

    def slow(self, seconds: float) -> None:
        with self.lock:
            self.delay_seconds = seconds
