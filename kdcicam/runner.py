"""The lifecycle of one run: record it, claim it, train (or resume) it, evaluate it, store the results.

Used by ``kdcicam train`` (one run) and ``kdcicam ablate`` (every run of a plan). A finished run
is never trained twice; an interrupted one resumes from its last complete checkpoint; a failed
one is recorded with its reason and can be retried by rerunning the command.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcicam.checkpoint import load_checkpoint
from kdcicam.config import PROTOCOLS, RunConfig, config_hash, from_dict, to_dict
from kdcicam.data.base import DatasetIndex
from kdcicam.data.dataset import WSOLDataset
from kdcicam.data.transforms import train_transform
from kdcicam.errors import KdcicamError, RunError
from kdcicam.evaluate import evaluate
from kdcicam.model.factory import build_model
from kdcicam.plan import PlannedRun
from kdcicam.recipes import TeacherSet, recipe_for
from kdcicam.runtime import provenance
from kdcicam.store import Store
from kdcicam.train import CRITERIA, EpochLog, fit

SELECTIONS_EVALUATED = ("last", *CRITERIA)  # every run is evaluated at each kept checkpoint
VAL_PROTOCOL = "paper"  # checkpoint selection reads validation metrics under this protocol
GALLERY_SIZE = 8


@dataclass
class RunContext:
    """What every run of an invocation shares."""

    store: Store
    artifacts_root: Path
    device: torch.device
    eval_batch_size: int = 64
    wait_poll_s: float = 5.0  # how often to look at a run another process is training
    on_event: Callable[[str, dict[str, Any]], None] | None = None  # progress / messages for the CLI


@dataclass
class RunOutcome:
    run_id: str
    status: str  # finished | failed | skipped
    reused: bool = False
    message: str = ""
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


def _emit(ctx: RunContext, kind: str, **data: Any) -> None:
    if ctx.on_event is not None:
        ctx.on_event(kind, data)


def register_run(run: PlannedRun, index: DatasetIndex, ctx: RunContext) -> Any:
    """Create (or find) the run's row, record its labels; returns its RunInfo."""
    cfg = run.cfg
    ctx.store.ensure_dataset(index.fingerprint, index.name, str(index.root), dict(index.meta))
    info = ctx.store.get_or_create_run(
        run.run_id, config_hash=config_hash(cfg), role=cfg.loss.role, profile=cfg.profile,
        variant=cfg.variant, dataset=index.name, seed=cfg.train.seed, config=to_dict(cfg),
        dataset_fingerprint=index.fingerprint, artifacts_dir=str(ctx.artifacts_root / run.run_id))
    for table, cell, _seed, _point in run.labels:
        ctx.store.add_labels(run.run_id, table, cell)
    return info


def checkpoint_for(artifacts_dir: Path, selection: str) -> Path:
    """The checkpoint file a selection criterion names (``last`` or ``best_<criterion>``)."""
    return Path(artifacts_dir) / ("last.pt" if selection == "last" else f"best_{selection}.pt")


def load_run_model(store: Store, run_id: str, selection: str, device: torch.device) -> torch.nn.Module:
    """A finished run's network at the checkpoint ``selection`` picks, in eval mode."""
    info = store.get_run(run_id)
    if info.status != "finished":
        raise RunError(f"run {run_id[:12]} is {info.status}, not finished: it cannot be used yet")
    cfg = from_dict(RunConfig, info.config, where=f"run {run_id[:12]} config")
    # the checkpoint holds every weight: never re-read the ImageNet file for a trained run
    model = build_model(dataclasses.replace(cfg.model, weights=None), cfg.variant, input_size=cfg.data.crop)
    state = load_checkpoint(checkpoint_for(Path(info.artifacts_dir), selection), map_location=device)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def load_teachers(cfg: RunConfig, store: Store, device: torch.device) -> TeacherSet | None:
    t = cfg.teachers
    if t.cls_run is None and t.loc_run is None:
        return None
    return TeacherSet(
        cls_model=load_run_model(store, t.cls_run, t.cls_select, device) if t.cls_run else None,
        loc_model=load_run_model(store, t.loc_run, t.loc_select, device) if t.loc_run else None)


