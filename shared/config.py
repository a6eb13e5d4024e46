"""Configuration: `config.toml` defaults, environment overrides, strict validation.

Every setting lives in one section struct below. Its environment variable is the
key in upper case (the seed's names, e.g. ``job_timeout_seconds`` is
``JOB_TIMEOUT_SECONDS``) except where ``ENV_NAMES`` says otherwise. Unknown keys,
wrong types and out-of-range values raise :class:`ConfigError`, which the CLI turns
into exit code 2 and one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from shared.vocabulary import ChromiumHeadless, DatabaseMode, LogLevel

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


class ConfigError(Exception):
    """A setting is unknown, of the wrong type or out of range."""


def _doc(text: str, **limits: Any) -> msgspec.Meta:
    return msgspec.Meta(description=text, **limits)


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class DatabaseSettings(_Section):
    database_url: Annotated[str, _doc("PostgreSQL URL, direct or through a pooler (session or transaction mode); empty = embedded PostgreSQL under the data dir")] = ""
    database_listen_url: Annotated[str, _doc("direct or session-mode URL used only for LISTEN; empty = DATABASE_URL (checked by a round trip at start)")] = ""
    database_mode: Annotated[DatabaseMode, _doc("what DATABASE_URL points at: auto (detected and logged at start), direct, session or transaction (pooler)")] = DatabaseMode.AUTO
    listen_notify: Annotated[bool, _doc("wake on LISTEN/NOTIFY (one connection); when notifications do not arrive, the worker polls")] = True
    database_pool_size: Annotated[int, _doc("server connections of the queue: claims, heartbeats, completions, mail", ge=1, le=50)] = 2
    database_unhealthy_after_seconds: Annotated[int, _doc("database work failing this long makes /health 503 (degraded, still 200, before)", ge=1, le=3600)] = 15
    connect_timeout_seconds: Annotated[int, _doc("seconds to wait for a connection", ge=1, le=120)] = 5
    statement_timeout_ms: Annotated[int, _doc("server-side cap on each queue statement", ge=100, le=600_000)] = 10_000


class WorkerSettings(_Section):
    worker_id: Annotated[str, _doc("this worker's name in worker_id; empty = railway-$RAILWAY_REPLICA_ID on Railway, else hostname-pid")] = ""
    max_concurrent_renders: Annotated[int, _doc("renders at once in all; children = this / SLOTS_PER_CHILD, rounded up", ge=1, le=32)] = 3
    job_timeout_seconds: Annotated[int, _doc("outer deadline per render; the child is killed after it", ge=1, le=120)] = 60
    polling_interval_busy_ms: Annotated[int, _doc("poll interval while jobs keep coming", ge=10, le=600_000)] = 2000
    polling_interval_idle_ms: Annotated[int, _doc("poll interval when the queue was empty", ge=10, le=600_000)] = 5000
    graceful_shutdown_timeout_ms: Annotated[int, _doc("time in-flight renders get after SIGTERM", ge=0, le=600_000)] = 30_000
    port: Annotated[int, _doc("HTTP port for /health, /metrics and the API", ge=1, le=65535)] = 3000
    host: Annotated[str, _doc("address the HTTP port binds to; 0.0.0.0 = all interfaces (containers)", min_length=1)] = "0.0.0.0"
    node_env: Annotated[str, _doc("seed compatibility; 'production' only changes the startup log line")] = "production"
    log_level: Annotated[LogLevel, _doc("debug, info, warn, error")] = LogLevel.INFO
    enable_canary_export: Annotated[bool, _doc("render a canary at start and after each recycle; gates claiming")] = True


class PoolSettings(_Section):
    child_memory_limit_mb: Annotated[int, _doc("PSS of one child's whole process tree before it is killed", ge=64, le=65536)] = 1024
    renders_per_child: Annotated[int, _doc("recycle a child after this many renders", ge=1, le=100_000)] = 200
    slots_per_child: Annotated[int, _doc("jobs one child renders at once, each in its own browser context", ge=1, le=16)] = 2
    child_max_age_seconds: Annotated[int, _doc("recycle a child after this age (plus up to 10% jitter)", ge=10, le=604_800)] = 3600
    watchdog_interval_ms: Annotated[int, _doc("how often the watchdog measures memory and deadlines", ge=20, le=250)] = 200
    container_high_water_percent: Annotated[int, _doc("container memory % above which no jobs are claimed", ge=10, le=100)] = 85
    container_critical_percent: Annotated[int, _doc("container memory % above which the largest child is killed", ge=10, le=100)] = 95
    child_boot_timeout_seconds: Annotated[int, _doc("time a child gets to launch Chromium and say ready", ge=1, le=300)] = 30
    restart_storm_limit: Annotated[int, _doc("boot failures within the window that stop the pool", ge=1, le=1000)] = 5
    restart_storm_window_seconds: Annotated[int, _doc("the window for restart_storm_limit", ge=1, le=86_400)] = 60


class RenderSettings(_Section):
    puppeteer_executable_path: Annotated[str, _doc("Chromium binary; empty = Playwright's own browser")] = "/usr/bin/chromium"
    chromium_headless: Annotated[ChromiumHeadless, _doc("shell = the headless shell installed beside that binary (about half the CPU per job), else the binary; new = the binary itself")] = ChromiumHeadless.SHELL
    allowed_hosts: Annotated[list[str], _doc("hosts (and *.suffix) that pages may load images, fonts, CSS from")] = []
    allowed_url_hosts: Annotated[list[str], _doc("hosts whose pages may be rendered as a `url` source")] = []
    trusted_private_hosts: Annotated[list[str], _doc("host:port allowed even on private addresses (dev, tests)")] = []
    max_input_bytes: Annotated[int, _doc("largest HTML or menu document", ge=1024, le=50_000_000)] = 2_000_000
    max_pages: Annotated[int, _doc("largest PDF page count", ge=1, le=10_000)] = 100
    max_image_pixels: Annotated[int, _doc("largest image (width x height x scale^2)", ge=10_000, le=400_000_000)] = 40_000_000
    max_output_bytes: Annotated[int, _doc("largest file a render may produce", ge=10_000, le=1_000_000_000)] = 50_000_000
    max_fetch_bytes: Annotated[int, _doc("largest single subresource (image, font, CSS)", ge=1024, le=100_000_000)] = 10_000_000
    allow_test_templates: Annotated[bool, _doc("accept the built-in failure pages (busy loop, memory hog); tests only")] = False


class StorageSettings(_Section):
    supabase_url: Annotated[str, _doc("Supabase project URL; empty = local file storage")] = ""
    supabase_service_role_key: Annotated[str, _doc("service-role key for Storage (secret)")] = ""
    storage_bucket: Annotated[str, _doc("Supabase Storage bucket")] = "export-files"
    signed_url_ttl_seconds: Annotated[int, _doc("lifetime of download links", ge=60, le=31_536_000)] = 604_800
    link_secret: Annotated[str, _doc("HMAC secret for local download links; empty = generated once in the data dir")] = ""
    public_base_url: Annotated[str, _doc("base URL of this worker in local links; empty = http://localhost:PORT")] = ""
    enable_circuit_breaker: Annotated[bool, _doc("stop calling a failing store for a cooldown")] = True
    breaker_failure_threshold: Annotated[int, _doc("consecutive failures that open the breaker", ge=1, le=1000)] = 5
    breaker_cooldown_seconds: Annotated[int, _doc("time the breaker stays open before a probe", ge=1, le=3600)] = 60


class MailSettings(_Section):
    sendgrid_api_key: Annotated[str, _doc("SendGrid key (secret); empty = SMTP if smtp_host, else .eml files")] = ""
    sendgrid_from_email: Annotated[str, _doc("sender address")] = "exports@example.com"
    sendgrid_template_id: Annotated[str, _doc("optional SendGrid dynamic template id")] = ""
    sendgrid_base_url: Annotated[str, _doc("SendGrid API base (tests point it at a local server)")] = "https://api.sendgrid.com"
    smtp_host: Annotated[str, _doc("SMTP server for self-hosters; empty = off")] = ""
    smtp_port: Annotated[int, _doc("SMTP port", ge=1, le=65535)] = 587
    smtp_username: Annotated[str, _doc("SMTP user")] = ""
    smtp_password: Annotated[str, _doc("SMTP password (secret)")] = ""
    smtp_starttls: Annotated[bool, _doc("use STARTTLS")] = True
    mail_max_attempts: Annotated[int, _doc("sends tried per mail before it is given up", ge=1, le=100)] = 12
    mail_lease_seconds: Annotated[int, _doc("a sender holds a claimed mail this long; if it dies, another worker sends it after", ge=5, le=3600)] = 120
    mail_max_in_flight: Annotated[int, _doc("mails this worker sends at once (every mail goes to the one provider)", ge=1, le=100)] = 4


class WebhookSettings(_Section):
    """Callbacks to a job's webhook_url (supervisor/delivery/webhooks.py), signed to the Standard Webhooks spec."""

    webhook_secret: Annotated[str, _doc("whsec_ secret (base64 after the prefix) that signs webhooks; empty = jobs may not name a webhook (secret)")] = ""
    webhook_allowed_hosts: Annotated[list[str], _doc("when set, the only hosts (and *.suffix) a webhook may target")] = []
    webhook_default_url: Annotated[str, _doc("webhook of every job that names none (checked like one at start); empty = none")] = ""
    webhook_connect_timeout_seconds: Annotated[float, _doc("time to connect to a webhook target", ge=0.1, le=60)] = 5.0
    webhook_timeout_seconds: Annotated[float, _doc("whole time of one delivery, answer included", ge=0.5, le=120)] = 10.0
    webhook_max_response_bytes: Annotated[int, _doc("most of a receiver's answer that is read", ge=0, le=1_000_000)] = 65_536
    webhook_retry_period_seconds: Annotated[int, _doc("a delivery is retried this long after its event, then given up", ge=1, le=604_800)] = 86_400
    webhook_backoff_base_seconds: Annotated[float, _doc("first retry waits about this long; each next one twice as long (with jitter)", ge=0.05, le=3600)] = 5.0
    webhook_backoff_cap_seconds: Annotated[float, _doc("no retry waits longer", ge=0.05, le=86_400)] = 3600.0
    webhook_lease_seconds: Annotated[int, _doc("a sender holds a claimed delivery this long; if it dies, another worker sends it after", ge=2, le=3600)] = 60
    webhook_max_in_flight: Annotated[int, _doc("deliveries this worker sends at once, all targets", ge=1, le=1000)] = 32
    webhook_max_in_flight_per_target: Annotated[int, _doc("deliveries this worker sends at once to one target (a URL's origin), so a slow receiver holds up only its own", ge=1, le=1000)] = 4


