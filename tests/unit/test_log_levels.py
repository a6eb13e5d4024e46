"""One log-level table (shared.vocabulary.LogLevel): LOG_LEVEL names, record numbers, line names."""

from __future__ import annotations

import io
import json
import logging

import pytest

from shared.logs import setup_logging
from shared.vocabulary import LogLevel


@pytest.mark.parametrize(
    ("name", "number"),
    [("debug", logging.DEBUG), ("INFO", logging.INFO), ("warn", logging.WARNING), ("Warning", logging.WARNING),
     ("error", logging.ERROR), ("loud", logging.INFO)],
)
def test_every_spelling_has_one_number(name: str, number: int) -> None:
    assert LogLevel.number_of(name) == number


@pytest.mark.parametrize(
    ("levelno", "name"),
    [(logging.DEBUG, "debug"), (logging.INFO, "info"), (logging.WARNING, "warn"), (logging.ERROR, "error"),
     (logging.CRITICAL, "error"), (25, "info"), (5, "debug")],
)
def test_a_record_number_gets_the_seeds_name(levelno: int, name: str) -> None:
    assert LogLevel.for_number(levelno) == name


def test_log_level_warn_keeps_warnings_and_drops_info() -> None:
    root = logging.getLogger()
    saved = (root.level, root.handlers[:])
    out = io.StringIO()
    try:
        setup_logging("warn", "w-1", out)
        log = logging.getLogger("test.levels")
        log.info("dropped")
        log.warning("kept", extra={"job_id": "j-1"})
        log.critical("also kept")
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["level"], line["message"]) for line in lines] == [("warn", "kept"), ("error", "also kept")]
    assert lines[0]["job_id"] == "j-1" and lines[0]["worker_id"] == "w-1"
