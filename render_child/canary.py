"""A tiny render the supervisor sends to a fresh child to prove Chromium can render."""

from __future__ import annotations

import uuid

from shared.messages import NetworkPolicy, RenderJob, RenderLimits
from shared.payload import HtmlSource, RenderPayload

CANARY_HTML = "<!doctype html><title>canary</title><h1>canary</h1>"


def canary_job(output_path: str) -> RenderJob:
    """A one-page PDF of ``<h1>canary</h1>``: no network, a few tens of ms on a warm child."""
    return RenderJob(
        job_id=f"canary-{uuid.uuid4().hex[:12]}",
        attempt=1,
        export_type="pdf",
        payload=RenderPayload(source=HtmlSource(html=CANARY_HTML)),
        output_path=output_path,
        limits=RenderLimits(max_pages=2, navigation_timeout_ms=10_000),
        policy=NetworkPolicy(),
    )
