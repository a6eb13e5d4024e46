"""Named SQL queries, kept as SQL in .sql files (procrastinate's habit).

Each file belongs to the module that owns that part of the database: queue.sql
to supervisor/queue.py (jobs and claims), outbox.sql to supervisor/outbox.py
(mails), retention.sql to supervisor/retention.py. A query is found by its name
alone; a name defined twice anywhere is an error at load.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from psycopg import sql

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def load() -> dict[str, sql.SQL]:
    queries: dict[str, sql.SQL] = {}
    folder = resources.files("supervisor.queries")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        parts = _NAME.split(entry.read_text(encoding="utf-8"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in queries:
                raise ValueError(f"query {name} is defined twice ({entry.name})")
            queries[name] = sql.SQL(body.strip())  # literal SQL from our own package file
    return queries


def query(name: str) -> sql.SQL:
    return load()[name]
