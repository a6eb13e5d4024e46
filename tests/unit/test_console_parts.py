"""The console's pure parts: CONSOLE_KEYS parsing, masking, the sign-in limit, the chart."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from shared.config import ConfigError, console_operators, load_settings
from supervisor.http.console.access import Access
from supervisor.http.console.chart import Minute, last_hour, throughput_svg
from supervisor.http.console.masking import mask_email, mask_text, mask_url, payload_summary
from supervisor.queue.workers import KillLog

KEY = "k" * 16


def test_console_keys_entries_are_named_or_named_by_hash() -> None:
    operators = console_operators(f" alice:{KEY}, {'b' * 20} ,")
    assert operators["alice"] == KEY
    (bare,) = [name for name in operators if name != "alice"]
    assert re.fullmatch(r"operator-[0-9a-f]{8}", bare)
    assert console_operators("") == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("alice:short", "CONSOLE_KEYS entry 1 (alice): the key is 5 characters; at least 16 are required"),
        (f"al ice:{KEY}", "CONSOLE_KEYS entry 1: the operator name must be"),
        (f"a:{KEY},a:{KEY}x", "CONSOLE_KEYS names operator 'a' twice"),
    ],
)
def test_bad_console_keys_stop_the_program_naming_the_problem(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(environ={"CONSOLE_KEYS": value})


def test_masking() -> None:
    assert mask_email("alice@example.com") == "a***@e***.com"
    assert mask_url("https://user:pw@cdn.example.com:8443/a.png?sig=1#x") == "https://cdn.example.com:8443/a.png?…"
    assert mask_text("to bob@corp.example mail failed") == "to b***@c***.example mail failed"
    assert mask_text(None) == ""
    summary = dict(payload_summary({"source": {"kind": "url", "url": "https://x.example/menu?token=abc"},
                                    "email": "eve@example.net"}, "pdf"))
    assert summary == {"source": "url", "url": "https://x.example/menu?…", "email": "e***@e***.net"}
    assert payload_summary("nonsense", "pdf")[0][0] == "payload"


def test_sign_in_limit_is_a_sliding_minute_per_client() -> None:
    now = [1000.0]
    access = Access({"a": KEY}, session_seconds=60, signin_limit_per_minute=2, clock=lambda: now[0])
    assert access.signin_wait("1.2.3.4") == 0
    assert access.signin_wait("1.2.3.4") == 0
    assert access.signin_wait("1.2.3.4") == pytest.approx(60)
    assert access.signin_wait("5.6.7.8") == 0  # another client is not held up
    now[0] += 30
    assert access.signin_wait("1.2.3.4") == pytest.approx(30)
    now[0] += 30.5
    assert access.signin_wait("1.2.3.4") == 0
    assert access.operator_for(KEY) == "a"
    assert access.operator_for(KEY + "x") is None


def test_csrf_token_is_bound_to_the_session() -> None:
    access = Access({"a": KEY}, session_seconds=60, signin_limit_per_minute=5)
    one, _ = access.new_session("a")
    two, _ = access.new_session("a")
    assert access.csrf_ok(one, access.csrf_token(one))
    assert not access.csrf_ok(one, access.csrf_token(two))
    assert not access.csrf_ok(one, None)


def test_chart_fills_the_hour_and_scales_to_the_busiest_minute() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    data = last_hour([Minute(now, 3, 1), Minute(now.replace(hour=11, minute=30), 0, 2)], now)
    assert len(data.minutes) == 60
    assert (data.completed, data.failed) == (3, 3)
    assert data.failure_rate == 0.5
    svg = str(throughput_svg(data))
    assert svg.count('class="completed"') == 1
    assert svg.count('class="failed"') == 2
    assert "busiest minute 4 jobs" in svg
    empty = str(throughput_svg(last_hour([], now)))
    assert "<rect" not in empty and "Last hour: 0 completed, 0 failed;" in empty


def test_kill_counts_become_dated_events_newest_first() -> None:
    kills = KillLog()
    assert kills.observe({}) == []
    first = kills.observe({"memory": 1})
    assert [(e.reason, e.count) for e in first] == [("memory", 1)]
    assert kills.observe({"memory": 1}) == first  # nothing new
    latest = kills.observe({"memory": 3, "timeout": 1})
    assert [(e.reason, e.count) for e in latest] == [("timeout", 1), ("memory", 2), ("memory", 1)]