class LimitSettings(_Section):
    free_user_hourly_limit: Annotated[int, _doc("jobs a free user may create per 60 minutes", ge=0, le=1_000_000)] = 10
    subscriber_hourly_limit: Annotated[int, _doc("jobs a subscriber may create per 60 minutes", ge=0, le=1_000_000)] = 50
    free_user_pending_limit: Annotated[int, _doc("pending + processing jobs of a free user", ge=0, le=1_000_000)] = 5
    subscriber_pending_limit: Annotated[int, _doc("pending + processing jobs of a subscriber", ge=0, le=1_000_000)] = 20
    subscriber_priority: Annotated[int, _doc("priority of subscriber jobs", ge=0, le=10_000)] = 100
    free_user_priority: Annotated[int, _doc("priority of free users' jobs", ge=0, le=10_000)] = 10
    priority_aging_seconds: Annotated[float, _doc("waiting this long is worth one priority point", ge=0.01, le=3600)] = 2.0


class RetrySettings(_Section):
    max_attempts: Annotated[int, _doc("claims a job may use", ge=1, le=100)] = 3
    retry_backoff_base_ms: Annotated[int, _doc("first retry waits up to this (full jitter)", ge=0, le=3_600_000)] = 2000
    retry_backoff_cap_ms: Annotated[int, _doc("no retry waits longer", ge=0, le=86_400_000)] = 300_000
    heartbeat_interval_seconds: Annotated[int, _doc("how often in-flight claims are refreshed", ge=1, le=300)] = 10
    stale_after_seconds: Annotated[int, _doc("a claim without heartbeat this long is rescued", ge=5, le=3600)] = 60
    poison_kill_limit: Annotated[int, _doc("a job whose render was killed (time or memory) this often fails for good", ge=1, le=100)] = 2


