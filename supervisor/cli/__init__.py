"""The commands of ``export-worker``: serve, demo, migrate, the job commands, bench.

Owns argument parsing, exit codes and what a command prints. May import every
other part of the supervisor (the top of the layout) and ``bench``; nothing
imports it.
"""
