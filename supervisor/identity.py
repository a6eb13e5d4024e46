"""This worker's default name in `worker_id` when WORKER_ID is not set.

On Railway each replica gets `RAILWAY_REPLICA_ID` (unique per replica and
deployment), so replicas of one service never share a name and the name in
`worker_id` matches the replica in Railway's dashboard. Elsewhere the name is
hostname-pid, unique per process on one host and per container.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def default_worker_id(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    replica = env.get("RAILWAY_REPLICA_ID", "").strip()
    if replica:
        return f"railway-{replica}"
    return f"{socket.gethostname()}-{os.getpid()}"