class RetentionSettings(_Section):
    retention_completed_days: Annotated[int, _doc("completed jobs are deleted after", ge=1, le=3650)] = 30
    retention_failed_days: Annotated[int, _doc("failed and cancelled jobs are deleted after", ge=1, le=3650)] = 7
    retention_files_days: Annotated[int, _doc("stored files are deleted after", ge=1, le=3650)] = 30
    cleanup_interval_seconds: Annotated[int, _doc("how often one worker runs retention", ge=10, le=86_400)] = 3600


class ApiSettings(_Section):
    export_api_keys: Annotated[str, _doc("comma-separated keys for trusted backends (secret)")] = ""
    supabase_jwt_secret: Annotated[str, _doc("HS256 secret for Supabase JWTs (secret)")] = ""
    supabase_jwks_url: Annotated[str, _doc("JWKS URL for asymmetric Supabase JWTs")] = ""
    jwt_accepted_roles: Annotated[list[str], _doc("JWT `role` claims accepted from end users (add service_role only on purpose)")] = msgspec.field(default_factory=lambda: ["authenticated"])
    jwt_max_lifetime_seconds: Annotated[int, _doc("longest JWT lifetime accepted (exp minus iat, and exp from now); Supabase's maximum is 7 days", ge=60, le=31_536_000)] = 604_800


