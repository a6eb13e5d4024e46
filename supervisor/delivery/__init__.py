"""Delivery: a rendered file stored and announced, exactly once per job.

Owns the file store (Supabase Storage or a local directory) and its circuit
breaker, the pre-upload fence and upload journal, signed links, download names,
the temp sweep, and the one outbox engine with its two senders: mail and
webhooks (and which URLs a webhook may target). May import ``queue``,
``telemetry`` and ``shared``.
"""
