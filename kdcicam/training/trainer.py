"""The shared trainer: one loop for every role (student, both teachers, distilled student).

The role only changes the loss recipe (:mod:`kdcicam.training.recipes`); the loop, the optimizer, the
checkpoints and the per-epoch validation are the same for all. Shaped like torchvision's
classification reference: :func:`kdcicam.training.epoch.train_one_epoch` receives everything it
uses, :func:`fit` owns the epoch loop, resume and checkpoint selection. Beside it: the optimizer and
lr schedule (:mod:`kdcicam.training.schedule`), the best checkpoints and positions
(:mod:`kdcicam.training.best`), Ctrl-C / SIGTERM at a step boundary (:mod:`kdcicam.training.interrupts`).

Every random draw of a run is a pure function of its seed and a position, never of what ran
before in the process (:mod:`kdcicam.training.streams`), so a run resumed from any checkpoint
continues exactly as an uninterrupted one would (bit for bit in deterministic CPU mode):

- the data order of epoch e: ``epoch_order`` (seed, e);
- the augmentation of sample i in epoch e: drawn from (seed, e, i) (``EpochView``, or the same
  draws applied per batch to decoded frames: :class:`kdcicam.data.cache.CachedBatches`, the same images);
- ε of Eq. 16 and any global-RNG draw at step s of epoch e: from (seed, e, s) (``seed_step``).

Crash safety (:func:`fit`): each epoch is trained, validated, stored through ``on_epoch``, then
committed as ``last.pt`` (the previous one kept as ``prev.pt``); the best checkpoints are written
after the commit and repaired from it on resume. ``checkpoint_every`` N also commits the position
inside an epoch every N steps, and Ctrl-C stops at the next step boundary with such a checkpoint.

One run on many processes (``fit(..., dist=...)``, :mod:`kdcicam.training.distributed`): rank r trains on the
r-th slice of every global batch of the same epoch order, in DistributedDataParallel with synchronised
BatchNorm, and the context pool all-reduces its contributions, so the N ranks take the steps one process
with the global batch would take. Only rank 0 validates, calls back and writes checkpoints; a resumed
run's state is read by rank 0 and sent to the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from kdcicam.core.config import RunConfig, to_dict
from kdcicam.core.runtime import crash_point
from kdcicam.data.cache import CachedTrainSet
from kdcicam.training.best import Position, best_state, position_of, reconcile_best, update_best
from kdcicam.training.checkpoint import LAST, load_resume_state, remove_stale_temps, rotate_last, save_checkpoint
from kdcicam.training.distributed import (
    DistContext,
    any_rank,
    barrier,
    broadcast_object,
    convert_sync_batchnorm,
    local_batch_size,
    wrap_ddp,
)
from kdcicam.training.epoch import EpochLog, EpochProgress, train_one_epoch
from kdcicam.training.interrupts import InterruptGuard, TrainingInterrupted
from kdcicam.training.recipes import Recipe, TeacherSet
from kdcicam.training.schedule import build_optimizer, lr_factor, set_epoch_lr
from kdcicam.training.streams import epoch_batches, epoch_order, rank_share, steps_per_epoch


@dataclass
class FitResult:
    epochs: list[EpochLog] = field(default_factory=list)  # epochs trained by this call
    val: list[dict[str, float]] = field(default_factory=list)  # per-epoch validation metrics, all epochs
    best: dict[str, dict[str, float]] = field(default_factory=dict)  # criterion -> {epoch, value}
    resumed_from: Position | None = None  # the checkpoint the run resumed from, None for a fresh run
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _commit(state: dict[str, Any], run_dir: Path) -> None:
    """Make ``state`` the run's ``last.pt``, keeping the one before as ``prev.pt``."""
    rotate_last(run_dir)
    crash_point("after-rotate")
    save_checkpoint(state, run_dir, LAST)


