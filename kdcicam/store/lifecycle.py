"""The run store's run lifecycle: claiming a run for training (exactly one of several claimers wins),
heartbeats, marking it finished or failed, and reopening a finished one to train it again, as methods of :class:`kdcicam.store.api.Store` (a mixin)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, update
from sqlalchemy.orm import Session

from kdcicam.store.rows import RunInfo, check_fits, check_keys, run_info
from kdcicam.store.run_folder import to_stored
from kdcicam.store.schema import RESULT_MODELS, Run

# claim_run: facts about the attempt that may be (re)recorded when a process takes the run.
_ATTEMPT_FIELDS = ("git_commit", "device", "torch_version", "artifacts_dir")
_TIMING_FIELDS = ("train_seconds", "eval_seconds")


class LifecycleMixin:
    """Claim, heartbeat, finish, fail. Needs the store's ``_tx``, ``_require_run``, ``_now`` and ``folder``."""

    def claim_run(self, run_id: str, pid: int, host: str, stale_after_s: float = 120.0,
                  **attempt: str | None) -> bool:
        """Atomically take a run for training: exactly one of several concurrent claimers wins.

        A run can be taken when it is pending or failed, or running with a heartbeat older than
        ``stale_after_s`` (its process died). One conditional UPDATE does the test and the set.
        SQLite runs one write transaction at a time. On PostgreSQL (READ COMMITTED) the UPDATE
        locks the row; a second claimer blocks on that lock, and once the first commits it
        re-evaluates the WHERE clause on the committed row ("running", fresh heartbeat), which
        no longer matches: it updates nothing and gets False. If the first rolls back, the
        second claims the unchanged row. So exactly one wins, and no claimable run is skipped
        (as ``SELECT ... FOR UPDATE SKIP LOCKED`` would skip a row that is merely locked by,
        say, ``add_labels``). Heartbeats use the callers' clocks: keep the hosts in NTP sync.

        Args:
            run_id: the run to take.
            pid: this process's id.
            host: this machine's name.
            stale_after_s: heartbeat age after which a running run is considered dead.
            **attempt: git_commit, device, torch_version, artifacts_dir of this attempt.

        Returns:
            True when this caller now owns the run.

        Raises:
            StoreError: no such run.
        """
        check_keys(attempt, _ATTEMPT_FIELDS, "claim field")
        if "artifacts_dir" in attempt:
            attempt = {**attempt, "artifacts_dir": to_stored(attempt["artifacts_dir"], self.folder)}
        check_fits(Run.__table__, {"pid": pid, "host": host, **attempt}, "claim")

        def op(session: Session) -> bool:
            now = self._now()
            stale_before = now - timedelta(seconds=stale_after_s)
            claimable = or_(
                Run.status.in_(("pending", "failed")),
                and_(Run.status == "running",
                     or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < stale_before)),
            )
            result = session.execute(
                update(Run).where(Run.id == run_id, claimable)
                .values(status="running", pid=pid, host=host, heartbeat_at=now, started_at=now,
                        finished_at=None, message=None, **attempt)
                .execution_options(synchronize_session=False))
            if result.rowcount == 1:
                return True
            self._require_run(session, run_id)
            return False

        return self._tx(op, write=True)

    def heartbeat(self, run_id: str, pid: int | None = None) -> bool:
        """Tell the store the running run is alive.

        Args:
            run_id: the run.
            pid: when given, only beat if this process still owns the run.

        Returns:
            False when the run is no longer running (under ``pid``): another process took it.
        """
        def op(session: Session) -> bool:
            query = update(Run).where(Run.id == run_id, Run.status == "running")
            if pid is not None:
                query = query.where(Run.pid == pid)
            result = session.execute(query.values(heartbeat_at=self._now())
                                     .execution_options(synchronize_session=False))
            return result.rowcount == 1

        return self._tx(op, write=True)

    def finish_run(self, run_id: str, **timings: float | None) -> RunInfo:
        """Mark a run finished, with train_seconds / eval_seconds if given."""
        check_keys(timings, _TIMING_FIELDS, "timing")
        return self._set_status(run_id, "finished", **timings)

    def fail_run(self, run_id: str, message: str) -> RunInfo:
        """Mark a run failed with the reason (shown by ``kdcicam runs show``)."""
        return self._set_status(run_id, "failed", message=message)

    def reopen_run(self, run_id: str, message: str) -> bool:
        """Make a finished run pending again without its results (epoch and final metrics, image records),
        so that the next ``ablate`` / ``train`` trains it anew; its id, config and labels stay. One
        conditional UPDATE: of several callers, exactly one reopens it.

        Args:
            run_id: the run.
            message: why (shown by ``runs list`` / ``runs show`` until the run is claimed).

        Returns:
            True when this caller reopened it; False when it was not finished.

        Raises:
            StoreError: no such run.
        """
        def op(session: Session) -> bool:
            result = session.execute(
                update(Run).where(Run.id == run_id, Run.status == "finished")
                .values(status="pending", message=message, pid=None, heartbeat_at=None, started_at=None,
                        finished_at=None, train_seconds=None, eval_seconds=None)
                .execution_options(synchronize_session=False))
            if result.rowcount != 1:
                self._require_run(session, run_id)
                return False
            for model in RESULT_MODELS.values():
                session.execute(delete(model).where(model.run_id == run_id))
            return True

        return self._tx(op, write=True)

    def _set_status(self, run_id: str, status: str, **values: Any) -> RunInfo:
        def op(session: Session) -> RunInfo:
            row = self._require_run(session, run_id, lock=True)
            row.status = status
            row.finished_at = self._now()
            for key, value in values.items():
                setattr(row, key, value)
            session.flush()
            return run_info(row, self.folder)

        return self._tx(op, write=True)
