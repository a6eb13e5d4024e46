"""The operator console in a real browser: Playwright drives the system Chromium against a real `serve`.

One walk through the console as an operator would: a wrong key is refused;
signing in works; a failed job is found, retried, and turns completed on a page
opened before the retry (live, over server-sent events, without a reload); a
pending job is cancelled; a POST without the CSRF token is refused; every page
passes axe-core with no serious or critical violation and logs no browser error
(the pages run under their own Content-Security-Policy). A screenshot of each
page is saved in the test's directory.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from serving import free_port, requires_chromium, running_serve, serve_env

from tests.integration.console_helpers import CONSOLE_KEYS, OPERATOR, OPERATOR_KEY, insert_job, job_status

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]

AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
TIMEOUT_MS = 30_000
expect.set_options(timeout=TIMEOUT_MS)  # a render on this shared machine can take seconds


class Operator:
    """One browser page, with axe, screenshots and the browser's errors collected."""

    def __init__(self, page: Page, base: str, shots: Path) -> None:
        self.page = page
        self.base = base
        self.shots = shots
        self.errors: list[str] = []
        self.axe_reports: dict[str, list[dict[str, Any]]] = {}
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        # A wrong key's 401 and the refused POSTs are expected answers, not page faults.
        if message.type == "error" and "status of 40" not in message.text:
            self.errors.append(message.text)

    def check(self, name: str) -> None:
        """Screenshot the page and run axe-core in it (evaluated over CDP, so the page's CSP stays on)."""
        self.page.screenshot(path=self.shots / f"{name}.png", full_page=True)
        self.page.evaluate(AXE.read_text(encoding="utf-8") + "\n;undefined")
        result = self.page.evaluate(
            "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
            ".map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target)}))"
        )
        self.axe_reports[name] = result
        serious = [v for v in result if v["impact"] in ("serious", "critical")]
        assert not serious, f"{name}: {json.dumps(serious, indent=1)}"


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


def seed(db_url: str) -> dict[str, str]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Some history for the overview's chart and counts.
        for minutes in range(2, 58, 2):
            insert_job(conn, status="completed", created_ago=timedelta(minutes=minutes, seconds=minutes % 3 * 20),
                       priority=100 if minutes % 3 else 10)
        for minutes in (7, 22, 23, 41):
            insert_job(conn, status="failed", error_category="permanent", error_message="page too large",
                       attempts=1, created_ago=timedelta(minutes=minutes))
        failed = insert_job(
            conn, status="failed", error_category="transient", attempts=3, html="<h1>retry me</h1>",
            error_message="render child died (crashed, exit code -9) during the render",
            notify_email="someone.private@example.com",
            metadata={"blocked_requests": ["http://169.254.169.254/latest/meta-data/"]},
        )
        # Not claimable for an hour (a retry backoff), so it stays pending until cancelled.
        pending = insert_job(conn, status="pending", available_in=timedelta(hours=1), created_ago=timedelta(minutes=1))
    return {"failed": failed, "pending": pending}


