"""Issue 22's small findings, at the unit level: JWT lifetime, host names, FORWARDED_ALLOW_IPS."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from shared.config import ApiSettings, ConfigError, load_settings
from shared.hosts import host_problem, normalize_host
from shared.payload import url_source_problem
from supervisor.http.auth import AuthError, authenticate

ROOT = Path(__file__).resolve().parents[2]
SECRET = "round-3-jwt-secret-with-at-least-32-characters"
USER = "3f1c2b9e-7f5a-4c51-9a43-0a8f4f1d2e11"
DAY = 86_400


def token(**claims: int | None) -> dict[str, str]:
    now = int(time.time())
    payload = {"sub": USER, "aud": "authenticated", "role": "authenticated", "iat": now, "exp": now + 600} | claims
    payload = {k: v for k, v in payload.items() if v is not None}
    return {"authorization": f"Bearer {jwt.encode(payload, SECRET, algorithm='HS256')}"}


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        ({"exp": 32_472_144_000}, False),  # the year 2999
        ({"exp": 32_472_144_000, "iat": None}, False),
        ({"iat": int(time.time()) - 30 * DAY}, False),  # issued a month ago, still unexpired: a 30-day token
        ({"exp": int(time.time()) + 7 * DAY - 60}, True),
        ({"exp": int(time.time()) + 7 * DAY - 60, "iat": None}, True),
    ],
    ids=["year-2999", "year-2999-no-iat", "30-day", "7-day", "7-day-no-iat"],
)
def test_jwt_lifetime_is_bounded(claims: dict[str, int | None], accepted: bool) -> None:
    settings = ApiSettings(supabase_jwt_secret=SECRET)
    assert settings.jwt_max_lifetime_seconds == 7 * DAY
    if accepted:
        assert authenticate(token(**claims), settings).user_id == USER
    else:
        with pytest.raises(AuthError) as refused:
            authenticate(token(**claims), settings)
        assert refused.value.status == 401 and "JWT_MAX_LIFETIME_SECONDS" in str(refused.value)


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("example.com.", None),
        ("EXAMPLE.com.", None),
        ("xn--bcher-kva.example.", None),  # bücher, valid
        ("example.com..", "empty or over-long label"),
        ("xn--a.com", "not a valid internationalised host name"),
        ("xn--ls8h.la", "not a valid internationalised host name"),
        ("a.xn--", "not a valid internationalised host name"),
    ],
)
def test_host_names(host: str, problem: str | None) -> None:
    found = host_problem(host)
    assert (found is None) if problem is None else (found is not None and problem in found), found


def test_only_one_trailing_dot_is_dropped() -> None:
    assert normalize_host("Example.COM.") == "example.com"
    assert normalize_host("example.com..") == "example.com."
    assert url_source_problem("https://example.com./menu", ["example.com"]) is None
    assert "empty" in (url_source_problem("https://example.com../menu", ["example.com"]) or "")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("", None),
        ("127.0.0.1", None),
        ("10.0.0.0/8, 100.64.0.0/10,fd00::/8", None),
        ("*", "may not be *"),
        ("railway-proxy", "is not an IP address or a network"),
    ],
)
def test_forwarded_allow_ips(tmp_path: Path, value: str, error: str | None) -> None:
    environ = {"EXPORT_WORKER_DATA_DIR": str(tmp_path), "FORWARDED_ALLOW_IPS": value}
    if error is None:
        load_settings(path=ROOT / "config.toml", environ=environ)
    else:
        with pytest.raises(ConfigError, match=error):
            load_settings(path=ROOT / "config.toml", environ=environ)
