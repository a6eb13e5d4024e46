"""What the worker tells its operators: Prometheus metrics and error reports (Sentry).

Owns the metric definitions and the Sentry client. The ground floor of the
supervisor: every part may record a metric or report an
error, so this package imports only ``shared`` and libraries. Values that live
elsewhere (the sandbox gauge, the created-jobs totals) are handed in by their owners.
"""
