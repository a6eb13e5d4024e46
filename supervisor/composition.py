"""The composition root: the worker's parts, built from settings in dependency order.

Nothing here runs a loop; supervisor/runner.py starts the loops and owns the
lifecycle. Tests and the bench pass their own child target, storage or mail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.chromium import configured_browser
from shared.config import Settings
from shared.data_dir import make_private_dir
from shared.messages import CHROMIUM_ARGS, ChildOptions
from shared.vocabulary import DatabaseEndpoint
from supervisor.delivery.breaker import BreakerStorage, CircuitBreaker
from supervisor.delivery.links import LinkSigner, load_or_create_secret
from supervisor.delivery.mail import MailBackend, build_mail_backend
from supervisor.delivery.mail_sender import MailSender
from supervisor.delivery.outbox import Outbox
from supervisor.delivery.storage import Storage, build_storage, writer_tag
from supervisor.delivery.sweep import sweep_temp
from supervisor.delivery.upload import Delivery
from supervisor.delivery.webhook_targets import check_default_url
from supervisor.delivery.webhooks import WebhookSender
from supervisor.pool.children import ChildTarget, PoolConfig
from supervisor.pool.render_pool import RenderPool
from supervisor.pool.sandbox import SandboxMode, chromium_args, detect
from supervisor.pool.sandbox import gauge_value as sandbox_gauge_value
from supervisor.pool.watchdog import Watchdog
from supervisor.queue.database import DatabaseStatus, WorkerPool, detect_endpoint, open_pool
from supervisor.queue.jobs import JobQueue
from supervisor.queue.listener import Listener
from supervisor.queue.migrate import migrate, sync_queue_settings
from supervisor.queue.workers import WorkerRegistry
from supervisor.settle import Settler, Wakes
from supervisor.tasks import OnFailure, TaskOwner
from supervisor.telemetry.metrics import Metrics
from supervisor.upkeep import Upkeep
from supervisor.worker_health import WorkerHealth
from supervisor.worker_state import ClaimGate, WorkerState

if TYPE_CHECKING:  # the HTTP side is imported when it is started (the CLI's commands do not load it)
    from supervisor.http.app import HttpServer

log = logging.getLogger(__name__)



@dataclass
class Overrides:
    """What tests and the bench swap in; None means the real thing from settings."""

    child_target: ChildTarget | None = None
    storage: Storage | None = None
    mail: MailBackend | None = None
    run_migrations: bool = True


@dataclass
class WorkerParts:
    db: WorkerPool
    endpoint: DatabaseEndpoint
    database: DatabaseStatus
    queue: JobQueue
    link_signer: LinkSigner
    breaker: CircuitBreaker
    storage: BreakerStorage
    outbox: Outbox  # mail
    webhooks: Outbox
    listener: Listener | None
    settler: Settler
    pool: RenderPool
    watchdog: Watchdog
    upkeep: Upkeep
    health: WorkerHealth
    state: WorkerState  # the claim gate and the workers table's row


async def prepare_database(settings: Settings, conninfo: str, run_migrations: bool) -> None:
    if run_migrations:
        applied = await asyncio.to_thread(migrate, conninfo)
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
    check_default_url(settings)
    await asyncio.to_thread(sync_queue_settings, conninfo, settings)


async def assemble(
    settings: Settings, conninfo: str, worker_id: str, metrics: Metrics, tasks: TaskOwner, overrides: Overrides,
    stopping: Callable[[], bool],
) -> WorkerParts:
    """Build every part; the pool's children are spawned by ``start_children``."""
    await prepare_database(settings, conninfo, overrides.run_migrations)
    data_dir = Path(settings.data_dir).resolve()
    make_private_dir(data_dir)
    metrics.temp_files_swept.inc(await asyncio.to_thread(sweep_temp, data_dir))
    link_signer = LinkSigner(load_or_create_secret(settings.storage.link_secret, data_dir))
    storage = BreakerStorage(overrides.storage or build_storage(settings, data_dir), build_breaker(settings))
    breaker = storage.breaker
    mail = overrides.mail or build_mail_backend(settings, data_dir)
    endpoint, why = await detect_endpoint(conninfo, settings)
    log.info(f"database endpoint: {endpoint.value}", extra={"endpoint": endpoint.value, "why": why})
    db = await open_pool(conninfo, settings, endpoint=endpoint, max_size=settings.database.database_pool_size,
                         name=f"export-worker {worker_id}")
    database = DatabaseStatus("queue", db, metrics, settings.database.database_unhealthy_after_seconds)
    queue = JobQueue(db, worker_id, settings.retry)
    listener = await start_listener(settings, conninfo, endpoint)

    def spawn(coro: Coroutine[Any, Any, None], name: str) -> None:
        tasks.spawn(coro, name, kind="outbox send")

    outbox = Outbox(db, worker_id, MailSender(settings, mail, storage, metrics), spawn)
    webhooks = Outbox(db, worker_id, WebhookSender(settings, storage, metrics), spawn)
    delivery = Delivery(queue, storage, breaker, metrics, settings.storage.signed_url_ttl_seconds)
    scratch = data_dir / "scratch" / writer_tag()  # this process's own: the temp sweep removes it if we die
    settler = Settler(settings, worker_id, queue, delivery, breaker, metrics, tasks, scratch,
                      Wakes(mail=outbox.wake, webhooks=webhooks.wake))
    # Chromium's own sandbox where the host allows it: detected once, logged once (supervisor/pool/sandbox.py).
    sandbox = detect()
    metrics.chromium_sandbox.set_function(sandbox_gauge_value)
    config = pool_config(settings, worker_id, scratch, overrides.child_target, sandbox.mode)
    pool = RenderPool(config, settler, metrics)
    settler.pool = pool
    watchdog = build_watchdog(settings, pool, metrics)
    upkeep = Upkeep(settings, queue, pool, settler, storage, database, metrics)
    health = WorkerHealth(settings, breaker, storage.name, pool, watchdog, sandbox)
    metrics.watch_render_pool(health.able_to_render)
    registry = WorkerRegistry(db, worker_id, forget_hours=settings.console.console_worker_forget_hours)
    state = WorkerState(worker_id, ClaimGate(settings, pool, watchdog, database, stopping), breaker, registry)
    return WorkerParts(db, endpoint, database, queue, link_signer, breaker, storage, outbox, webhooks, listener,
                       settler, pool, watchdog, upkeep, health, state)