def test_operator_walks_the_console(db_url: str, tmp_path: Path, browser: Browser) -> None:
    jobs = seed(db_url)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    port = free_port()
    env = serve_env(db_url, tmp_path / "data", port, CONSOLE_KEYS=CONSOLE_KEYS, HEARTBEAT_INTERVAL_SECONDS="1",
                    CONSOLE_LIVE_INTERVAL_MS="300")
    base = f"http://127.0.0.1:{port}/console"
    with running_serve(env, tmp_path / "serve.log"):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        op = Operator(context.new_page(), base, shots)
        page = op.page

        # A wrong key is refused; the login page is the only thing an outsider sees.
        page.goto(f"{base}/jobs")
        expect(page).to_have_url(f"{base}/login?next=%2Fconsole%2Fjobs")
        op.check("login")
        page.get_by_label("Operator key").fill("this-is-not-the-key")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_have_text("That key is not an operator key.")
        assert not context.cookies()

        # Signing in lands where the operator was going, with a strict, HttpOnly cookie.
        page.get_by_label("Operator key").fill(OPERATOR_KEY)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(f"{base}/jobs")
        (cookie,) = context.cookies()
        assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == ("console_session", True, "Strict")
        assert cookie["expires"] > 0
        expect(page.get_by_text(f"Signed in as {OPERATOR}")).to_be_visible()

        # Overview and workers.
        page.get_by_role("link", name="Overview").click()
        expect(page.locator('td[data-count="failed"]')).to_have_text("5")
        expect(page.locator('dd[data-fact="canary"]').first).to_have_text("passed")
        op.check("overview")
        page.get_by_role("link", name="Workers").click()
        expect(page.get_by_text("(this worker, read live)")).to_be_visible()
        expect(page.get_by_role("cell", name="idle").first).to_be_visible()
        op.check("workers")

        # The failed job, found by filtering; this page stays open while it is retried elsewhere.
        page.get_by_role("link", name="Jobs").click()
        page.get_by_label("Status").select_option("failed")
        page.get_by_role("button", name="Filter").click()
        row = page.locator(f"#row-{jobs['failed']}")
        expect(row.locator("[data-status]")).to_have_text("failed")
        expect(page).to_have_url(f"{base}/jobs?status=failed&type=&user=&from=&to=")
        op.check("jobs")
        page.evaluate("window.loadedOnce = true")
        overview = context.new_page()
        overview.goto(f"{base}/")
        completed = int(overview.locator('td[data-count="completed"]').inner_text())
        overview.evaluate("window.loadedOnce = true")

        # Its page: timeline, masked email, the blocked request; then retry it, confirming.
        actor = context.new_page()
        actor.set_default_timeout(TIMEOUT_MS)
        actor.goto(f"{base}/jobs/{jobs['failed']}")
        expect(actor.get_by_text("attempt 3 failed")).to_be_visible()
        expect(actor.get_by_text("s***@e***.com").first).to_be_visible()
        expect(actor.get_by_text("http://169.254.169.254/latest/meta-data/")).to_be_visible()
        assert "retry me" not in actor.content()
        Operator(actor, base, shots).check("job")
        actor.get_by_role("link", name="Retry…").click()
        expect(actor.get_by_text("back to pending with a fresh allowance")).to_be_visible()
        Operator(actor, base, shots).check("confirm")
        actor.get_by_role("button", name="Yes, retry").click()
        expect(actor.get_by_role("status")).to_have_text("retried: back to pending")

        # The worker renders it; the list row and the overview's counts turn over live.
        expect(row.locator("[data-status]")).to_have_text("completed")
        expect(overview.locator('td[data-count="completed"]')).to_have_text(str(completed + 1))
        assert page.evaluate("window.loadedOnce") is True, "the jobs page reloaded"
        assert overview.evaluate("window.loadedOnce") is True, "the overview reloaded"
        assert job_status_of(db_url, jobs["failed"]) == "completed"

        # Cancel the pending job.
        actor.goto(f"{base}/jobs/{jobs['pending']}")
        actor.get_by_role("link", name="Cancel…").click()
        actor.get_by_role("button", name="Yes, cancel it").click()
        expect(actor.get_by_role("status")).to_have_text("cancelled")
        expect(actor.locator("#job-status [data-status]")).to_have_text("cancelled")
        assert job_status_of(db_url, jobs["pending"]) == "cancelled"

        # A POST without the CSRF token (or with a wrong one) is refused, and changes nothing.
        for body in ("", "csrf=forged"):
            status = actor.evaluate(
                "async ([url, body]) => (await fetch(url, {method: 'POST', body: body,"
                " headers: {'Content-Type': 'application/x-www-form-urlencoded'}})).status",
                [f"{base}/jobs/{jobs['failed']}/retry", body],
            )
            assert status == 403
        retry_all = actor.evaluate(
            "async (url) => (await fetch(url, {method: 'POST', body: 'category=permanent',"
            " headers: {'Content-Type': 'application/x-www-form-urlencoded'}})).status",
            f"{base}/actions/retry-failed",
        )
        assert retry_all == 403
        assert job_status_of(db_url, jobs["failed"]) == "completed"

        # The audit log names the operator for both actions, and nothing for the refused ones.
        page.get_by_role("link", name="Actions").click()
        audit = page.get_by_role("table", name="The last 2 console actions")
        expect(audit.get_by_role("row")).to_have_count(3)
        expect(audit).to_contain_text("retry_job")
        expect(audit).to_contain_text("cancel_job")
        op.check("actions")

        # Signing out ends the session.
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(f"{base}/login")
        page.goto(f"{base}/")
        expect(page).to_have_url(f"{base}/login?next=%2Fconsole%2F")

        assert not op.errors, op.errors
        assert "closing connection" not in (tmp_path / "serve.log").read_text()  # closed streams cancel no query
        with psycopg.connect(db_url, autocommit=True) as conn:  # the worker's own row, from its heartbeat
            row = conn.execute("SELECT capacity, children_ready + children_busy, claiming, canary_ok, "
                               "now() - last_heartbeat < interval '10 seconds' FROM export_workers").fetchall()
        assert row == [(1, 1, True, True, True)]
        (tmp_path / "axe.json").write_text(json.dumps(op.axe_reports, indent=1))
        context.close()
    assert sorted(p.name for p in shots.iterdir()) == [
        "actions.png", "confirm.png", "job.png", "jobs.png", "login.png", "overview.png", "workers.png"]


def job_status_of(db_url: str, job_id: str) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return job_status(conn, str(uuid.UUID(job_id)))
