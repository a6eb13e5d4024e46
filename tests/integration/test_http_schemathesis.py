"""Property-based run of the OpenAPI document against the live app (bounded: 25 examples per operation).

The app runs on a real uvicorn server in a background thread with its own event
loop, pool and database (the async pool cannot be shared with schemathesis's
synchronous client). The schema is loaded from the app's own /openapi.json.
Check: no 5xx on any generated request, with a trusted API key.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is not installed (pip install schemathesis; a dev dependency)"
)
from hypothesis import HealthCheck, given, settings  # noqa: E402  (installed with schemathesis)
from schemathesis.checks import not_a_server_error  # noqa: E402

from shared.config import ApiSettings  # noqa: E402
from supervisor.delivery.links import LinkSigner  # noqa: E402
from supervisor.delivery.storage import LocalStorage  # noqa: E402
from supervisor.http.app import AppState, HttpServer, build_app, make_server  # noqa: E402
from supervisor.http.health import CallbackHealthSources  # noqa: E402
from supervisor.queue.database import open_pool  # noqa: E402
from supervisor.queue.jobs import JobQueue  # noqa: E402
from supervisor.queue.migrate import sync_queue_settings  # noqa: E402
from supervisor.telemetry.metrics import Metrics  # noqa: E402

try:
    from tests.conftest import ADMIN_URL, _url_for, make_settings
except ModuleNotFoundError:  # pytest puts tests/ (the conftest's folder) on sys.path, not the repo root
    from conftest import ADMIN_URL, _url_for, make_settings  # type: ignore[no-redef,import-not-found,unused-ignore]

pytestmark = pytest.mark.timeout(300)

API_KEY = "schemathesis-trusted-key-0123456789"


class LiveServer:
    """build_app + make_server in a thread with its own loop and pool."""

    def __init__(self, db_url: str, tmp: Path) -> None:
        settings = make_settings(tmp, db_url)
        sync_queue_settings(db_url, settings)
        self.settings = msgspec.structs.replace(settings, api=ApiSettings(export_api_keys=API_KEY))
        self.db_url = db_url
        self.tmp = tmp
        self.server: HttpServer | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="schemathesis-app", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        pool = await open_pool(self.db_url, self.settings, max_size=5)
        try:
            signer = LinkSigner(b"schemathesis-link-secret-0123456789")
            files = self.tmp / "files"
            state = AppState(
                settings=self.settings,
                queue=JobQueue(pool, "schemathesis", self.settings.retry),
                metrics=Metrics(),
                listener=None,
                storage=LocalStorage(files, signer, "http://127.0.0.1"),
                link_signer=signer,
                files_root=files,
                health=CallbackHealthSources(pool),
            )
            self.server = make_server(build_app(state), 0, "127.0.0.1")
            task = asyncio.create_task(self.server.serve())
            while not self.server.started and not task.done():
                await asyncio.sleep(0.01)
            self.ready.set()
            await task
        finally:
            await pool.close()

    def __enter__(self) -> str:
        self.thread.start()
        assert self.ready.wait(30), "the app did not start"
        if self.error is not None:
            raise self.error
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def live_url(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = f"ew_st_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        with LiveServer(_url_for(name), tmp_path_factory.mktemp("schemathesis")) as url:
            yield url
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_api_never_answers_5xx(live_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    seen: list[str] = []
    statuses: list[tuple[str, int]] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        seen.append(operation.label)

        label = operation.label

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
        )
        def run(case: Any) -> None:
            response = case.call_and_validate(
                base_url=live_url, headers=headers, checks=[not_a_server_error], timeout=10
            )
            statuses.append((label, response.status_code))  # noqa: B023 (run() is called right here)

        run()
    print(sorted(Counter(statuses).items()))
    assert len(statuses) > len(seen), "schemathesis sent (almost) nothing"
    assert "POST /v1/jobs" in seen and "GET /v1/jobs/{job_id}/events" in seen, seen
