"""The composition root: the worker's parts, built from settings in dependency order.

Nothing here runs a loop; supervisor/runner.py starts the loops and owns the
lifecycle. Tests and the bench pass their own child target, storage or mail.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from shared.config import Settings
from shared.messages import CHROMIUM_ARGS, ChildOptions
from supervisor.breaker import BreakerStorage, CircuitBreaker
from supervisor.children import ChildTarget, PoolConfig
from supervisor.data_dir import make_private_dir
from supervisor.database import DatabaseStatus, open_pool
from supervisor.delivery import Delivery
from supervisor.links import LinkSigner, load_or_create_secret
from supervisor.listener import Listener
from supervisor.mail import build_mail_backend
from supervisor.metrics import Metrics
from supervisor.migrate import migrate, sync_queue_settings
from supervisor.outbox import OutboxSender
from supervisor.pool import RenderPool
from supervisor.queue import JobQueue
from supervisor.sandbox import SandboxMode, chromium_args, detect
from supervisor.settle import Settler, Wakes
from supervisor.storage import build_storage, writer_tag
from supervisor.sweep import sweep_temp
from supervisor.tasks import TaskOwner
from supervisor.upkeep import Upkeep
from supervisor.watchdog import Watchdog
from supervisor.webhooks import WebhookSender
from supervisor.worker_health import WorkerHealth
from supervisor.workers import WorkerRegistry

log = logging.getLogger(__name__)

WORKER_POOL_SIZE = 6  # claims, heartbeats, completions, outbox; plus one LISTEN connection


@dataclass
class Overrides:
    """What tests and the bench swap in; None means the real thing from settings."""

    child_target: ChildTarget | None = None
    storage: Any = None
    mail: Any = None
    run_migrations: bool = True


@dataclass
class WorkerParts:
    db: AsyncConnectionPool[Any]
    database: DatabaseStatus
    queue: JobQueue
    link_signer: LinkSigner
    breaker: CircuitBreaker
    storage: BreakerStorage
    outbox: OutboxSender
    webhooks: WebhookSender
    listener: Listener | None
    settler: Settler
    pool: RenderPool
    watchdog: Watchdog
    upkeep: Upkeep
    health: WorkerHealth
    workers: WorkerRegistry


async def prepare_database(settings: Settings, conninfo: str, run_migrations: bool) -> None:
    if run_migrations:
        applied = await asyncio.to_thread(migrate, conninfo)
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
    await asyncio.to_thread(sync_queue_settings, conninfo, settings)


async def assemble(
    settings: Settings, conninfo: str, worker_id: str, metrics: Metrics, tasks: TaskOwner, overrides: Overrides
) -> WorkerParts:
    """Build every part; the pool's children are spawned by ``start_children``."""
    await prepare_database(settings, conninfo, overrides.run_migrations)
    data_dir = Path(settings.data_dir).resolve()
    make_private_dir(data_dir)
    metrics.temp_files_swept.inc(await asyncio.to_thread(sweep_temp, data_dir))
    link_signer = LinkSigner(load_or_create_secret(settings.storage.link_secret, data_dir))
    s = settings.storage
    breaker = CircuitBreaker(s.breaker_failure_threshold, s.breaker_cooldown_seconds,
                             enabled=s.enable_circuit_breaker)
    storage = BreakerStorage(overrides.storage or build_storage(settings, data_dir), breaker)
    mail = overrides.mail or build_mail_backend(settings, data_dir)
    db = await open_pool(conninfo, settings, max_size=WORKER_POOL_SIZE, name=f"export-worker {worker_id}")
    database = DatabaseStatus(db, conninfo, settings.database.connect_timeout_seconds,
                              lambda coro, name: tasks.spawn(coro, name))
    queue = JobQueue(db, worker_id, settings.retry)
    listener = None
    if settings.database.listen_notify:
        listener = Listener(conninfo, connect_timeout=settings.database.connect_timeout_seconds)
    outbox = OutboxSender(db, worker_id, settings, mail, storage, metrics)
    webhooks = WebhookSender(db, worker_id, settings, storage, metrics)
    delivery = Delivery(queue, storage, breaker, metrics, s.signed_url_ttl_seconds)
    scratch = data_dir / "scratch" / writer_tag()  # this process's own: the temp sweep removes it if we die
    settler = Settler(settings, worker_id, queue, delivery, breaker, metrics, tasks, scratch,
                      Wakes(mail=outbox.wake, webhooks=webhooks.wake))
    # Chromium's own sandbox where the host allows it: detected once, logged once (supervisor/sandbox.py).
    sandbox = detect()
    config = pool_config(settings, worker_id, scratch, overrides.child_target, sandbox.mode)
    pool = RenderPool(config, settler, metrics)
    settler.pool = pool
    p = settings.pool
    watchdog = Watchdog(
        pool,
        asyncio.get_running_loop(),
        interval_seconds=p.watchdog_interval_ms / 1000,
        child_limit_bytes=p.child_memory_limit_mb * 2**20,
        high_water_ratio=p.container_high_water_percent / 100,
        critical_ratio=p.container_critical_percent / 100,
        metrics=metrics,
    )
    pool.kill_verdict = watchdog.verdict_for
    upkeep = Upkeep(settings, queue, pool, settler, storage, database, metrics)
    health = WorkerHealth(settings, breaker, storage.name, pool, watchdog, sandbox)
    metrics.watch_render_pool(health.able_to_render)
    workers = WorkerRegistry(db, worker_id, forget_hours=settings.console.console_worker_forget_hours)
    return WorkerParts(db, database, queue, link_signer, breaker, storage, outbox, webhooks, listener, settler,
                       pool, watchdog, upkeep, health, workers)


def pool_config(
    settings: Settings, worker_id: str, scratch: Path, target: ChildTarget | None, sandbox: SandboxMode
) -> PoolConfig:
    if target is None:
        from render_child.main import child_entry

        target = child_entry
    p = settings.pool
    options = ChildOptions(
        child_index=0,
        worker_id=worker_id,
        executable_path=settings.render.puppeteer_executable_path,
        chromium_args=chromium_args(list(CHROMIUM_ARGS), sandbox),
        log_level=settings.worker.log_level,
        scratch_dir=str(scratch),
    )
    return PoolConfig(
        size=settings.worker.max_concurrent_renders,
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


async def http_server(
    settings: Settings, conninfo: str, worker_id: str, metrics: Metrics, parts: WorkerParts, *, worker: Any
) -> Any:
    """The HTTP side (API, /health, /metrics, console) on its own small database pool.

    Callers can exhaust that pool, never the worker's claims and heartbeats. The
    server is bound when this returns; ``serve()`` runs it.
    """
    from supervisor.health import CallbackHealthSources
    from supervisor.http_app import AppState, build_app, make_server
    from supervisor.http_database import HttpDatabase

    api_db = await HttpDatabase.open(conninfo, settings, worker_id)
    api_db.worker_database_ok = lambda: parts.database.ok
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
        worker=worker,
    )
    try:
        server = make_server(build_app(state), settings.worker.port, settings.worker.host, limits=settings.http)
    except BaseException:
        await api_db.close()
        raise
    server.on_stop.append(api_db.close)
    return server
