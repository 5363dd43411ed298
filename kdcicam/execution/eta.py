"""How long a plan will take, estimated from the store's own finished runs (``ablate --dry-run``).

No number here is a benchmark: a run's cost is the median, over the store's finished runs of the
same profile, role and dataset (on the same device and thread count when there are such runs, else
on any device of the same kind), of its training seconds per epoch, plus the median evaluation
seconds. Those runs ran under their own conditions (load, runs beside them), and the estimate says
how many it rests on. The wall time with ``--jobs N`` replays the runner's order (:func:`makespan`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from kdcicam.store import RunInfo


@dataclass(frozen=True)
class RunCost:
    """The measured cost of one kind of run."""

    per_epoch: float  # seconds of training (incl. per-epoch validation and audits) per epoch
    evaluation: float  # seconds of the final evaluation
    n_runs: int  # finished runs it is the median of
    device: str  # their device, or the device kind when the estimate borrows from other thread counts

    def seconds(self, epochs: float) -> float:
        return self.per_epoch * epochs + self.evaluation


def device_kind(device: str | None) -> str:
    """"cpu" or "gpu" from a stored device string ("cpu (AMD EPYC, x86_64, AVX2, 1 threads)", or the GPU's name)."""
    return "cpu" if (device or "").startswith("cpu") else "gpu"


def run_cost(history: Sequence[RunInfo], profile: str, role: str, dataset: str, device: str) -> RunCost | None:
    """The median cost of the finished runs like this one, or None when the store has none.

    Runs on exactly ``device`` (kind and thread count) are preferred; without them any device of
    the same kind counts.
    """
    like = [r for r in history if r.status == "finished" and r.profile == profile and r.role == role
            and r.dataset == dataset and r.train_seconds is not None and _epochs(r) > 0]
    same = [r for r in like if r.device == device]
    pool = same or [r for r in like if device_kind(r.device) == device_kind(device)]
    if not pool:
        return None
    return RunCost(per_epoch=statistics.median(r.train_seconds / _epochs(r) for r in pool),
                   evaluation=statistics.median(r.eval_seconds or 0.0 for r in pool),
                   n_runs=len(pool), device=device if same else device_kind(device))


def _epochs(run: RunInfo) -> int:
    return int(run.config.get("train", {}).get("epochs", 0) or 0)


def makespan(durations: Sequence[float], deps: Sequence[Sequence[int]], jobs: int) -> float:
    """Wall time of running a plan with ``jobs`` processes, as the runner orders it.

    Each process, when free, starts the first run in plan order whose dependencies (indices of
    earlier runs) have finished, and waits for one when none has (:func:`kdcicam.execution.runner.execute_plan`).

    Args:
        durations: seconds per run, in plan order (0 for a run that is already finished).
        deps: per run, the indices of the runs it needs (earlier in the plan).
        jobs: processes.
    """
    if jobs < 1:
        raise ValueError(f"jobs = {jobs}: must be at least 1")
    finish: list[float | None] = [None] * len(durations)
    free = [0.0] * jobs
    pending = list(range(len(durations)))
    while pending:
        w = min(range(jobs), key=free.__getitem__)
        now = free[w]
        ready = [i for i in pending if all(finish[d] is not None and finish[d] <= now for d in deps[i])]
        if not ready:  # wait for the first run whose teachers are all under way to become startable
            starts = [max((finish[d] for d in deps[i]), default=now) for i in pending
                      if all(finish[d] is not None for d in deps[i])]
            now = max(now, min(starts))
            ready = [i for i in pending if all(finish[d] is not None and finish[d] <= now for d in deps[i])]
        i = ready[0]
        finish[i] = now + durations[i]
        free[w] = finish[i]
        pending.remove(i)
    return max((f for f in finish if f is not None), default=0.0)


@dataclass(frozen=True)
class PlanEstimate:
    """Seconds per run of a plan (None: no finished run to estimate it from) and the plan's wall time."""

    seconds: tuple[float | None, ...]  # per run, in plan order; 0 for a finished run
    wall: float  # with ``jobs`` processes, the runs without an estimate counted as 0
    jobs: int
    unknown_roles: tuple[str, ...]  # roles of unfinished runs the store has no history for
    based_on: tuple[str, ...]  # "role: median of N runs on DEVICE"

    @property
    def total(self) -> float:
        return sum(s for s in self.seconds if s is not None)


def estimate_plan(runs: Sequence, history: Sequence[RunInfo], *, profile: str, device: str, jobs: int,
                  epochs_done: dict[str, int]) -> PlanEstimate:
    """Estimate each planned run and the plan's wall time.

    Args:
        runs: the plan's :class:`~kdcicam.execution.plan.PlannedRun` objects, in plan order.
        history: the store's runs.
        profile: the plan's profile.
        device: the device string runs of this invocation will store (:func:`kdcicam.core.runtime.device_name`).
        jobs: processes (``--jobs``).
        epochs_done: run id -> epochs an unfinished run has completed (it resumes after them).
    """
    status = {r.id: r.status for r in history}
    index = {r.run_id: i for i, r in enumerate(runs)}
    costs: dict[str, RunCost | None] = {}
    seconds: list[float | None] = []
    unknown: list[str] = []
    for run in runs:
        if status.get(run.run_id) == "finished":
            seconds.append(0.0)
            continue
        if run.role not in costs:
            costs[run.role] = run_cost(history, profile, run.role, run.cfg.data.dataset, device)
        cost = costs[run.role]
        if cost is None:
            seconds.append(None)
            unknown.append(run.role)
            continue
        seconds.append(cost.seconds(max(0, run.cfg.train.epochs - epochs_done.get(run.run_id, 0))))
    wall = makespan([s or 0.0 for s in seconds], [[index[d] for d in r.deps if d in index] for r in runs], jobs)
    based_on = tuple(f"{role}: median of {c.n_runs} run(s) on {c.device}" for role, c in costs.items() if c)
    return PlanEstimate(tuple(seconds), wall, jobs, tuple(dict.fromkeys(unknown)), based_on)
