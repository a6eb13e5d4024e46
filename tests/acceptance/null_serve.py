"""`export-worker serve` with the null render child (no Chromium): the whole worker, HTTP side
included, for tests about the database and the queue. Settings from the environment.

Run as ``python tests/acceptance/null_serve.py``; exits with the supervisor's code.
"""

from __future__ import annotations

import asyncio
import sys

from render_child.null_child import null_child_entry
from shared.config import load_settings
from shared.logs import setup_logging
from supervisor.runner import Supervisor


def main() -> int:
    settings = load_settings()
    setup_logging(settings.worker.log_level, settings.worker.worker_id)
    supervisor = Supervisor(settings, settings.database.database_url, child_target=null_child_entry)
    return asyncio.run(supervisor.run())


if __name__ == "__main__":
    sys.exit(main())