def fit(
    model: torch.nn.Module,
    recipe: Recipe,
    cfg: RunConfig,
    train_set: Dataset | CachedTrainSet,
    run_dir: Path,
    device: torch.device,
    *,
    validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    teachers: TeacherSet | None = None,
    on_epoch: Callable[[EpochLog, dict[str, float]], None] | None = None,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    on_resume: Callable[[Position | None, list[str]], None] | None = None,
    checkpoint_every: int = 0,
    dist: DistContext | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.train.epochs`` epochs, resuming from ``run_dir`` if it holds a checkpoint.

    Every epoch: train, validate (``validate(model)`` on the held-out validation split), report
    through ``on_epoch`` (a crash after it trains the epoch again and reports the same), commit
    ``last.pt`` (model, optimizer, position, validation history, best epochs) atomically, then write
    ``best_<criterion>.pt`` for each criterion of :data:`kdcicam.training.best.CRITERIA` the epoch improved.

    Args:
        on_resume: called once before training with the checkpoint resumed from (None: a fresh
            run) and the warnings about checkpoints that were skipped or repaired.
        checkpoint_every: also commit the position every this many steps inside an epoch (0 = at
            epoch ends only); a resumed epoch continues at the next batch.
        dist: this process's place in a multi-process run (None: one process). Every rank calls
            ``fit``; only rank 0 reads the checkpoint (and sends it), validates, calls ``on_*`` and writes
            files. ``model`` stays unwrapped: its BatchNorms are made synchronised in place and a
            DistributedDataParallel wrapper of it trains.

    Raises:
        DivergedError: a loss term is not finite.
        TrainingInterrupted: Ctrl-C; the position at the last finished step is saved first (under
            ``dist``: at most one step later, on every rank, once any rank got it).
    """
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    main = dist is None or dist.is_main
    run_dir = Path(run_dir)
    bs = cfg.train.batch_size
    if dist is not None:
        local_batch_size(bs, dist.world_size)  # fails early, on every rank alike
        convert_sync_batchnorm(model, device)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(run_dir)  # this process owns the run: a temp file is a killed writer's
    optimizer = build_optimizer(model, cfg, device)
    generator = torch.Generator()  # ε draws; reseeded at every step (seed_step)
    result = FitResult()
    best: dict[str, dict[str, float]] = {}
    start_epoch, start_step, progress = 0, 0, None
    state, warnings = (load_resume_state(run_dir, map_location=device if dist is None else "cpu")
                       if main else (None, []))
    if dist is not None:
        state = broadcast_object(state, dist)  # rank 0's checkpoint, on every rank
    result.warnings.extend(warnings)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best = {c: dict(b) for c, b in state.get("best", {}).items()}
        result.val = list(state.get("val_history", []))
        pos = result.resumed_from = position_of(state)
        if main:
            result.warnings.extend(reconcile_best(run_dir, best, state, cfg))
        if pos.epoch_done:
            start_epoch = pos.epoch + 1
        else:
            start_epoch, start_step = pos.epoch, pos.step
            progress = EpochProgress(**state["progress"])
        del state
    if on_resume is not None and main:
        on_resume(result.resumed_from, list(result.warnings))
    epochs, seed = cfg.train.epochs, cfg.train.seed
    train_model = wrap_ddp(model, device) if dist is not None else model
    if cfg.train.compile != "off":  # shares model's parameters; checkpoints keep saving model's own state_dict
        train_model = torch.compile(train_model, mode=cfg.train.compile)
    t0 = time.perf_counter()

    def training_state(epoch: int, step: int, done: bool, prog: EpochProgress | None) -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                "epoch_done": done, "progress": asdict(prog) if prog is not None else None,
                "best": best, "val_history": result.val, "config": to_dict(cfg)}

    for epoch in range(start_epoch, epochs):
        set_epoch_lr(optimizer, lr_factor(epoch, cfg))
        order = epoch_order(len(train_set), seed, epoch)
        total = steps_per_epoch(len(order), bs)
        used = len(order) if len(order) <= bs else total * bs
        first = start_step if epoch == start_epoch else 0
        mine, batch, offset = rank_share(order[first * bs:used], bs, dist)
        loader: Iterable[dict] = epoch_batches(train_set, mine, batch, seed, epoch, cfg, device)
        prog = progress if progress is not None else EpochProgress()
        progress = None
        guard = InterruptGuard()

        def after_step(done: int, flush: Callable[[], EpochProgress], epoch: int = epoch, total: int = total,
                       guard: InterruptGuard = guard) -> None:
            stop = any_rank(guard.pending, dist)  # every rank stops at the same step
            due = checkpoint_every > 0 and done % checkpoint_every == 0 and done < total
            if stop or due:
                state = training_state(epoch, done, False, flush())
                if main:
                    _commit(state, run_dir)
            if stop:
                raise TrainingInterrupted(f"at epoch {epoch + 1}/{epochs}, step {done}/{total} (position saved)",
                                          how=guard.how)

        with guard:
            log = train_one_epoch(train_model, recipe, optimizer, loader, device, epoch, cfg=cfg, teachers=teachers,
                                  generator=generator, on_step=on_step if main else None, start_step=first,
                                  total_steps=total, progress=prog, after_step=after_step, dist=dist,
                                  draw_offset=offset)
        if any_rank(guard.pending, dist):  # Ctrl-C after the last step's check: save the trained, unvalidated epoch
            after_step(total, lambda prog=prog: prog)
        result.epochs.append(log)
        if main:
            val_metrics = validate(model) if validate is not None else {}
            result.val.append({"epoch": epoch, **val_metrics})
            improved = update_best(best, epoch, val_metrics)
            if on_epoch is not None:
                on_epoch(log, val_metrics)
            _commit(training_state(epoch, total, True, None), run_dir)
            for criterion in improved:
                save_checkpoint(best_state(model.state_dict(), epoch, cfg), run_dir, f"best_{criterion}.pt")
        barrier(dist)  # the other ranks wait here (long timeout) while rank 0 validates and writes
    result.best = best
    result.seconds = time.perf_counter() - t0
    return result
