"""A dead child's jobs: each settled for its own page's reason, the child's, or spared."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from shared.vocabulary import KillReason
from supervisor.pool.children import Assignment, ChildLost
from supervisor.pool.reaper import Reaper


class Owner:
    def __init__(self) -> None:
        self.lost: dict[str, ChildLost] = {}

    def on_child_lost(self, handle: Any, assignment: Assignment, lost: ChildLost) -> None:
        self.lost[assignment.job.job_id] = lost


def _assignment(job_id: str, reason: KillReason | None = None) -> Assignment:
    job: Any = SimpleNamespace(job_id=job_id)
    found = Assignment(job, None, 0.0, 0.0)
    found.kill_reason = reason
    return found


def _settle(culprit: str | None, reason: KillReason) -> dict[str, ChildLost]:
    owner = Owner()
    reaper = Reaper(SimpleNamespace(), owner, None, "/nonexistent", lambda *args: None)  # type: ignore[arg-type]
    handle: Any = SimpleNamespace(
        assignments={"a": _assignment("a"), "b": _assignment("b"), "c": _assignment("c", KillReason.CANCELLED)},
        kill_reason=reason, kill_detail="why", culprit=culprit)
    reaper._settle_jobs(handle, -9)
    assert handle.assignments == {}
    return owner.lost


def test_a_kill_for_one_job_spares_the_others() -> None:
    lost = _settle("a", KillReason.TIMEOUT)
    assert lost["a"] == ChildLost(KillReason.TIMEOUT, "why", -9, spared=False)
    assert lost["b"].spared and lost["b"].reason is KillReason.TIMEOUT
    assert lost["b"].detail == "its render child was killed for job a (timeout: why)"
    assert lost["c"].reason is KillReason.CANCELLED and not lost["c"].spared  # its own page's reason


def test_a_death_of_nobody_in_particular_is_every_jobs() -> None:
    lost = _settle(None, KillReason.CRASHED)
    assert not lost["a"].spared and not lost["b"].spared
    assert lost["a"].reason is lost["b"].reason is KillReason.CRASHED
