"""The worker's one HTTP port: ``/health``, ``/metrics``, files, the jobs API ``/v1``,
``/openapi.json`` and the operator console (``console/``).

Owns the request/response shapes (msgspec schemas, problem+json errors), the
callers' identity and limits, the status event streams, and the HTTP side's own
database pool. May import ``pool`` (only to describe it), ``delivery``, ``queue``,
``telemetry`` and ``shared``; never the loop or the CLI.
"""
