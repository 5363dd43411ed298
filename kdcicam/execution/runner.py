"""The lifecycle of one run: record it, claim it, train (or resume) it, evaluate it, store the results.

Used by ``kdcicam train`` (one run) and ``kdcicam ablate`` (every run of a plan). A finished run
is never trained twice; an interrupted one resumes from its last complete checkpoint; a failed
one is recorded with its reason and can be retried by rerunning the command.

Several processes may work on one store at once (two ``ablate`` commands, a cluster of jobs):
exactly one holds a run at a time, the others wait for it, and a run whose holder is gone is taken
over and resumed (:mod:`kdcicam.execution.lease`). Per-epoch evaluations: :mod:`kdcicam.execution.epoch_evals`;
the final evaluation of the kept checkpoints: :mod:`kdcicam.execution.checkpoint_eval`; finished runs
as networks (teachers): :mod:`kdcicam.execution.run_models`.

One run on many processes (``torchrun ... kdcicam train``, ``ctx.dist``): every rank calls
:func:`execute_plan` with the same runs; rank 0 alone touches the store, claims, validates,
evaluates and writes files, and broadcasts to the others which run comes next and the teacher
checkpoints it reads (:func:`teacher_sources`). A failure on rank 0 once training has started
raises :class:`DistributedAbort` (the run recorded as failed first): the other ranks are inside
collectives, and torchrun ends them when rank 0 exits.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from kdcicam.core.config import to_dict
from kdcicam.core.errors import KdcicamError
from kdcicam.core.identity import config_hash
from kdcicam.core.runtime import crash_point, provenance, set_seed
from kdcicam.data.base import DatasetIndex
from kdcicam.data.cache import train_view
from kdcicam.data.dataset import WSOLDataset
from kdcicam.data.train_augment import train_transform_for
from kdcicam.execution.checkpoint_eval import evaluate_checkpoints
from kdcicam.execution.context import (
    DistributedAbort,
    RunContext,
    RunInterrupted,
    RunOutcome,
    RunTakenOver,
    emit,
)
from kdcicam.execution.epoch_evals import EpochEvals
from kdcicam.execution.lease import Heartbeat, acquire, held_elsewhere, store_is_shared
from kdcicam.execution.plan import PlannedRun
from kdcicam.execution.run_models import build_teachers, load_run_model, teacher_sources
from kdcicam.model.factory import build_model
from kdcicam.store.run_folder import write_owner_file
from kdcicam.training.best import Position
from kdcicam.training.distributed import broadcast_object
from kdcicam.training.epoch import EpochLog
from kdcicam.training.recipes import recipe_for
from kdcicam.training.trainer import fit

__all__ = ["RunContext", "RunInterrupted", "RunOutcome", "execute", "execute_plan", "load_run_model",
           "register_run", "run_attempt", "run_hooks"]


def register_run(run: PlannedRun, index: DatasetIndex, ctx: RunContext) -> Any:
    """Create (or find) the run's row, record its labels; returns its RunInfo."""
    cfg = run.cfg
    ctx.store.ensure_dataset(index.fingerprint, index.name, str(index.root), dict(index.meta))
    info = ctx.store.get_or_create_run(
        run.run_id, config_hash=config_hash(cfg), role=cfg.loss.role, profile=cfg.profile,
        variant=cfg.variant, dataset=index.name, seed=cfg.train.seed, config=to_dict(cfg),
        dataset_fingerprint=index.fingerprint, artifacts_dir=str((ctx.artifacts_root / run.run_id).resolve()))
    for table, cell, _seed, _point in run.labels:
        ctx.store.add_labels(run.run_id, table, cell)
    return info


