"""``kdcicam ablate --dry-run``: the plan as a table (or JSON), each run's status and estimated time."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kdcicam.cli._common import echo_json

GONE_STATUS = "finished, checkpoint gone (--retrain-missing trains it again)"


def status_of(info, done: int | None) -> str:
    """A planned run's status as the plan shows it: new, reused, resumed (after how many epochs), or being
    trained by another live process."""
    from kdcicam.execution.holders import holder_gone

    if info is None or info.status == "pending":
        return "new"
    if info.status == "finished":
        return "finished (reuse)"
    after = f" after epoch {done}" if done else ""
    if info.status == "running" and holder_gone(info) is None:
        return f"running in process {info.pid} on {info.host}" + (f" ({done} epochs done)" if done else "")
    return f"interrupted (resume{after})" if info.status == "running" else f"{info.status} (resume{after})"


def print_plan(plan, store, as_json: bool, *, jobs: int = 1, device: str = "cpu") -> None:
    from kdcicam.core.config import to_dict
    from kdcicam.execution.eta import estimate_plan
    from kdcicam.execution.teacher_restore import missing_teachers

    history = store.list_runs()
    gone = {m.run_id for m in missing_teachers(plan.runs, store)}
    by_id = {r.id: r for r in history}
    done = epochs_done(store, history, {r.run_id for r in plan.runs})
    est = estimate_plan(plan.runs, history, profile=plan.profile, device=device, jobs=jobs, epochs_done=done)
    rows = []
    for i, (run, seconds) in enumerate(zip(plan.runs, est.seconds), 1):
        rows.append({"order": i, "run_id": run.run_id, "role": run.role, "pool": run.cfg.model.context_pool,
                     "seed": run.cfg.train.seed, "epochs": run.cfg.train.epochs, "status": GONE_STATUS if run.run_id in gone else status_of(by_id.get(run.run_id), done.get(run.run_id)),
                     "needs": [d[:12] for d in run.deps], "estimated_seconds": seconds,
                     "cells": [f"{t}/{c}@{s}" + (f" [{p}]" if p else "") for t, c, s, p in run.labels],
                     "config": to_dict(run.cfg)})
    estimate = {"total_seconds": est.total, "wall_seconds": est.wall, "jobs": jobs, "device": device,
                "not_estimated_roles": list(est.unknown_roles), "based_on": list(est.based_on)}
    if as_json:
        echo_json({"profile": plan.profile, "variant": plan.variant, "scope": plan.scope.__dict__, "runs": rows,
                   "estimate": estimate})
        return
    t = Table(title=f"plan: {plan.scope.dataset}/{plan.scope.backbone}, profile {plan.profile}, variant {plan.variant}; "
                    f"{jobs} run{'s' if jobs > 1 else ''} at a time")
    for col in ("#", "run", "role", "pool", "seed", "epochs", "status", "est.", "needs", "cells"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(str(r["order"]), r["run_id"][:12], r["role"], "on" if r["pool"] else "off", str(r["seed"]),
                  str(r["epochs"]), r["status"], duration(r["estimated_seconds"]), " ".join(r["needs"]),
                  escape("\n".join(r["cells"])) or "(teacher)")
    console = Console(width=160)
    console.print(t)
    console.print(estimate_line(est, plan.profile, device), highlight=False, soft_wrap=True)
    console.print("Each run's resolved config: the same command with --json.", highlight=False)


def epochs_done(store, history, run_ids: set[str]) -> dict[str, int]:
    """Epochs each unfinished run of the plan has completed (it resumes after its last checkpoint)."""
    out = {}
    for run in history:
        if run.id in run_ids and run.status != "finished":
            curves = store.epoch_metrics(run.id)
            trained = curves[curves["split"] == "train"]["epoch"]
            out[run.id] = int(trained.max()) + 1 if len(trained) else 0
    return out


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds == 0:
        return "-"
    if seconds < 60:
        return "<1 min"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def estimate_line(est, profile: str, device: str) -> str:
    if not any(est.seconds) and not est.unknown_roles:
        return "Estimate: nothing left to train (every run is finished)."
    if not est.based_on:
        return (f"Estimate: none yet: this store has no finished {profile}-profile run of "
                f"{', '.join(est.unknown_roles)} to time the plan by.")
    line = (f"Estimate: {duration(est.total)} of training and evaluation left; about {duration(est.wall)} wall "
            f"with --jobs {est.jobs} (runs in plan order, students after their teachers), from this store's "
            f"finished runs of the same profile, role and dataset ({'; '.join(est.based_on)}), "
            f"on this invocation's device: {device}.")
    if est.unknown_roles:
        line += (f" Left out (no finished {profile}-profile run of that role in this store): "
                 f"{', '.join(est.unknown_roles)}.")
    return line