def build_breaker(settings: Settings) -> CircuitBreaker:
    s = settings.storage
    return CircuitBreaker(s.breaker_failure_threshold, s.breaker_cooldown_seconds, enabled=s.enable_circuit_breaker)


def build_watchdog(settings: Settings, pool: RenderPool, metrics: Metrics) -> Watchdog:
    p = settings.pool
    return Watchdog(
        pool,
        asyncio.get_running_loop(),
        interval_seconds=p.watchdog_interval_ms / 1000,
        child_limit_bytes=p.child_memory_limit_mb * 2**20,
        high_water_ratio=p.container_high_water_percent / 100,
        critical_ratio=p.container_critical_percent / 100,
        metrics=metrics,
    )


async def start_listener(settings: Settings, conninfo: str, endpoint: DatabaseEndpoint) -> Listener | None:
    """The LISTEN connection, if notifications really arrive on it; else None: the worker polls.

    It goes to DATABASE_LISTEN_URL when set, else to DATABASE_URL unless that is a
    transaction pooler (where LISTEN cannot work). Any failure is one warning that
    says what to set.
    """
    db = settings.database
    if not db.listen_notify:
        return None
    polling = (f"claims poll every {settings.worker.polling_interval_busy_ms}-"
               f"{settings.worker.polling_interval_idle_ms} ms and event streams every second")
    if not db.database_listen_url and endpoint is DatabaseEndpoint.TRANSACTION:
        log.warning(f"LISTEN/NOTIFY off: DATABASE_URL is a transaction-mode pooler, where LISTEN cannot work; "
                    f"set DATABASE_LISTEN_URL to a direct or session-mode URL for instant wake-ups "
                    f"(or LISTEN_NOTIFY=false to silence this); {polling}")
        return None
    listener = Listener(db.database_listen_url or conninfo, settings)
    why = await listener.round_trip()
    if why is not None:
        name = "DATABASE_LISTEN_URL" if db.database_listen_url else "DATABASE_URL"
        log.warning(f"LISTEN/NOTIFY off: notifications do not arrive on {name} ({why}); set DATABASE_LISTEN_URL "
                    f"to a direct or session-mode URL (or LISTEN_NOTIFY=false to silence this); {polling}")
        return None
    return listener


