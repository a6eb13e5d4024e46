"""A stop always ends: once the supervisor has stopped, the process exits within a bound.

After ``Supervisor.run`` returns, ``asyncio.run`` still cancels leftover tasks and
joins the default executor's threads, and the interpreter joins every worker
thread at exit. None of that has a timeout: one thread stuck in a blocking call
(an upload, a DNS lookup, a mail server that stopped answering) would keep a
stopped worker alive until the platform's SIGKILL, which on Railway can mean a
deploy that never finishes draining. The guard is armed when the supervisor has
stopped; if the process has not gone by ``seconds`` later, it logs the stacks of
every thread (what held the exit up) and exits with the supervisor's code.

Only ``serve`` arms it: tests run supervisors inside pytest's own process.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback

log = logging.getLogger(__name__)

EXIT_CLEANUP_SECONDS = 10.0


class ExitGuard:
    def __init__(self, seconds: float = EXIT_CLEANUP_SECONDS) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None

    def arm(self, exit_code: int) -> None:
        """Exit with `exit_code` if the process is still here after the bound."""
        self._timer = threading.Timer(self.seconds, self._force_exit, args=(exit_code,))
        self._timer.daemon = True  # never itself a reason to stay
        self._timer.name = "exit-guard"
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _force_exit(self, exit_code: int) -> None:
        log.error("exit: cleanup after the stop did not end in time; exiting anyway",
                  extra={"waited_s": self.seconds, "exit_code": exit_code, "threads": thread_stacks()})
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


def thread_stacks() -> dict[str, str]:
    """Each live thread's name and innermost frames, but this one's."""
    names = {t.ident: t.name for t in threading.enumerate()}
    own = threading.get_ident()
    return {
        f"{names.get(ident, '?')} ({ident})": "".join(traceback.format_stack(frame, limit=8))
        for ident, frame in sys._current_frames().items()
        if ident != own
    }