def execute(run: PlannedRun, index: DatasetIndex, ctx: RunContext) -> RunOutcome:
    """Run one planned run to the end (or reuse it): claim, train/resume, evaluate, store.

    Raises:
        RunInterrupted: Ctrl-C; the run is recorded as failed with how to resume it.
        DistributedAbort: multi-process run, rank 0: the run failed or was taken over after training started.
    """
    if not ctx.is_main:
        return _follow(run, index, ctx)
    start = time.perf_counter()
    info = register_run(run, index, ctx)
    if info.status == "finished":
        _tell(ctx, None)
        return RunOutcome(run.run_id, "finished", reused=True)
    attempt = run_attempt(run, ctx)
    period = ctx.heartbeat_s if store_is_shared(ctx.store) else 0.0
    told = [False]  # whether the other ranks were told to train (they are inside collectives from then on)
    while True:
        if not acquire(run.run_id, ctx, **attempt):
            _tell(ctx, None)
            return RunOutcome(run.run_id, "finished", reused=True)
        try:
            with Heartbeat(ctx.store, run.run_id, period) as beat:
                metrics, train_s, eval_s = _train_and_evaluate(run, index, ctx, beat, told)
                beat.check()
        except RunTakenOver as exc:
            emit(ctx, "warning", run_id=run.run_id, message=str(exc))
            if told[0]:
                raise DistributedAbort(str(exc)) from None
            continue  # the other process has it now: wait for it like any holder
        except KdcicamError as exc:
            ctx.store.fail_run(run.run_id, str(exc))
            if ctx.dist is not None and not told[0]:
                _tell(ctx, None)
            elif told[0]:
                raise DistributedAbort(f"run {run.run_id[:12]} failed: {exc}") from None
            return RunOutcome(run.run_id, "failed", message=str(exc), seconds=time.perf_counter() - start)
        except KeyboardInterrupt as exc:
            where = f" {exc}" if str(exc) else ""
            resume = "rerun the same command to resume from the last checkpoint"
            ctx.store.fail_run(run.run_id, f"interrupted ({getattr(exc, 'how', 'Ctrl-C')}){where}; {resume}")
            raise RunInterrupted(f"run {run.run_id[:12]}{where}; {resume}") from None
        except Exception as exc:  # a bug: record it so the run is not left 'running', then re-raise
            ctx.store.fail_run(run.run_id, f"internal error: {type(exc).__name__}: {exc}")
            raise
        ctx.store.finish_run(run.run_id, train_seconds=train_s, eval_seconds=eval_s)
        return RunOutcome(run.run_id, "finished", seconds=time.perf_counter() - start, metrics=metrics)


def run_attempt(run: PlannedRun, ctx: RunContext) -> dict[str, Any]:
    """What this attempt at a run records when it claims it; writes the run folder's owner file."""
    prov = provenance(ctx.device)
    attempt = {k: prov[k] for k in ("git_commit", "device", "torch_version")}
    # where this attempt trains and writes checkpoints (absolute: students read teachers' files from any
    # working directory; a run resumed under another --artifacts folder records the new one)
    attempt["artifacts_dir"] = str((ctx.artifacts_root / run.run_id).resolve())
    write_owner_file(ctx.artifacts_root / run.run_id, run.run_id, ctx.store.label)  # runs delete's proof
    return attempt


def _tell(ctx: RunContext, message: Any) -> None:
    """Rank 0: send the other ranks what comes next (None: nothing to train for this run)."""
    if ctx.dist is not None:
        broadcast_object(message, ctx.dist)


def _training_inputs(run: PlannedRun, index: DatasetIndex, ctx: RunContext,
                     sources: dict[str, tuple[dict[str, Any], str]]):
    """The network (at the run's seed), its teachers, the role's recipe and the training set."""
    cfg = run.cfg
    # the run's initial weights (and kernels) depend on its own seed, not on the runs before it
    set_seed(cfg.train.seed, cfg.train.deterministic)
    model = build_model(cfg.model, cfg.variant, input_size=cfg.data.crop).to(ctx.device)
    teachers = build_teachers(sources, ctx.device)
    present = tuple(name for name, m in (("cls", teachers and teachers.cls_model),
                                         ("loc", teachers and teachers.loc_model)) if m is not None)
    recipe = recipe_for(cfg.loss, cfg.variant, teachers=present or ("cls", "loc"),
                        heatmap_function=cfg.model.heatmap_function)
    transform = train_transform_for(cfg.data, recipe.epsilon_choices if recipe.epsilon == "sample" else ())
    frames = ctx.frames_for(cfg)
    cached = train_view(index.train, transform, frames) if frames is not None else None
    train_set = cached if cached is not None else WSOLDataset(index.train, transform)
    return model, teachers, recipe, train_set


