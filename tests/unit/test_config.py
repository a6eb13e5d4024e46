"""Configuration: config.toml defaults, environment overrides, strict validation (DESIGN.md section 7)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shared.config import (
    ConfigError,
    Settings,
    accepted_but_inactive,
    load_settings,
    masked,
    render_config_toml,
)
from shared.vocabulary import DatabaseMode

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config.toml"
CLI = ROOT / ".venv" / "bin" / "export-worker"


def load(**env: str) -> Settings:
    return load_settings(path=CONFIG, environ=env)


def test_file_defaults_equal_struct_defaults() -> None:
    assert load() == Settings()


def test_config_toml_is_in_sync_with_code() -> None:
    assert CONFIG.read_text(encoding="utf-8") == render_config_toml()


def test_environment_overrides_file() -> None:
    s = load(MAX_CONCURRENT_RENDERS="5", ALLOWED_HOSTS="a.com, b.com", ENABLE_CANARY_EXPORT="false")
    assert s.worker.max_concurrent_renders == 5
    assert s.render.allowed_hosts == ["a.com", "b.com"]
    assert s.worker.enable_canary_export is False


def test_environment_overrides_a_value_set_in_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[worker]\nmax_concurrent_renders = 7\n")
    assert load_settings(path=cfg, environ={}).worker.max_concurrent_renders == 7
    assert load_settings(path=cfg, environ={"MAX_CONCURRENT_RENDERS": "2"}).worker.max_concurrent_renders == 2


def test_unknown_key_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[worker]\nmax_concurent_renders = 4\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path=cfg, environ={})
    assert "worker.max_concurent_renders" in str(info.value)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="colour"):
        load_settings(path=cfg, environ={})


def test_unknown_section(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[wrker]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[wrker\]"):
        load_settings(path=cfg, environ={})


def test_bad_type_from_environment() -> None:
    with pytest.raises(ConfigError) as info:
        load(JOB_TIMEOUT_SECONDS="abc")
    text = str(info.value)
    assert "JOB_TIMEOUT_SECONDS" in text and "'abc'" in text and "int from 1 to 120" in text


def test_bad_type_in_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[worker]\njob_timeout_seconds = "soon"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path=cfg, environ={})
    assert "worker.job_timeout_seconds" in str(info.value)
    assert str(cfg) in str(info.value)


def test_out_of_range_exact_message() -> None:
    with pytest.raises(ConfigError) as info:
        load(JOB_TIMEOUT_SECONDS="121")
    assert str(info.value) == (
        "config error: JOB_TIMEOUT_SECONDS (worker.job_timeout_seconds, from environment variable "
        "JOB_TIMEOUT_SECONDS) = 121 is not allowed: expected int from 1 to 120"
    )


def test_database_mode_is_an_enum_named_with_its_values() -> None:
    assert load(DATABASE_MODE="transaction").database.database_mode is DatabaseMode.TRANSACTION
    assert load().database.database_mode is DatabaseMode.AUTO
    with pytest.raises(ConfigError) as info:
        load(DATABASE_MODE="pgbouncer")
    assert str(info.value) == (
        "config error: DATABASE_MODE (database.database_mode, from environment variable DATABASE_MODE) = "
        "'pgbouncer' is not allowed: expected one of auto, direct, session, transaction"
    )


def test_invalid_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[worker\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path=cfg, environ={})


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(path=tmp_path / "nope.toml", environ={})


# (env var, value to set, getter) for every variable of the seed.
SEED_VARS = [
    ("DATABASE_URL", "postgresql://u@h/db", lambda s: s.database.database_url),
    ("SUPABASE_URL", "https://x.supabase.co", lambda s: s.storage.supabase_url),
    ("SUPABASE_SERVICE_ROLE_KEY", "srk", lambda s: s.storage.supabase_service_role_key),
    ("STORAGE_BUCKET", "bucket-x", lambda s: s.storage.storage_bucket),
    ("SENDGRID_API_KEY", "SG.key", lambda s: s.mail.sendgrid_api_key),
    ("SENDGRID_FROM_EMAIL", "me@example.org", lambda s: s.mail.sendgrid_from_email),
    ("WORKER_ID", "w-42", lambda s: s.worker.worker_id),
    ("MAX_CONCURRENT_RENDERS", "7", lambda s: s.worker.max_concurrent_renders),
    ("JOB_TIMEOUT_SECONDS", "33", lambda s: s.worker.job_timeout_seconds),
    ("POLLING_INTERVAL_BUSY_MS", "1234", lambda s: s.worker.polling_interval_busy_ms),
    ("POLLING_INTERVAL_IDLE_MS", "4321", lambda s: s.worker.polling_interval_idle_ms),
    ("GRACEFUL_SHUTDOWN_TIMEOUT_MS", "777", lambda s: s.worker.graceful_shutdown_timeout_ms),
    ("PUPPETEER_EXECUTABLE_PATH", "/opt/chrome", lambda s: s.render.puppeteer_executable_path),
    ("NODE_ENV", "development", lambda s: s.worker.node_env),
    ("LOG_LEVEL", "debug", lambda s: s.worker.log_level),
    ("FREE_USER_HOURLY_LIMIT", "11", lambda s: s.limits.free_user_hourly_limit),
    ("SUBSCRIBER_HOURLY_LIMIT", "51", lambda s: s.limits.subscriber_hourly_limit),
    ("FREE_USER_PENDING_LIMIT", "6", lambda s: s.limits.free_user_pending_limit),
    ("SUBSCRIBER_PENDING_LIMIT", "21", lambda s: s.limits.subscriber_pending_limit),
    ("SENTRY_DSN", "https://k@sentry.example/1", lambda s: s.monitoring.sentry_dsn),
    ("DATADOG_API_KEY", "dd", lambda s: s.monitoring.datadog_api_key),
    ("ENABLE_CANARY_EXPORT", "false", lambda s: s.worker.enable_canary_export),
    ("ENABLE_CIRCUIT_BREAKER", "false", lambda s: s.storage.enable_circuit_breaker),
]


@pytest.mark.parametrize(("name", "value", "get"), SEED_VARS, ids=[v[0] for v in SEED_VARS])
def test_every_seed_variable_is_honoured(name: str, value: str, get) -> None:  # type: ignore[no-untyped-def]
    before = get(load())
    after = get(load(**{name: value}))
    assert after != before
    expected: object = value
    if isinstance(before, bool):
        expected = value == "true"
    elif isinstance(before, int):
        expected = int(value)
    assert after == expected


def test_masked_hides_secrets() -> None:
    s = load(
        DATABASE_URL="postgresql://u:pw@h/db",
        SUPABASE_SERVICE_ROLE_KEY="srk-secret",
        SENDGRID_API_KEY="SG.secret",
        SENTRY_DSN="https://secret@sentry/1",
        STORAGE_BUCKET="visible-bucket",
    )
    data = masked(s)
    text = repr(data)
    for secret in ("pw@h", "srk-secret", "SG.secret", "secret@sentry"):
        assert secret not in text
    assert data["database"]["database_url"] == "***"
    assert data["storage"]["supabase_service_role_key"] == "***"
    assert data["mail"]["sendgrid_api_key"] == "***"
    assert data["storage"]["storage_bucket"] == "visible-bucket"
    # Unset secrets stay empty (so an operator can tell "unset" from "set").
    assert masked(load())["mail"]["sendgrid_api_key"] == ""


def test_accepted_but_inactive_names_datadog_not_sentry() -> None:
    assert accepted_but_inactive(load()) == []
    assert accepted_but_inactive(load(SENTRY_DSN="https://k@sentry.example/1")) == []  # Sentry is wired
    notes = accepted_but_inactive(load(DATADOG_API_KEY="dd"))
    assert any("DATADOG_API_KEY" in n for n in notes)


def test_cli_config_out_of_range_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"EXPORT_WORKER_CONFIG"}}
    env.update(JOB_TIMEOUT_SECONDS="121", EXPORT_WORKER_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.run([str(CLI), "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "config error: JOB_TIMEOUT_SECONDS (worker.job_timeout_seconds, from environment variable "
        "JOB_TIMEOUT_SECONDS) = 121 is not allowed: expected int from 1 to 120"
    ]


def test_cli_config_prints_masked_json(tmp_path: Path) -> None:
    import json

    env = {k: v for k, v in os.environ.items() if k not in {"EXPORT_WORKER_CONFIG"}}
    env.update(SENDGRID_API_KEY="SG.topsecret", MAX_CONCURRENT_RENDERS="4")
    proc = subprocess.run([str(CLI), "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["mail"]["sendgrid_api_key"] == "***"
    assert data["worker"]["max_concurrent_renders"] == 4
    assert "topsecret" not in proc.stdout
