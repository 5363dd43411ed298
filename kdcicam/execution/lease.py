"""Holding a run: claim it, wait while another live process trains it, take it over when that
process is gone, and beat its heartbeat while it is held.

Exactly one process claims a run (:meth:`Store.claim_run`); the others wait for it (:func:`acquire`).
While a process holds a run a background thread beats its heartbeat (:class:`Heartbeat`). A run left
``running`` by a process that is gone (its pid is dead on this host, or its heartbeat is older than
``stale_after_s``) is taken over; a holder that finds its run taken stops (:class:`RunTakenOver`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from kdcicam.core.errors import RunError, StoreError
from kdcicam.execution.context import RunContext, RunTakenOver, emit
from kdcicam.execution.holders import holder_gone
from kdcicam.store import RunInfo, Store, sqlite_file, utc_now
from kdcicam.store.run_folder import append_attempt

TAKEOVER_MARGIN_S = 2.0  # a dead holder's last heartbeat must be this old before its run is taken (acquire)


def store_is_shared(store: Store) -> bool:
    """Whether other processes can see the store (anything but an in-memory SQLite database)."""
    return not store.url.startswith("sqlite") or sqlite_file(store.url) is not None


class Heartbeat:
    """Beats a held run's heartbeat from a daemon thread every ``period_s``, through training and
    evaluation alike, and notices when another process has taken the run (:meth:`check`)."""

    def __init__(self, store: Store, run_id: str, period_s: float) -> None:
        self._store = store
        self._run_id = run_id
        self._period = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def __enter__(self) -> Heartbeat:
        if self._period > 0:
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self._run_id[:8]}", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        pid = os.getpid()
        while not self._stop.wait(self._period):
            try:
                if not self._store.heartbeat(self._run_id, pid=pid):
                    self.lost = True
                    return
            except StoreError:  # a busy or unreachable store: beat again next period
                continue

    def check(self) -> None:
        """Raise :class:`RunTakenOver` if the store no longer lists this process as the run's holder."""
        if self.lost:
            raise RunTakenOver(f"run {self._run_id[:12]} was taken over by another process, which found this "
                               "one's heartbeat stale; leaving it to that process")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # a beat stuck on a lock ends on its own: it only touches a running run


def _holder_gone(info: RunInfo, ctx: RunContext) -> str | None:
    """Why the process holding a ``running`` run is dead, or None while it may be alive (:func:`holder_gone`)."""
    return holder_gone(info, ctx.stale_after_s)


def take_over(info: RunInfo, ctx: RunContext, attempt: dict[str, str | None]) -> bool:
    """Claim a run whose holder is gone, only if nobody has claimed it or beaten its heartbeat since.

    :meth:`Store.claim_run` takes a running run whose heartbeat is older than ``stale_after_s``;
    asking for an age just under that of the heartbeat read in ``info`` makes it a compare-and-set
    on that heartbeat: a process that claimed the run after ``info`` was read (at least
    :data:`TAKEOVER_MARGIN_S` after that heartbeat) has a younger one, and keeps the run.
    """
    pid, host = os.getpid(), socket.gethostname()
    if info.heartbeat_at is None:
        return ctx.store.claim_run(info.id, pid, host, stale_after_s=ctx.stale_after_s, **attempt)
    age = (utc_now() - info.heartbeat_at).total_seconds()
    if age < TAKEOVER_MARGIN_S:
        time.sleep(TAKEOVER_MARGIN_S - age)
        now = ctx.store.get_run(info.id)
        if (now.status, now.pid, now.host, now.heartbeat_at) != (info.status, info.pid, info.host, info.heartbeat_at):
            return False
        age = (utc_now() - info.heartbeat_at).total_seconds()
    return ctx.store.claim_run(info.id, pid, host, stale_after_s=age - TAKEOVER_MARGIN_S / 2, **attempt)


def acquire(run_id: str, ctx: RunContext, **attempt: str | None) -> bool:
    """Claim a run for this process, waiting while another live process trains it.

    A pending or failed run is claimed (a failed one resumes from its checkpoint); a running one
    whose holder is gone is taken over; a running one whose holder is alive is waited for, polling
    every ``ctx.wait_poll_s``: if that process fails or dies, this one claims the run and resumes it.

    Args:
        run_id: the run.
        ctx: the invocation's context (store, timings, progress events).
        **attempt: git_commit, device, torch_version, artifacts_dir of this attempt (recorded when claiming).

    Returns:
        True once this process holds the run (the claim added to the run folder's attempts log);
        False when another process finished it.
    """
    pid, host = os.getpid(), socket.gethostname()
    waited = False
    while True:
        info = ctx.store.get_run(run_id)
        if info.status == "finished":
            return False
        if info.status != "running":
            if ctx.store.claim_run(run_id, pid, host, stale_after_s=ctx.stale_after_s, **attempt):
                if waited:
                    emit(ctx, "warning", run_id=run_id, message=f"run {run_id[:12]}: the process training it "
                          f"stopped ({info.message or info.status}); this process resumes it")
                return _logged(run_id, ctx, attempt)
            continue  # another process claimed it first: look again
        gone = _holder_gone(info, ctx)
        if gone is None:
            if not waited:
                emit(ctx, "waiting", run_id=run_id, holder=f"process {info.pid} on {info.host}")
                waited = True
            time.sleep(ctx.wait_poll_s)
        elif take_over(info, ctx, attempt):
            emit(ctx, "warning", run_id=run_id,
                  message=f"run {run_id[:12]} was left running by {gone}: resuming it from its last checkpoint")
            return _logged(run_id, ctx, attempt)


def _logged(run_id: str, ctx: RunContext, attempt: dict[str, str | None]) -> bool:
    """Add this process's claim to the run folder's attempts log (the store's row keeps only the last
    attempt's device and commit); True, for :func:`acquire` to return. The run is held by now: a log
    that cannot be written is a warning, not a failure of the run."""
    if attempt.get("artifacts_dir"):
        try:
            append_attempt(Path(attempt["artifacts_dir"]), {
                "claimed_at": utc_now().isoformat(timespec="seconds"), "host": socket.gethostname(),
                "pid": os.getpid(), **{key: attempt.get(key) for key in ("device", "git_commit", "torch_version")}})
        except RunError as exc:
            emit(ctx, "warning", run_id=run_id, message=f"run {run_id[:12]}: this attempt is not in its attempts "
                  f"log ({exc})")
    return True


def held_elsewhere(run_id: str, ctx: RunContext) -> bool:
    """Whether another live process is training the run right now."""
    try:
        info = ctx.store.get_run(run_id)
    except StoreError:  # not registered yet
        return False
    return info.status == "running" and _holder_gone(info, ctx) is None