class HttpSettings(_Section):
    """Bounds on what callers can hold: bodies, streams, connections, time, database connections."""

    max_body_bytes: Annotated[int, _doc("largest request body; a bigger Content-Length is refused (413) unread", ge=4096, le=200_000_000)] = 4_000_000
    max_json_depth: Annotated[int, _doc("deepest JSON nesting accepted in a request body (422 beyond)", ge=4, le=1000)] = 32
    max_event_streams: Annotated[int, _doc("open event streams on this worker (429 beyond)", ge=1, le=100_000)] = 2000
    max_event_streams_per_user: Annotated[int, _doc("open event streams per user (429 beyond)", ge=1, le=10_000)] = 20
    http_header_timeout_seconds: Annotated[float, _doc("time a client gets to send a request's headers", ge=0.5, le=600)] = 10.0
    http_body_timeout_seconds: Annotated[float, _doc("time a client gets to send a request's body after its headers", ge=0.5, le=3600)] = 30.0
    http_keep_alive_seconds: Annotated[int, _doc("idle keep-alive connections are closed after this", ge=1, le=600)] = 5
    http_max_connections: Annotated[int, _doc("open connections and requests before new ones get 503", ge=10, le=100_000)] = 4000
    http_backlog: Annotated[int, _doc("listen backlog of the HTTP socket", ge=16, le=65_535)] = 2048
    forwarded_allow_ips: Annotated[list[str], _doc("addresses or networks (CIDR) of the proxy in front; only from them are X-Forwarded-For and X-Forwarded-Proto believed; empty = none (the client is whoever connects)")] = msgspec.field(default_factory=list)
    http_db_pool_size: Annotated[int, _doc("server connections of the API, event streams, /health, /metrics and the console (apart from the queue's)", ge=1, le=50)] = 2
    http_db_wait_seconds: Annotated[float, _doc("a request waits this long for one of those connections, then gets 503", ge=0.1, le=60)] = 3.0


class ConsoleSettings(_Section):
    console_keys: Annotated[str, _doc("comma-separated operator keys for /console, each `name:key` (the name goes in the audit log); empty = console off (secret)")] = ""
    console_session_seconds: Annotated[int, _doc("lifetime of a console sign-in (the session cookie's expiry)", ge=60, le=604_800)] = 28_800
    console_signin_limit_per_minute: Annotated[int, _doc("sign-in attempts allowed per client address per minute", ge=1, le=1000)] = 5
    console_live_interval_ms: Annotated[int, _doc("how often the console's live view looks for changes", ge=200, le=60_000)] = 1000
    console_worker_gone_seconds: Annotated[int, _doc("a worker row without a heartbeat this long is shown as gone", ge=5, le=86_400)] = 60
    console_worker_forget_hours: Annotated[int, _doc("a gone worker's row is deleted after this many hours", ge=1, le=8760)] = 24


