"""Several planned runs trained as one pack (``kdcicam ablate --pack N``), each stored as its own run.

Runs may share a pack when their configs differ only in the seed and the context pool
(:func:`kdcicam.training.packed.pack_key`: the seeds of a cell; Base and +ConPool) and every teacher they need
is finished. The pack is trained by :func:`kdcicam.training.packed.fit_packed`; each run is claimed, kept alive
(heartbeat), validated, evaluated and finished (or failed) in the store exactly as
:func:`kdcicam.execution.runner.execute` does it for a run alone, so a run's id, rows and files are the same
with or without ``--pack``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack

from kdcicam.core.errors import ConfigError, KdcicamError
from kdcicam.execution.checkpoint_eval import evaluate_checkpoints
from kdcicam.execution.context import RunContext, RunInterrupted, RunOutcome, RunTakenOver, emit
from kdcicam.execution.lease import Heartbeat, acquire, store_is_shared
from kdcicam.execution.plan import PlannedRun
from kdcicam.execution.run_models import teacher_sources
from kdcicam.execution.runner import _training_inputs, execute, register_run, run_attempt, run_hooks
from kdcicam.training.packed import PackedRun, fit_packed, pack_key


def pack_partners(run: PlannedRun, runs: Sequence[PlannedRun], size: int,
                  ready: Callable[[PlannedRun], bool]) -> list[PlannedRun]:
    """``run`` and up to ``size - 1`` later runs of ``runs`` that can share its pack and are ``ready``."""
    key = pack_key(run.cfg)
    out = [run]
    for other in runs:
        if len(out) >= size:
            break
        if other.run_id != run.run_id and other not in out and pack_key(other.cfg) == key and ready(other):
            out.append(other)
    return out


def pack_executor(plan_runs: Sequence[PlannedRun], size: int) -> Callable[[PlannedRun, RunContext], RunOutcome]:
    """An ``execute_one`` for :func:`kdcicam.execution.runner.execute_plan` that trains each run with the
    plan's runs that can share its pack (up to ``size`` in all); the partners' outcomes are kept and
    returned when the plan reaches them."""
    if size < 1:
        raise ConfigError(f"--pack {size}: must be >= 1")
    done: dict[str, RunOutcome] = {}

    def run_one(run: PlannedRun, ctx: RunContext) -> RunOutcome:
        if run.run_id in done:
            return done.pop(run.run_id)
        if size == 1 or ctx.dist is not None:
            return execute(run, run.dataset, ctx)

        def ready(other: PlannedRun) -> bool:
            return other.run_id not in done and _status(ctx, other.run_id) != "finished" and all(
                _status(ctx, d) == "finished" for d in other.deps)

        partners = pack_partners(run, plan_runs, size, ready)
        if len(partners) == 1:
            return execute(run, run.dataset, ctx)
        outcomes = execute_pack(partners, ctx)
        for other, outcome in zip(partners[1:], outcomes[1:]):
            done[other.run_id] = outcome
        return outcomes[0]

    return run_one


def _status(ctx: RunContext, run_id: str) -> str | None:
    try:
        return ctx.store.get_run(run_id).status
    except KdcicamError:  # not stored yet
        return None


def execute_pack(runs: Sequence[PlannedRun], ctx: RunContext) -> list[RunOutcome]:
    """Claim, train (or resume) as one pack, evaluate and store every run of ``runs``; one outcome per run.

    Raises:
        RunInterrupted: Ctrl-C; every run of the pack is recorded as interrupted (each resumes from its
            own last checkpoint when the command is run again).
    """
    start = time.perf_counter()
    outcomes: dict[str, RunOutcome] = {}
    held: list[PlannedRun] = []
    for run in runs:
        info = register_run(run, run.dataset, ctx)
        if info.status == "finished" or not acquire(run.run_id, ctx, **run_attempt(run, ctx)):
            outcomes[run.run_id] = RunOutcome(run.run_id, "finished", reused=True)
        else:
            held.append(run)
    period = ctx.heartbeat_s if store_is_shared(ctx.store) else 0.0
    if held:
        with ExitStack() as stack:
            beats = [stack.enter_context(Heartbeat(ctx.store, r.run_id, period)) for r in held]
            try:
                results = _train_and_evaluate_pack(held, ctx, beats)
            except RunTakenOver as exc:  # another process judged this one dead: the runs are its now
                emit(ctx, "warning", message=str(exc))
                return [outcomes.get(r.run_id, RunOutcome(r.run_id, "skipped", message=str(exc))) for r in runs]
            except KdcicamError as exc:
                for r in held:
                    ctx.store.fail_run(r.run_id, str(exc))
                    outcomes[r.run_id] = RunOutcome(r.run_id, "failed", message=str(exc),
                                                    seconds=time.perf_counter() - start)
                return [outcomes[r.run_id] for r in runs]
            except KeyboardInterrupt as exc:
                where = f" {exc}" if str(exc) else ""
                resume = "rerun the same command to resume from the last checkpoint"
                for r in held:
                    ctx.store.fail_run(r.run_id, f"interrupted ({getattr(exc, 'how', 'Ctrl-C')}){where}; {resume}")
                raise RunInterrupted(f"runs {', '.join(r.run_id[:12] for r in held)}{where}; {resume}") from None
            except Exception as exc:  # a bug: record it so the runs are not left 'running', then re-raise
                for r in held:
                    ctx.store.fail_run(r.run_id, f"internal error: {type(exc).__name__}: {exc}")
                raise
        seconds = time.perf_counter() - start
        for r, (metrics, train_s, eval_s) in zip(held, results):
            ctx.store.finish_run(r.run_id, train_seconds=train_s, eval_seconds=eval_s)
            outcomes[r.run_id] = RunOutcome(r.run_id, "finished", seconds=seconds, metrics=metrics)
    return [outcomes[r.run_id] for r in runs]


def _train_and_evaluate_pack(runs: Sequence[PlannedRun], ctx: RunContext,
                             beats: Sequence[Heartbeat]) -> list[tuple[dict, float, float]]:
    packed, recipes = [], []
    for run, beat in zip(runs, beats):
        model, teachers, recipe, train_set = _training_inputs(run, run.dataset, ctx, teacher_sources(run.cfg,
                                                                                                     ctx.store))
        validate, on_epoch, on_step, on_resume = run_hooks(run, run.dataset, ctx, beat)
        packed.append(PackedRun(model, run.cfg, train_set, ctx.artifacts_root / run.run_id, validate=validate,
                                teachers=teachers, on_epoch=on_epoch, on_step=on_step, on_resume=on_resume))
        recipes.append(recipe)
    if any(r != recipes[0] for r in recipes):
        raise ConfigError("runs of one pack need one loss recipe (the same teachers present)")
    cfg = runs[0].cfg
    t0 = time.perf_counter()
    results = fit_packed(packed, recipes[0], ctx.device,
                         checkpoint_every=cfg.train.checkpoint_every or ctx.checkpoint_every)
    train_s = time.perf_counter() - t0
    out = []
    for run, p, result, beat in zip(runs, packed, results, beats):
        t1 = time.perf_counter()
        metrics = evaluate_checkpoints(p.model, run.run_id, run.cfg, run.dataset, ctx, result.best, beat=beat)
        out.append((metrics, train_s, time.perf_counter() - t1))
    return out
