"""Train several runs together, one packed step at a time (:mod:`kdcicam.training.packed_step`), each
stored as its own run exactly as :func:`kdcicam.training.trainer.fit` stores it.

Each run keeps its own folder, ``last.pt`` / ``prev.pt`` / ``best_*.pt``, validation history, data order,
augmentation and ε draws (all functions of its own seed, :mod:`kdcicam.training.streams`), pool and Adam state.
Every commit point of ``fit`` (epoch ends, ``checkpoint_every``, Ctrl-C / SIGTERM at a step boundary) commits
every run of the pack, one after the other. Each run's ε generator is reseeded from its own (seed, epoch, step);
torch's global RNG, which no step draws from today, is left seeded by the last run's. A pack trains in eager mode whatever ``train.compile`` says (a speed
setting: the runs' ids and results do not depend on it).

Resume: the runs of a pack resume together from one position. A ``kill -9`` between two runs' commits leaves
the runs committed first one commit ahead: they resume from their ``prev.pt`` (the position of the others),
or from scratch when the others have none, and train that stretch again, so every run ends exactly where the
uninterrupted pack ends. Positions that no such checkpoint joins (runs stored by separate processes) are
trained run by run with ``fit``, each from its own checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from kdcicam.core.config import RunConfig, to_dict
from kdcicam.core.errors import ConfigError, RunError
from kdcicam.core.runtime import crash_point
from kdcicam.data.cache import CachedTrainSet
from kdcicam.model.cicam import CICAM
from kdcicam.training.best import Position, best_state, position_of, reconcile_best, update_best
from kdcicam.training.checkpoint import PREV, load_checkpoint, load_resume_state, remove_stale_temps, save_checkpoint
from kdcicam.training.epoch import DivergedError, EpochLog, EpochProgress, _autocast
from kdcicam.training.interrupts import InterruptGuard, TrainingInterrupted
from kdcicam.training.packed_step import (
    Pack,
    build_pack_optimizer,
    load_run_optimizer_states,
    packed_loss,
    run_optimizer_state,
)
from kdcicam.training.recipes import Recipe, TeacherSet
from kdcicam.training.schedule import lr_factor, set_epoch_lr
from kdcicam.training.streams import epoch_batches, epoch_order, seed_step, steps_per_epoch
from kdcicam.training.trainer import FitResult, _commit, fit


@dataclass
class PackedRun:
    """One run of a pack: what :func:`kdcicam.training.trainer.fit` receives for it."""

    model: CICAM
    cfg: RunConfig
    train_set: Dataset | CachedTrainSet
    run_dir: Path
    validate: Callable[[torch.nn.Module], dict[str, float]] | None = None
    teachers: TeacherSet | None = None
    on_epoch: Callable[[EpochLog, dict[str, float]], None] | None = None
    on_step: Callable[[int, int, dict[str, float]], None] | None = None
    on_resume: Callable[[Position | None, list[str]], None] | None = None
    best: dict[str, dict[str, float]] = field(default_factory=dict)
    result: FitResult = field(default_factory=FitResult)


def pack_key(cfg: RunConfig) -> str:
    """What runs of one pack share: the resolved config without the seed, the context pool switch and which
    teacher runs (each run distils from its own)."""
    d = to_dict(cfg)
    d["train"].pop("seed", None)
    for key in ("cls_run", "loc_run"):
        d.get("teachers", {}).pop(key, None)
    for key in ("context_pool", "update_rate"):
        d["model"].pop(key, None)
    return repr(sorted((k, repr(v)) for k, v in d.items()))


def _check(runs: Sequence[PackedRun], recipe: Recipe) -> None:
    if not runs:
        raise ConfigError("a pack needs at least one run")
    if any(pack_key(r.cfg) != pack_key(runs[0].cfg) for r in runs):
        raise ConfigError("runs of one pack may differ only in train.seed and the context pool")
    if len({len(r.train_set) for r in runs}) != 1:
        raise ConfigError("runs of one pack need training splits of one size")


def _order(pos: Position | None) -> tuple[int, int, int]:
    return (-1, 0, 0) if pos is None else (pos.epoch, int(pos.epoch_done), pos.step)


def _aligned(runs: Sequence[PackedRun], states: list[dict[str, Any] | None],
             device: torch.device) -> list[dict[str, Any] | None] | None:
    """Every run's state at the pack's earliest position (the runs ahead: their ``prev.pt``, or nothing
    when that position is a fresh start); None when a run ahead holds no checkpoint at that position."""
    positions = [None if s is None else position_of(s) for s in states]
    behind = min(positions, key=_order)
    out = []
    for r, state, pos in zip(runs, states, positions):
        if pos == behind:
            out.append(state)
            continue
        if behind is None:
            out.append(None)
            continue
        try:
            prev = load_checkpoint(r.run_dir / PREV, map_location=device)
        except RunError:
            return None
        if position_of(prev) != behind:
            return None
        out.append(prev)
    return out


def fit_packed(runs: Sequence[PackedRun], recipe: Recipe, device: torch.device, *,
               checkpoint_every: int = 0, read_every: int = 20) -> list[FitResult]:
    """Train every run of ``runs`` for ``cfg.train.epochs`` epochs in packed steps; each run's
    :class:`FitResult`, as :func:`fit` returns it (a pack of one trains as ``fit`` does, packed).

    Raises:
        ConfigError: the runs cannot share a pack (:func:`pack_key`, training split sizes).
        DivergedError: a loss term of a run is not finite (every run stops).
        TrainingInterrupted: Ctrl-C / SIGTERM; every run's position is saved first.
    """
    _check(runs, recipe)
    states = []
    for r in runs:
        r.run_dir = Path(r.run_dir)
        r.run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(r.run_dir)
        state, warnings = load_resume_state(r.run_dir, map_location=device)
        r.result.warnings.extend(warnings)
        states.append(state)
    states = _aligned(runs, states, device)
    if states is None:  # positions that no common checkpoint joins: each run resumes on its own
        return [fit(r.model, recipe, r.cfg, r.train_set, r.run_dir, device, validate=r.validate, teachers=r.teachers,
                    on_epoch=r.on_epoch, on_step=r.on_step, on_resume=r.on_resume,
                    checkpoint_every=checkpoint_every) for r in runs]
    cfg = runs[0].cfg
    start_epoch, start_step, progress = 0, 0, [None] * len(runs)
    for i, (r, state) in enumerate(zip(runs, states)):
        if state is None:
            continue
        r.model.load_state_dict(state["model"])
        r.best = {c: dict(b) for c, b in state.get("best", {}).items()}
        r.result.val = list(state.get("val_history", []))
        pos = r.result.resumed_from = position_of(state)
        r.result.warnings.extend(reconcile_best(r.run_dir, r.best, state, r.cfg))
        if pos.epoch_done:
            start_epoch = pos.epoch + 1
        else:
            start_epoch, start_step = pos.epoch, pos.step
            progress[i] = EpochProgress(**state["progress"])
    pack = Pack([r.model for r in runs])
    optimizer = build_pack_optimizer(pack, cfg, device)
    if states[0] is not None:
        load_run_optimizer_states(pack, optimizer, [s["optimizer"] for s in states], cfg)
    del states
    for r in runs:
        if r.on_resume is not None:
            r.on_resume(r.result.resumed_from, list(r.result.warnings))
    t0 = time.perf_counter()

    def commit(epoch: int, step: int, done: bool, progs: Sequence[EpochProgress | None]) -> None:
        pack.sync()
        for i, r in enumerate(runs):
            _commit({"model": r.model.state_dict(), "optimizer": run_optimizer_state(pack, optimizer, i, cfg),
                     "epoch": epoch, "step": step, "epoch_done": done,
                     "progress": asdict(progs[i]) if progs[i] is not None else None, "best": r.best,
                     "val_history": r.result.val, "config": to_dict(r.cfg)}, r.run_dir)

    bs, epochs = cfg.train.batch_size, cfg.train.epochs
    for epoch in range(start_epoch, epochs):
        set_epoch_lr(optimizer, lr_factor(epoch, cfg))
        first = start_step if epoch == start_epoch else 0
        loaders, total = [], 0
        for r in runs:
            order = epoch_order(len(r.train_set), r.cfg.train.seed, epoch)
            total = steps_per_epoch(len(order), bs)
            used = len(order) if len(order) <= bs else total * bs
            loaders.append(epoch_batches(r.train_set, order[first * bs:used], bs, r.cfg.train.seed, epoch, r.cfg,
                                         device))
        progs = [p if p is not None else EpochProgress() for p in progress]
        progress = [None] * len(runs)
        guard = InterruptGuard()
        with guard:
            _train_epoch(pack, runs, recipe, optimizer, loaders, device, epoch, first, total, progs, read_every,
                         checkpoint_every, guard, commit)
        for i, r in enumerate(runs):
            log = EpochLog(epoch=epoch, terms=progs[i].means(), images=progs[i].images, seconds=progs[i].seconds)
            r.result.epochs.append(log)
        pack.sync()
        improved = []
        for r in runs:
            val_metrics = r.validate(r.model) if r.validate is not None else {}
            r.result.val.append({"epoch": epoch, **val_metrics})
            improved.append(update_best(r.best, epoch, val_metrics))
            if r.on_epoch is not None:
                r.on_epoch(r.result.epochs[-1], val_metrics)
        commit(epoch, total, True, [None] * len(runs))
        for r, criteria in zip(runs, improved):
            for criterion in criteria:
                save_checkpoint(best_state(r.model.state_dict(), epoch, r.cfg), r.run_dir, f"best_{criterion}.pt")
    for r in runs:
        r.result.best = r.best
        r.result.seconds = time.perf_counter() - t0
    return [r.result for r in runs]


def _train_epoch(pack: Pack, runs: Sequence[PackedRun], recipe: Recipe, optimizer: torch.optim.Optimizer,
                 loaders: list, device: torch.device, epoch: int, first: int, total: int,
                 progs: list[EpochProgress], read_every: int, checkpoint_every: int, guard: InterruptGuard,
                 commit: Callable[[int, int, bool, Sequence[EpochProgress | None]], None]) -> None:
    """The packed steps of one epoch (or its remainder), from step ``first``; ``progs`` updated in place."""
    cfg = runs[0].cfg
    pack.train()
    generators = [torch.Generator() for _ in runs]
    pending: list[tuple[int, list[dict[str, torch.Tensor]], int]] = []
    start, before = time.perf_counter(), [p.seconds for p in progs]

    def flush() -> list[EpochProgress]:
        for step, terms, n in pending:
            for i, run_terms in enumerate(terms):
                for name, value in run_terms.items():
                    v = float(value)
                    if not math.isfinite(v):
                        raise DivergedError(f"{runs[i].run_dir.name}: loss term '{name}' is {v} at epoch {epoch + 1}, "
                                            f"step {step + 1}: the run diverged (try a lower train.lr)")
                    progs[i].sums[name] = progs[i].sums.get(name, 0.0) + v
                progs[i].images += n
        pending.clear()
        for i, p in enumerate(progs):
            p.seconds = before[i] + time.perf_counter() - start
        return progs

    for k, batches in enumerate(zip(*loaders)):
        step = first + k
        for r, g in zip(runs, generators):
            seed_step(r.cfg.train.seed, epoch, step, g, device)
        images = torch.stack([b["image"] for b in batches]).to(device, non_blocking=True)  # (N, B, 3, H, W)
        labels = torch.stack([b["label"] for b in batches]).to(device, non_blocking=True)  # (N, B)
        with _autocast(device, cfg.train.amp):
            results = packed_loss(pack, images, labels, recipe, cfg.variant, teachers=[r.teachers for r in runs],
                                  generators=generators, loss_cfg=cfg.loss,
                                  epsilons=[b.get("epsilon") for b in batches])
        optimizer.zero_grad(set_to_none=True)
        sum(res.total for res in results).backward()  # run i's gradient: its own loss's
        optimizer.step()
        pending.append((step, [{n: v.detach() for n, v in res.terms.items()} for res in results],
                        int(images.shape[1])))
        for p in progs:
            p.steps += 1
        crash_point("after-step")
        done = step + 1
        if done % read_every == 0 or done == total:
            flush()
            for r, p in zip(runs, progs):
                if r.on_step is not None:
                    r.on_step(done, total, p.means())
        due = checkpoint_every > 0 and done % checkpoint_every == 0 and done < total
        if guard.pending or due:
            commit(epoch, done, False, flush())
        if guard.pending:
            raise TrainingInterrupted(f"at epoch {epoch + 1}/{cfg.train.epochs}, step {done}/{total} "
                                      "(position saved)", how=guard.how)
    flush()
    if guard.pending:  # Ctrl-C after the last step's check: the trained, unvalidated epoch
        commit(epoch, total, False, progs)
        raise TrainingInterrupted(f"at epoch {epoch + 1}/{cfg.train.epochs}, step {total}/{total} (position saved)",
                                  how=guard.how)