class MonitoringSettings(_Section):
    sentry_dsn: Annotated[str, _doc("send unhandled errors, background-task failures and internal render failures to Sentry (RUNBOOK.md); empty = off")] = ""
    datadog_api_key: Annotated[str, _doc("accepted, not used yet: scrape /metrics instead (logged at start)")] = ""


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    worker: WorkerSettings = msgspec.field(default_factory=WorkerSettings)
    pool: PoolSettings = msgspec.field(default_factory=PoolSettings)
    render: RenderSettings = msgspec.field(default_factory=RenderSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    mail: MailSettings = msgspec.field(default_factory=MailSettings)
    webhooks: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    retry: RetrySettings = msgspec.field(default_factory=RetrySettings)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    console: ConsoleSettings = msgspec.field(default_factory=ConsoleSettings)
    monitoring: MonitoringSettings = msgspec.field(default_factory=MonitoringSettings)
    # Not in a section: where everything embedded lives.
    data_dir: Annotated[str, _doc("directory for the embedded database, files, mail and scratch")] = "./.export-worker"


SECRET_KEYS = frozenset(
    {
        "database_url",
        "database_listen_url",
        "supabase_service_role_key",
        "link_secret",
        "sendgrid_api_key",
        "smtp_password",
        "webhook_secret",
        "export_api_keys",
        "supabase_jwt_secret",
        "console_keys",
        "sentry_dsn",
        "datadog_api_key",
    }
)
# Keys whose environment name is not simply KEY.upper().
ENV_NAMES = {"data_dir": "EXPORT_WORKER_DATA_DIR"}
def env_name(key: str) -> str:
    return ENV_NAMES.get(key, key.upper())


def iter_settings() -> list[tuple[str, str, msgspec.structs.FieldInfo]]:
    """(section, key, field) for every setting, in file order; section '' is top level."""
    out: list[tuple[str, str, msgspec.structs.FieldInfo]] = []
    for section_field in msgspec.structs.fields(Settings):
        if isinstance(section_field.type, type) and issubclass(section_field.type, _Section):
            for f in msgspec.structs.fields(section_field.type):
                out.append((section_field.name, f.name, f))
        else:
            out.append(("", section_field.name, section_field))
    return out


def _unwrap(t: Any) -> Any:
    """Annotated[list[str], Meta] -> list; Annotated[int, Meta] -> int."""
    if getattr(t, "__metadata__", None) is not None:
        t = t.__origin__
    return getattr(t, "__origin__", t) if getattr(t, "__origin__", None) is list else t


def _parse_env_value(raw: str, field: msgspec.structs.FieldInfo) -> Any:
    """Environment values are strings; turn them into what the field expects."""
    base = _unwrap(field.type)
    text = raw.strip()
    if base is bool:
        lowered = text.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        return raw  # let validation name the problem
    if base is int:
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else raw
    if base is float:
        try:
            return float(text)
        except ValueError:
            return raw
    if base is list:
        return [part.strip() for part in text.split(",") if part.strip()]
    return raw


def _describe_allowed(field: msgspec.structs.FieldInfo) -> str:
    t = field.type
    metas = [m for m in getattr(t, "__metadata__", ()) if isinstance(m, msgspec.Meta)]
    base = t.__origin__ if metas else t
    lo = next((m.ge for m in metas if m.ge is not None), None)
    hi = next((m.le for m in metas if m.le is not None), None)
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return "one of " + ", ".join(str(member.value) for member in base)
    name = getattr(_unwrap(t), "__name__", str(base))
    if name == "bool":
        name = "true or false"
    if name == "list":
        name = "a list of strings (comma-separated in the environment)"
    if lo is not None and hi is not None:
        return f"{name} from {lo} to {hi}"
    return name


def load_settings(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read config.toml (or `path`), apply environment overrides, validate."""
    environ = os.environ if environ is None else environ
    config_path, explicit = _config_path(path, environ)
    raw = _read_config_file(config_path, explicit)
    fields = {(s, k): f for s, k, f in iter_settings()}
    _check_known_keys(raw, fields, config_path)
    sources = _apply_environment(raw, fields, environ)
    try:
        settings = msgspec.convert(raw, Settings, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, raw, fields, sources, config_path)) from None
    console_operators(settings.console.console_keys)  # a malformed CONSOLE_KEYS stops here, named
    _check_webhooks(settings.webhooks)
    _check_forwarded_allow_ips(settings.http.forwarded_allow_ips)
    return settings


def _config_path(path: Path | None, environ: Mapping[str, str]) -> tuple[Path, bool]:
    """(the file to read, whether it was asked for): `path`, EXPORT_WORKER_CONFIG, ./config.toml, the repo's."""
    explicit = path or (Path(environ["EXPORT_WORKER_CONFIG"]) if environ.get("EXPORT_WORKER_CONFIG") else None)
    if explicit is not None:
        return explicit, True
    return (Path("config.toml") if Path("config.toml").is_file() else REPO_CONFIG), False


def _read_config_file(config_path: Path, explicit: bool) -> dict[str, Any]:
    """The file's TOML as a dict; a missing file is empty unless it was asked for."""
    if not config_path.is_file():
        if explicit:
            raise ConfigError(f"config error: config file {config_path} does not exist")
        return {}
    try:
        return tomllib.loads(config_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error: {config_path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config error: {config_path} is not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"config error: cannot read {config_path}: {exc.strerror}") from None


_Fields = dict[tuple[str, str], msgspec.structs.FieldInfo]


def _check_known_keys(raw: dict[str, Any], fields: _Fields, config_path: Path) -> None:
    """Every section and key of the file is one the settings have."""
    sections = {s for s, _ in fields if s}
    for section, value in raw.items():
        if not isinstance(value, dict):
            if ("", section) not in fields:
                raise ConfigError(f"config error: unknown key {section} in {config_path}")
            continue
        if section not in sections:
            raise ConfigError(
                f"config error: unknown section [{section}] in {config_path}; "
                f"allowed: {', '.join(sorted(sections))}"
            )
        for key in value:
            if (section, key) not in fields:
                allowed = ", ".join(k for s, k in fields if s == section)
                raise ConfigError(
                    f"config error: unknown key {section}.{key} in {config_path}; allowed in [{section}]: {allowed}"
                )


def _apply_environment(raw: dict[str, Any], fields: _Fields, environ: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """Write each setting's environment variable over the file's value; {(section, key): where it came from}."""
    sources: dict[tuple[str, str], str] = {}
    for (section, key), field in fields.items():
        name = env_name(key)
        if name in environ:
            target = raw.setdefault(section, {}) if section else raw
            target[key] = _parse_env_value(environ[name], field)
            sources[(section, key)] = f"environment variable {name}"
    return sources


def _check_forwarded_allow_ips(entries: list[str]) -> None:
    """Each entry an address or a network: uvicorn takes anything else as a literal that never matches,
    and `*` would believe the left-most X-Forwarded-For entry, which the client writes itself."""
    for entry in entries:
        if entry.strip() == "*":
            raise ConfigError("config error: FORWARDED_ALLOW_IPS may not be *: it would believe any X-Forwarded-For "
                              "a client writes; list the proxy's addresses or networks (CIDR)")
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ConfigError(f"config error: FORWARDED_ALLOW_IPS entry {entry!r} is not an IP address or a "
                              "network such as 10.0.0.0/8") from None


def _check_webhooks(hooks: WebhookSettings) -> None:
    secret = hooks.webhook_secret
    if secret:
        body = secret.removeprefix("whsec_")
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True) if secret.startswith("whsec_") else b""
        except binascii.Error:
            key = b""
        if len(key) < 16:
            raise ConfigError("config error: WEBHOOK_SECRET must be whsec_ followed by at least 16 bytes in base64 "
                              "(e.g. whsec_ + `openssl rand -base64 32`)")
    if hooks.webhook_default_url and not secret:
        raise ConfigError("config error: WEBHOOK_DEFAULT_URL is set but WEBHOOK_SECRET is not; webhooks are signed")
    if hooks.webhook_lease_seconds <= hooks.webhook_timeout_seconds:
        raise ConfigError(f"config error: WEBHOOK_LEASE_SECONDS ({hooks.webhook_lease_seconds}) must be longer than "
                          f"WEBHOOK_TIMEOUT_SECONDS ({hooks.webhook_timeout_seconds}), or two workers send at once")
    if hooks.webhook_max_in_flight_per_target > hooks.webhook_max_in_flight:
        raise ConfigError(f"config error: WEBHOOK_MAX_IN_FLIGHT_PER_TARGET ({hooks.webhook_max_in_flight_per_target}) "
                          f"must not be more than WEBHOOK_MAX_IN_FLIGHT ({hooks.webhook_max_in_flight}), which caps it")


CONSOLE_KEY_MIN_LENGTH = 16
_OPERATOR_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def console_operators(console_keys: str) -> dict[str, str]:
    """CONSOLE_KEYS as {operator name: key}. Each entry is `name:key`, or a bare key (named by its hash)."""
    operators: dict[str, str] = {}
    for position, entry in enumerate((e.strip() for e in console_keys.split(",")), start=1):
        if not entry:
            continue
        name, sep, key = entry.partition(":")
        if not sep:
            name, key = "operator-" + hashlib.sha256(entry.encode()).hexdigest()[:8], entry
        if not _OPERATOR_NAME.fullmatch(name):
            raise ConfigError(
                f"config error: CONSOLE_KEYS entry {position}: the operator name must be 1 to 64 of "
                "A-Z a-z 0-9 _ . @ - (the entry is `name:key`)"
            )
        if len(key) < CONSOLE_KEY_MIN_LENGTH:
            raise ConfigError(
                f"config error: CONSOLE_KEYS entry {position} ({name}): the key is {len(key)} characters; "
                f"at least {CONSOLE_KEY_MIN_LENGTH} are required"
            )
        if name in operators:
            raise ConfigError(f"config error: CONSOLE_KEYS names operator {name!r} twice")
        operators[name] = key
    return operators


def _explain(
    exc: msgspec.ValidationError,
    raw: dict[str, Any],
    fields: dict[tuple[str, str], msgspec.structs.FieldInfo],
    sources: dict[tuple[str, str], str],
    config_path: Path,
) -> str:
    message = str(exc)
    match = re.search(r"at `\$\.([\w.]+)", message)
    if not match:
        return f"config error: {message}"
    parts = match.group(1).split(".")
    section, key = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
    field = fields.get((section, key))
    if field is None:
        return f"config error: {message}"
    value = raw.get(section, {}).get(key) if section else raw.get(key)
    origin = sources.get((section, key), f"{config_path}")
    dotted = f"{section}.{key}" if section else key
    return (
        f"config error: {env_name(key)} ({dotted}, from {origin}) = {value!r} is not allowed: "
        f"expected {_describe_allowed(field)}"
    )


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration as a dict, secrets replaced by '***' when set."""
    data: dict[str, Any] = msgspec.to_builtins(settings)
    for section, key, _ in iter_settings():
        holder = data[section] if section else data
        if key in SECRET_KEYS and holder.get(key):
            holder[key] = "***"
    return data


def accepted_but_inactive(settings: Settings) -> list[str]:
    """Settings that are set but have no effect in this build (logged at start, no silent no-ops)."""
    notes = []
    if settings.monitoring.datadog_api_key:
        notes.append("DATADOG_API_KEY is set but not used; point the Datadog agent at /metrics (OpenMetrics)")
    return notes


def _meta(field: msgspec.structs.FieldInfo) -> tuple[str, str]:
    metas = [m for m in getattr(field.type, "__metadata__", ()) if isinstance(m, msgspec.Meta)]
    description = next((m.description for m in metas if m.description), "")
    return description, _describe_allowed(field)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def render_config_toml() -> str:
    """config.toml as shipped: every setting, its default, range and environment name."""
    defaults = Settings()
    lines = [
        "# export-worker configuration. Every setting with its default.",
        "# Environment variables (named on each line) override this file; unknown keys,",
        "# wrong types and out-of-range values stop the program (exit code 2).",
        "# Regenerate after changing shared/config.py: export-worker config --toml > config.toml",
    ]
    # TOML wants top-level keys before the first [section].
    ordered = sorted(iter_settings(), key=lambda entry: entry[0] != "")
    current = None
    for section, key, field in ordered:
        if section != current:
            current = section
            lines.append("")
            if section:
                lines.append(f"[{section}]")
        holder = getattr(defaults, section) if section else defaults
        description, allowed = _meta(field)
        lines.append(f"# {description or key} ({allowed}; env {env_name(key)})")
        lines.append(f"{key} = {_toml_value(getattr(holder, key))}")
    return "\n".join(lines) + "\n"


def render_reference_markdown() -> str:
    """The configuration reference table in the README."""
    defaults = Settings()
    rows = ["| environment variable | config.toml key | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for section, key, field in iter_settings():
        holder = getattr(defaults, section) if section else defaults
        description, allowed = _meta(field)
        dotted = f"{section}.{key}" if section else key
        default = getattr(holder, key)
        shown = _toml_value(default) if default != "" else '""'
        rows.append(f"| `{env_name(key)}` | `{dotted}` | `{shown}` | {allowed} | {description} |")
    return "\n".join(rows)