def _follow(run: PlannedRun, index: DatasetIndex, ctx: RunContext) -> RunOutcome:
    """A rank other than 0: train the run with rank 0 when it says so; never touch the store."""
    start = time.perf_counter()
    sources = broadcast_object(None, ctx.dist)
    if sources is None:
        return RunOutcome(run.run_id, "skipped", message="rank 0 did not train it")
    model, teachers, recipe, train_set = _training_inputs(run, index, ctx, sources)
    cfg = run.cfg
    fit(model, recipe, cfg, train_set, ctx.artifacts_root / run.run_id, ctx.device, teachers=teachers,
        checkpoint_every=cfg.train.checkpoint_every or ctx.checkpoint_every, dist=ctx.dist)
    return RunOutcome(run.run_id, "finished", seconds=time.perf_counter() - start)


def _train_and_evaluate(run: PlannedRun, index: DatasetIndex, ctx: RunContext,
                        beat: Heartbeat, told: list[bool] | None = None) -> tuple[dict, float, float]:
    cfg = run.cfg
    device = ctx.device
    run_dir = ctx.artifacts_root / run.run_id
    sources = teacher_sources(cfg, ctx.store)
    if ctx.dist is not None:
        _tell(ctx, sources)  # from here on every rank trains
        if told is not None:
            told[0] = True
    model, teachers, recipe, train_set = _training_inputs(run, index, ctx, sources)
    validate, on_epoch, on_step, on_resume = run_hooks(run, index, ctx, beat)
    t0 = time.perf_counter()
    result = fit(model, recipe, cfg, train_set, run_dir, device, validate=validate, teachers=teachers,
                 on_epoch=on_epoch, on_step=on_step, on_resume=on_resume,
                 checkpoint_every=cfg.train.checkpoint_every or ctx.checkpoint_every, dist=ctx.dist)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    metrics = evaluate_checkpoints(model, run.run_id, cfg, index, ctx, result.best, beat=beat)
    return metrics, train_s, time.perf_counter() - t1


def run_hooks(run: PlannedRun, index: DatasetIndex, ctx: RunContext, beat: Heartbeat) -> tuple[Callable, ...]:
    """The trainer's callbacks of a run: validate, on_epoch (store the epoch), on_step, on_resume (report)."""
    cfg = run.cfg
    device = ctx.device
    epoch_evals = EpochEvals(cfg, index, device, ctx.eval_batch_size, ctx.frames_for(cfg))

    def validate(m: torch.nn.Module) -> dict[str, float]:
        metrics = epoch_evals(m)  # the split eval.select_on names picks checkpoints (+ audit numbers)
        m.train()
        return metrics

    def on_epoch(log: EpochLog, val: dict[str, float]) -> None:
        beat.check()
        ctx.store.add_epoch_metrics(run.run_id, log.epoch, "train", {**log.terms, "images_per_s": log.images_per_s})
        crash_point("between-metric-writes")
        epoch_evals.store(ctx.store, run.run_id, log.epoch, val)
        if not ctx.store.heartbeat(run.run_id, pid=os.getpid()):
            beat.lost = True
            beat.check()
        emit(ctx, "epoch", run_id=run.run_id, epoch=log.epoch + 1, epochs=cfg.train.epochs, terms=log.terms,
              val=val, images_per_s=log.images_per_s)

    def on_step(step: int, steps: int, terms: dict[str, float]) -> None:
        beat.check()
        emit(ctx, "step", run_id=run.run_id, step=step, steps=steps, terms=terms)

    def on_resume(position: Position | None, warnings: list[str]) -> None:
        for warning in warnings:
            emit(ctx, "warning", run_id=run.run_id, message=warning)
        if position is not None:
            emit(ctx, "resumed", run_id=run.run_id, message=f"run {run.run_id[:12]}: resuming "
                  f"{position.describe(cfg.train.epochs)}", epoch=position.epoch, step=position.step)

    return validate, on_epoch, on_step, on_resume


