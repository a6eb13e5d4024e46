"""Named SQL queries, kept as SQL in .sql files (procrastinate's habit).

Each file belongs to the module that owns that part of the database: queue.sql
to supervisor/queue/jobs.py (jobs and claims), outbox.sql to supervisor/delivery/outbox.py
(the outbox engine of mail and webhooks), retention.sql to supervisor/queue/retention.py.
A query is found by its name alone; a name defined twice anywhere is an error at load.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from psycopg import sql

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _parse(filename: str) -> dict[str, sql.SQL]:
    text = (resources.files("supervisor.queue.queries") / filename).read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, sql.SQL] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name} is defined twice in {filename}")
        queries[name] = sql.SQL(body.strip())  # literal SQL from our own package file
    return queries


@cache
def load(filename: str | None = None) -> dict[str, sql.SQL]:
    """One owner's file of queries, or (no filename) every file's, each name once."""
    if filename is not None:
        return _parse(filename)
    queries: dict[str, sql.SQL] = {}
    folder = resources.files("supervisor.queue.queries")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, body in _parse(entry.name).items():
                if name in queries:
                    raise ValueError(f"query {name} is defined twice ({entry.name})")
                queries[name] = body
    return queries


def query(name: str) -> sql.SQL:
    return load()[name]
