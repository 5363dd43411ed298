"""The heartbeat thread of a held run (kdcicam.execution.lease.Heartbeat) against a scripted store."""

from __future__ import annotations

import threading
import time

from kdcicam.core.errors import StoreError
from kdcicam.execution.lease import Heartbeat


class _ScriptedStore:
    """``heartbeat`` answers from a script: an exception instance is raised, anything else returned."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.calls = 0

    def heartbeat(self, run_id: str, pid: int | None = None) -> bool:
        self.calls += 1
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _wait(condition, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_a_busy_store_is_beaten_again_and_a_taken_run_is_noticed():
    store = _ScriptedStore(StoreError("run store: database is locked"), True, False)
    with Heartbeat(store, "r" * 16, 0.01) as beat:
        assert _wait(lambda: beat.lost)
    assert store.calls == 3


def test_a_bug_in_the_beat_is_not_swallowed(monkeypatch):
    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_type))
    store = _ScriptedStore(ValueError("a bug"))
    with Heartbeat(store, "r" * 16, 0.01) as beat:
        assert _wait(lambda: seen == [ValueError])
        time.sleep(0.05)
    assert store.calls == 1 and not beat.lost  # the thread ended at the bug instead of beating on
