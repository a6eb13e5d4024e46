"""The render pool: spawned render children, each owning one Chromium, and the
watchdog that kills any child whose process tree outgrows its memory limit.

Owns the children's lifecycle (start, boot canary, recycle, reap), which child
holds which job, process-tree memory and the container's cgroup reading, and
Chromium's sandbox detection. May import ``telemetry`` and ``shared`` (and
``render_child`` only for the child's entry point); never the database, storage
or mail: invariant 3 (the watchdog runs on time whatever they do).
"""
