"""The supervisor: the worker's parent process.

This package itself holds only the loop and the composition of its parts:

- ``runner``: signals, the claim loop and shutdown;
- ``composition``: the parts built from settings, in dependency order;
- ``tasks``: the owner of every background task;
- ``settle``: every job a child takes ends in exactly one place;
- ``upkeep``: the periodic work, one loop per concern;
- ``worker_health``: what ``/health`` says, from state the parts keep anyway;
- ``worker_state``: the one claim gate, and the row the workers table shows;
- ``identity``: this worker's default name.

The parts are packages of their own. Imports run one way, top to bottom
(``tests/unit/test_layout.py`` and the import-linter contract in pyproject.toml hold it):

    supervisor.cli         the commands
    supervisor (the loop)  the modules above
    supervisor.http        the HTTP port: health, metrics, the jobs API, the console
    supervisor.pool        the render children, the watchdog, the sandbox
    supervisor.delivery    storage, fence, links, the outbox engine, mail, webhooks
    supervisor.queue       the database, its SQL, migrations, LISTEN, workers, retention
    supervisor.telemetry   metrics and error reports
    shared                 what the supervisor and the render child both use
"""