def pool_config(
    settings: Settings, worker_id: str, scratch: Path, target: ChildTarget | None, sandbox: SandboxMode
) -> PoolConfig:
    if target is None:
        from render_child.main import child_entry

        target = child_entry
    p = settings.pool
    browser = configured_browser(settings.render)
    if browser.note:
        log.warning(browser.note, extra={"executable_path": browser.executable_path})
    options = ChildOptions(
        child_index=0,
        worker_id=worker_id,
        executable_path=browser.executable_path,
        chromium_args=chromium_args(list(CHROMIUM_ARGS), sandbox),
        log_level=settings.worker.log_level,
        scratch_dir=str(scratch),
        slots=min(p.slots_per_child, settings.worker.max_concurrent_renders),
    )
    # MAX_CONCURRENT_RENDERS is the total: as many children as it takes at SLOTS_PER_CHILD each.
    total = settings.worker.max_concurrent_renders
    return PoolConfig(
        size=-(-total // options.slots),
        slots=options.slots,
        capacity=total,
        options=options,
        target=target,
        job_timeout_seconds=settings.worker.job_timeout_seconds,
        renders_per_child=p.renders_per_child,
        child_max_age_seconds=p.child_max_age_seconds,
        boot_timeout_seconds=p.child_boot_timeout_seconds,
        canary=settings.worker.enable_canary_export,
        storm_limit=p.restart_storm_limit,
        storm_window_seconds=p.restart_storm_window_seconds,
    )


def start_loops(parts: WorkerParts, tasks: TaskOwner, settings: Settings) -> None:
    """Every long-lived loop of the worker, each under the TaskOwner with its failure policy."""
    up, restart, fatal = parts.upkeep, OnFailure.RESTART, OnFailure.FATAL
    if parts.listener is not None:
        listener = parts.listener
        tasks.run_loop("listener", listener.run, restart)
        updates = listener.subscribe()
        tasks.run_loop("cancel-watch", lambda: up.watch_status(updates), restart)
    tasks.run_loop("outbox", parts.outbox.run, restart)
    tasks.run_loop("webhooks", parts.webhooks.run, restart)
    tasks.run_loop("tick", up.tick_loop, fatal)  # no reaping and no top-up without it
    tasks.run_loop("heartbeat", up.heartbeat_loop, restart)
    tasks.run_loop("rescue", up.rescue_loop, restart)
    tasks.run_loop("retention", up.retention_loop, restart)
    tasks.run_loop("database-probe", up.database_probe_loop, restart)
    tasks.run_loop("sweep", up.sweep_loop, restart)
    beat_every = settings.retry.heartbeat_interval_seconds
    tasks.run_loop("workers-table", lambda: parts.state.beat_loop(beat_every), restart)


async def start_http(
    settings: Settings, conninfo: str, worker_id: str, metrics: Metrics, parts: WorkerParts, tasks: TaskOwner
) -> HttpServer:
    """Bind the port, serve under the TaskOwner (FATAL: a worker without its port is restarted), wait until up."""
    server = await http_server(settings, conninfo, worker_id, metrics, parts)
    tasks.run_loop("http", server.serve, OnFailure.FATAL)
    for _ in range(200):  # uvicorn says it is up with a flag, not an event
        if server.started:
            break
        await asyncio.sleep(0.01)
    return server


async def http_server(
    settings: Settings, conninfo: str, worker_id: str, metrics: Metrics, parts: WorkerParts
) -> HttpServer:
    """The HTTP side (API, /health, /metrics, console) on its own small database pool.

    Callers can exhaust that pool, never the worker's claims and heartbeats. The
    server is bound when this returns; ``serve()`` runs it.
    """
    from supervisor.http.app import AppState, build_app, make_server
    from supervisor.http.database import ConnectionBudget, HttpDatabase
    from supervisor.http.health import CallbackHealthSources

    api_db = await HttpDatabase.open(conninfo, settings, worker_id, metrics, parts.endpoint)
    api_db.worker = parts.database
    parts.database.peers.append(api_db.status)
    api_db.status.peers.append(parts.database)
    listener = parts.listener
    api_db.budget = ConnectionBudget(
        parts.endpoint, parts.db, api_db.pool,
        listen_open=lambda: 0 if listener is None else listener.open_connections,
        listen_max=0 if listener is None else 1,
    )
    health = parts.health
    state = AppState(
        settings=settings,
        queue=JobQueue(api_db.pool, worker_id, settings.retry),
        metrics=metrics,
        listener=parts.listener,
        storage=parts.storage,
        link_signer=parts.link_signer,
        files_root=Path(settings.data_dir).resolve() / "files",
        health=CallbackHealthSources(
            api_db.pool, storage_fn=health.storage_health, render_pool_fn=health.render_pool,
            memory_fn=health.memory, database_fn=api_db.health,
        ),
        database=api_db,
        local_snapshot=parts.state.snapshot,
    )
    try:
        server = make_server(build_app(state), settings.worker.port, settings.worker.host, limits=settings.http)
    except BaseException:
        await api_db.close()
        raise
    server.on_stop.append(api_db.close)
    return server
