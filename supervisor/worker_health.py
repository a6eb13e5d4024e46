"""What this worker tells ``GET /health``: the four checks, from state its parts keep anyway.

The render pool is unhealthy only when nothing can render: the restart-storm
brake is on, the canary fails, or no child has been able to render for longer
than a child gets to boot. A child being replaced while another serves (or for
less than that bound) is "degraded": 200, with the detail in the message, so a
platform probe does not see the worker flap while it heals itself.
"""

from __future__ import annotations

import time

from shared.config import Settings
from supervisor.delivery.breaker import CircuitBreaker
from supervisor.http.health import HealthCheck, breaker_check, memory_check, with_sandbox
from supervisor.pool.children import ChildState
from supervisor.pool.render_pool import RenderPool
from supervisor.pool.sandbox import SandboxProbe
from supervisor.pool.watchdog import Watchdog


class WorkerHealth:
    def __init__(
        self,
        settings: Settings,
        breaker: CircuitBreaker,
        storage_name: str,
        pool: RenderPool,
        watchdog: Watchdog,
        sandbox: SandboxProbe,
    ) -> None:
        self.settings = settings
        self.sandbox = sandbox
        self.breaker = breaker
        self.storage_name = storage_name
        self.pool = pool
        self.watchdog = watchdog

    def storage_health(self) -> HealthCheck:
        return breaker_check(
            self.breaker.state if self.breaker.enabled else None,
            backend=self.storage_name,
            retry_in=self.breaker.seconds_until_retry(),
        )

    def able_to_render(self) -> bool:
        """What export_canary_healthy reports: /health's puppeteer verdict, canary on or off."""
        return self._render_pool().healthy

    def render_pool(self) -> HealthCheck:
        check = with_sandbox(self._render_pool(), self.sandbox)  # the mode in /health's details
        # which binary renders (shared/chromium.py: the headless shell, or the full browser and why)
        details = {**(check.details or {}), "chromium_executable": self.pool.config.options.executable_path}
        return HealthCheck(check.healthy, check.message, details)

    def _render_pool(self) -> HealthCheck:
        pool = self.pool
        if self.settings.worker.enable_canary_export and pool.last_canary_ok is False:
            return HealthCheck(False, "canary render failed: Chromium cannot render")
        ok, message = pool.describe()
        if ok:
            return HealthCheck(True, message.replace("Render pool OK", "Puppeteer OK"))
        if pool.brake.engaged or pool.last_able_at is None:
            return HealthCheck(False, message)  # braked, or no child has been ready yet
        unable_for = time.monotonic() - pool.last_able_at
        if unable_for <= self.settings.pool.child_boot_timeout_seconds:
            starting = sum(1 for h in pool.handles if h.state in (ChildState.BOOTING, ChildState.CANARY))
            return HealthCheck(True, f"Puppeteer degraded: replacing render children ({starting} starting, "
                                     f"none ready for {unable_for:.1f}s)")
        return HealthCheck(False, f"{message}; none ready for {unable_for:.0f}s")

    def memory(self) -> HealthCheck:
        container = self.watchdog.container
        if container is None:
            return HealthCheck(True, "Memory usage: not measured yet")
        return memory_check(container.ratio, self.watchdog.critical_ratio, source=container.source)
