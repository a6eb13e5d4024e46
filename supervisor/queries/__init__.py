"""Named SQL queries, kept as SQL in .sql files (procrastinate's habit)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from psycopg import sql

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def load(filename: str = "queue.sql") -> dict[str, sql.SQL]:
    text = (resources.files("supervisor.queries") / filename).read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, sql.SQL] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name} is defined twice in {filename}")
        queries[name] = sql.SQL(body.strip())  # literal SQL from our own package file
    return queries


def query(name: str) -> sql.SQL:
    return load()[name]
