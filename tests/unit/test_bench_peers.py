"""Without the `bench` extra the peer rows are skipped with a line that says how to get them."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from bench import peers as peers_module
from bench.report import peer_row


@pytest.mark.timeout(300)
def test_missing_peers_are_skipped_with_a_clear_line(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name in peers_module.PEERS else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    # No database is touched for a missing peer: an unreachable URL proves it.
    out = peers_module.peers("postgresql://nobody@127.0.0.1:1/none", 10, 3)
    assert set(out) == {"pgqueuer", "procrastinate"}
    assert all(row["status"] == "not installed" for row in out.values())
    err = capsys.readouterr().err
    assert "pgqueuer is not installed (pip install -e '.[bench]'): pgqueuer peer row skipped" in err
    row = peer_row("pgqueuer", out["pgqueuer"])
    assert row == "| pgqueuer no-op drain (peer) | - | - | - | not installed | - | - | - | - | - |"