def execute_plan(runs: list[PlannedRun], ctx: RunContext,
                 on_run_start: Callable[[PlannedRun], None] | None = None,
                 on_run_end: Callable[[PlannedRun, RunOutcome], None] | None = None,
                 execute_one: Callable[[PlannedRun, RunContext], RunOutcome] | None = None) -> list[RunOutcome]:
    """Run every planned run; a failed run's dependants are skipped, the rest go on.

    Runs go in plan order (teachers first), except that a run another live process is training is
    put off while other runs are ready, so processes working on the same plan share it out; when
    only such runs (or their dependants) are left, this process waits for the first of them.

    Args:
        execute_one: how one run is carried out (default: :func:`execute` in this process; the CLI's
            ``--gpus N`` runs each in a torchrun child, :func:`kdcicam.execution.launch.execute_in_child`).

    Under ``ctx.dist`` every rank calls this with the same runs; rank 0 decides the order and tells
    the others which run is next.

    Returns:
        One outcome per run, in plan order.
    """
    if ctx.dist is not None:
        return _execute_plan_ranked(runs, ctx, on_run_start, on_run_end)
    run_one = execute_one or (lambda r, c: execute(r, r.dataset, c))
    outcomes: dict[str, RunOutcome] = {}
    remaining = list(runs)
    wait = False  # nothing could start in the last pass: take the first startable run, waiting if need be
    while remaining:
        started = False
        for run in list(remaining):
            failed = [d for d in run.deps if d in outcomes and outcomes[d].status != "finished"]
            if failed:
                outcome = RunOutcome(run.run_id, "skipped", message=f"teacher run {failed[0][:12]} did not finish")
            elif any(r.run_id in run.deps for r in remaining):
                continue  # a teacher is still to come
            elif not wait and held_elsewhere(run.run_id, ctx):
                continue
            else:
                if on_run_start is not None:
                    on_run_start(run)
                outcome = run_one(run, ctx)
                wait = False
            outcomes[run.run_id] = outcome
            remaining.remove(run)
            started = True
            if on_run_end is not None:
                on_run_end(run, outcome)
        wait = not started
    return [outcomes[r.run_id] for r in runs]


def _execute_plan_ranked(runs: list[PlannedRun], ctx: RunContext,
                         on_run_start: Callable[[PlannedRun], None] | None,
                         on_run_end: Callable[[PlannedRun, RunOutcome], None] | None) -> list[RunOutcome]:
    """:func:`execute_plan` for one rank of a multi-process run: rank 0 plans as one process would,
    announcing each run before it starts it (and None at the end); the others follow."""
    by_id = {r.run_id: r for r in runs}
    if ctx.is_main:
        def announce(run: PlannedRun, c: RunContext) -> RunOutcome:
            _tell(c, run.run_id)
            return execute(run, run.dataset, c)

        outcomes = execute_plan(runs, dataclasses.replace(ctx, dist=None), on_run_start, on_run_end,
                                execute_one=lambda r, c: announce(r, dataclasses.replace(c, dist=ctx.dist)))
        _tell(ctx, None)
        return outcomes
    done: dict[str, RunOutcome] = {}
    while (run_id := broadcast_object(None, ctx.dist)) is not None:
        done[run_id] = execute(by_id[run_id], by_id[run_id].dataset, ctx)
    return [done.get(r.run_id, RunOutcome(r.run_id, "skipped", message="not trained by this rank")) for r in runs]
