"""A render child without Chromium: answers every job with a fixed small file.

For measuring the queue and the supervisor alone (the benchmark's "null
renderer") and for tests of the pool's bookkeeping. Same protocol as main.py.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import signal
import sys
import time
from pathlib import Path

import msgspec

from shared.messages import (
    EX_PARENT_GONE,
    EX_RECYCLE,
    FROM_CHILD_ENCODER,
    TO_CHILD_DECODER,
    ChildOptions,
    Ready,
    Rendered,
    RenderJob,
    Stop,
)

TINY_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)


def null_child_entry(conn: multiprocessing.connection.Connection, options_bytes: bytes) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.setpgrp()
    options = msgspec.msgpack.decode(options_bytes, type=ChildOptions)
    ready = Ready(pid=os.getpid(), browser_version="null", boot_ms=0.0, slots=options.slots)
    conn.send_bytes(FROM_CHILD_ENCODER.encode(ready))
    while True:
        try:
            message = TO_CHILD_DECODER.decode(conn.recv_bytes())
        except (EOFError, OSError):
            sys.exit(EX_PARENT_GONE)
        if isinstance(message, Stop):
            sys.exit(EX_RECYCLE)
        assert isinstance(message, RenderJob)
        started = time.perf_counter()
        path = Path(message.output_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(TINY_PDF)
        conn.send_bytes(
            FROM_CHILD_ENCODER.encode(
                Rendered(
                    job_id=message.job_id,
                    output_path=str(path),
                    size_bytes=len(TINY_PDF),
                    content_type="application/pdf",
                    pages=1,
                    render_ms=(time.perf_counter() - started) * 1000,
                )
            )
        )
