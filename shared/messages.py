"""Messages between the supervisor and a render child, over a multiprocessing Pipe.

Tagged-union msgspec structs, encoded as msgpack with one encoder and one decoder
per direction, built once. The child never receives a secret: only the payload,
the limits, the network policy and a scratch path to write the file to.

A child runs up to ``Ready.slots`` jobs at once: every job message carries its
``job_id`` and every answer names the job it answers, in whatever order they finish.
"""

from __future__ import annotations

import os

import msgspec

from shared.errors import ErrorCategory
from shared.payload import RenderPayload
from shared.vocabulary import RenderFailure


class _Msg(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    pass


# ---- supervisor -> child ---------------------------------------------------


class NetworkPolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    allowed_hosts: list[str] = []  # images, fonts, CSS; "*.cdn.example" matches subdomains
    allowed_url_hosts: list[str] = []  # pages that may be rendered as a `url` source
    trusted_private_hosts: list[str] = []  # "host:port" allowed on private addresses (dev, tests)


class RenderLimits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_pages: int = 100
    max_image_pixels: int = 40_000_000
    max_output_bytes: int = 50_000_000
    max_fetch_bytes: int = 10_000_000
    navigation_timeout_ms: int = 30_000


class RenderJob(_Msg, tag="render"):
    job_id: str
    attempt: int
    export_type: str  # "pdf" | "image"
    payload: RenderPayload
    output_path: str  # the child writes the file here and answers with its size
    limits: RenderLimits
    policy: NetworkPolicy
    allow_test_templates: bool = False


class Stop(_Msg, tag="stop"):
    """Finish nothing more; close the browser and exit with EX_RECYCLE."""


ToChild = RenderJob | Stop

# ---- child -> supervisor ---------------------------------------------------


class Ready(_Msg, tag="ready"):
    pid: int
    browser_version: str
    boot_ms: float
    slots: int = 1  # jobs it renders at once
    browser_pid: int = 0  # its Chromium's browser process (0: not known); gone means the child is lost


class Started(_Msg, tag="started"):
    """A job's page exists: which renderer process draws it (0 when it could not be told),
    so the watchdog can kill that page alone when it grows."""

    job_id: str
    renderer_pid: int = 0


class BootFailed(_Msg, tag="boot_failed"):
    message: str


class BlockedRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str
    reason: str


class Rendered(_Msg, tag="rendered"):
    job_id: str
    output_path: str
    size_bytes: int
    content_type: str
    render_ms: float
    pages: int | None = None  # PDFs
    width: int | None = None  # images, in pixels
    height: int | None = None
    blocked: list[BlockedRequest] = []
    fetched: int = 0  # subresources that passed the policy


class RenderFailed(_Msg, tag="render_failed"):
    job_id: str
    category: ErrorCategory
    code: RenderFailure  # why, for readers (mail, console); the message is for operators
    message: str
    render_ms: float
    blocked: list[BlockedRequest] = []
    timed_out: bool = False  # the page hit its navigation or render timeout


class Log(_Msg, tag="log"):
    """A child's log line; the supervisor writes it with the same JSON fields."""

    level: str
    message: str
    job_id: str | None = None


FromChild = Ready | BootFailed | Started | Rendered | RenderFailed | Log

TO_CHILD_ENCODER = msgspec.msgpack.Encoder()
TO_CHILD_DECODER = msgspec.msgpack.Decoder(ToChild)
FROM_CHILD_ENCODER = msgspec.msgpack.Encoder()
FROM_CHILD_DECODER = msgspec.msgpack.Decoder(FromChild)

# Exit codes are a protocol (billiard's EX_RECYCLE): the supervisor reads them to
# tell a planned retirement from a crash.
EX_RECYCLE = 0x9B  # the child retired on request (Stop) or after its render budget
EX_BOOT_FAILED = 0x9C  # Chromium could not be launched
EX_PARENT_GONE = 0x9D  # the pipe closed: the supervisor is gone


class ChildOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Everything a child needs at boot; passed as msgpack bytes through spawn."""

    child_index: int
    worker_id: str
    executable_path: str  # "" = Playwright's own downloaded Chromium
    chromium_args: list[str]
    log_level: str = "info"
    scratch_dir: str  # where outputs are written; the supervisor moves them to storage
    slots: int = 1  # jobs the child renders at once, each in its own browser context


def chromium_home(scratch_dir: str, child_pid: int) -> str:
    """A child's own XDG config/cache home for its Chromium.

    Chromium's crash handler double-forks to PID 1, out of the child's process
    tree; with a home of its own its command line (``--database=<home>/...``)
    names the child, so the supervisor can find and kill it after the child.
    """
    return os.path.join(scratch_dir, f"chromium-{child_pid}")


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
