"""The job queue in Postgres: the only part that owns SQL and connections.

Owns the database (where it is, its pools, what kind of endpoint it is), the
SQL in ``queries/*.sql``, the migrations and ``migrate``, the job store (``store``:
creation, reads, cancel and retry, what the API, CLI and console use), the job
queue's claims and fenced writes (``jobs``), group commit, LISTEN/NOTIFY, the
workers table and retention. May import ``telemetry`` and ``shared`` only.
"""