def _wait_for_other(run_id: str, ctx: RunContext) -> str:
    """Another live process holds the run: wait until it finishes, fails, or goes stale."""
    host, pid = socket.gethostname(), os.getpid()
    _emit(ctx, "waiting", run_id=run_id)
    while True:
        info = ctx.store.get_run(run_id)
        if info.status in ("finished",):
            return info.status
        if ctx.store.claim_run(run_id, pid, host):
            return "claimed"
        time.sleep(ctx.wait_poll_s)


def execute(run: PlannedRun, index: DatasetIndex, ctx: RunContext) -> RunOutcome:
    """Run one planned run to the end (or reuse it): train/resume, evaluate, store."""
    start = time.perf_counter()
    info = register_run(run, index, ctx)
    if info.status == "finished":
        return RunOutcome(run.run_id, "finished", reused=True)
    host, pid = socket.gethostname(), os.getpid()
    prov = provenance(ctx.device)
    if not ctx.store.claim_run(run.run_id, pid, host, git_commit=prov["git_commit"], device=prov["device"],
                               torch_version=prov["torch_version"]):
        if _wait_for_other(run.run_id, ctx) == "finished":
            return RunOutcome(run.run_id, "finished", reused=True)
    try:
        metrics, train_s, eval_s = _train_and_evaluate(run, index, ctx)
    except KdcicamError as exc:
        ctx.store.fail_run(run.run_id, str(exc))
        return RunOutcome(run.run_id, "failed", message=str(exc), seconds=time.perf_counter() - start)
    except KeyboardInterrupt:
        ctx.store.fail_run(run.run_id, "interrupted (Ctrl-C); rerun the same command to resume from the last checkpoint")
        raise
    except Exception as exc:  # a bug: record it so the run is not left 'running', then re-raise
        ctx.store.fail_run(run.run_id, f"internal error: {type(exc).__name__}: {exc}")
        raise
    ctx.store.finish_run(run.run_id, train_seconds=train_s, eval_seconds=eval_s)
    return RunOutcome(run.run_id, "finished", seconds=time.perf_counter() - start, metrics=metrics)


def _train_and_evaluate(run: PlannedRun, index: DatasetIndex, ctx: RunContext) -> tuple[dict, float, float]:
    cfg = run.cfg
    device = ctx.device
    run_dir = ctx.artifacts_root / run.run_id
    model = build_model(cfg.model, cfg.variant, input_size=cfg.data.crop).to(device)
    teachers = load_teachers(cfg, ctx.store, device)
    present = tuple(name for name, m in (("cls", teachers and teachers.cls_model),
                                         ("loc", teachers and teachers.loc_model)) if m is not None)
    recipe = recipe_for(cfg.loss, cfg.variant, teachers=present or ("cls", "loc"))
    d = cfg.data
    train_set = WSOLDataset(index.train, train_transform(
        d.train_resize, d.crop, d.randaugment, d.randaugment_ops, d.randaugment_magnitude))

    def validate(m: torch.nn.Module) -> dict[str, float]:
        if not index.val:
            return {}
        result = evaluate(m, index.val, cfg, VAL_PROTOCOL, device, batch_size=ctx.eval_batch_size)
        m.train()
        return result.metrics

    def on_epoch(log: EpochLog, val: dict[str, float]) -> None:
        ctx.store.add_epoch_metrics(run.run_id, log.epoch, "train", {**log.terms, "images_per_s": log.images_per_s})
        if val:
            ctx.store.add_epoch_metrics(run.run_id, log.epoch, "val", val)
        ctx.store.heartbeat(run.run_id)
        _emit(ctx, "epoch", run_id=run.run_id, epoch=log.epoch + 1, epochs=cfg.train.epochs, terms=log.terms,
              val=val, images_per_s=log.images_per_s)

    def on_step(step: int, steps: int, terms: dict[str, float]) -> None:
        ctx.store.heartbeat(run.run_id)
        _emit(ctx, "step", run_id=run.run_id, step=step, steps=steps, terms=terms)

    t0 = time.perf_counter()
    result = fit(model, recipe, cfg, train_set, run_dir, device, validate=validate, teachers=teachers,
                 on_epoch=on_epoch, on_step=on_step)
    for warning in result.warnings:
        _emit(ctx, "warning", run_id=run.run_id, message=warning)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    metrics = evaluate_checkpoints(model, run.run_id, cfg, index, ctx, result.best)
    return metrics, train_s, time.perf_counter() - t1


def evaluate_checkpoints(model: torch.nn.Module, run_id: str, cfg: RunConfig, index: DatasetIndex,
                         ctx: RunContext, best: dict[str, dict[str, float]]) -> dict[str, float]:
    """Evaluate the test split at every kept checkpoint (each distinct epoch once), both protocols."""
    run_dir = ctx.artifacts_root / run_id
    last_state = load_checkpoint(run_dir / "last.pt", map_location=ctx.device)
    by_epoch: dict[int, list[str]] = {int(last_state["epoch"]): ["last"]}
    for criterion, b in best.items():
        by_epoch.setdefault(int(b["epoch"]), []).append(criterion)
    headline: dict[str, float] = {}
    for epoch, selections in sorted(by_epoch.items()):
        source = "last" if "last" in selections else selections[0]
        state = last_state if source == "last" else load_checkpoint(checkpoint_for(run_dir, source), ctx.device)
        model.load_state_dict(state["model"])
        model.eval()
        for protocol in PROTOCOLS:
            gallery_ids = _gallery_ids(index) if protocol == "paper" else None
            res = evaluate(model, index.test, cfg, protocol, ctx.device, batch_size=ctx.eval_batch_size,
                           gallery_ids=gallery_ids)
            for selection in selections:
                ctx.store.set_final_metrics(run_id, protocol, selection, "fixed", "test", res.metrics)
                ctx.store.add_image_records(run_id, protocol, selection, "test", res.records)
                if res.gallery is not None:
                    np.savez_compressed(run_dir / f"gallery_{selection}.npz", **res.gallery)
            if protocol == "paper" and "last" in selections:
                headline = dict(res.metrics)
            _emit(ctx, "evaluated", run_id=run_id, protocol=protocol, selections=selections, metrics=res.metrics)
    return headline


def _gallery_ids(index: DatasetIndex) -> list[str]:
    """A fixed, class-spread sample of test image ids (the same for every run on this dataset)."""
    by_class: dict[int, str] = {}
    for s in sorted(index.test, key=lambda s: s.image_id):
        by_class.setdefault(s.label, s.image_id)
    return sorted(by_class.values())[:GALLERY_SIZE]


def execute_plan(runs: list[PlannedRun], ctx: RunContext,
                 on_run_start: Callable[[PlannedRun], None] | None = None,
                 on_run_end: Callable[[PlannedRun, RunOutcome], None] | None = None) -> list[RunOutcome]:
    """Run every planned run in order; a failed run's dependants are skipped, the rest go on."""
    outcomes: dict[str, RunOutcome] = {}
    for run in runs:
        failed_deps = [d for d in run.deps if outcomes.get(d) is not None and outcomes[d].status != "finished"]
        if failed_deps:
            outcome = RunOutcome(run.run_id, "skipped",
                                 message=f"teacher run {failed_deps[0][:12]} did not finish")
        else:
            if on_run_start is not None:
                on_run_start(run)
            outcome = execute(run, run.dataset, ctx)
        outcomes[run.run_id] = outcome
        if on_run_end is not None:
            on_run_end(run, outcome)
    return [outcomes[r.run_id] for r in runs]
