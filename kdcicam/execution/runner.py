"""The lifecycle of one run: record it, claim it, train (or resume) it, evaluate it, store the results.

Used by ``kdcicam train`` (one run) and ``kdcicam ablate`` (every run of a plan). A finished run
is never trained twice; an interrupted one resumes from its last complete checkpoint; a failed
one is recorded with its reason and can be retried by rerunning the command.

Several processes may work on one store at once (two ``ablate`` commands, a cluster of jobs):
exactly one claims a run (:meth:`Store.claim_run`); the others wait for it (:func:`acquire`). While
a process holds a run a background thread beats its heartbeat. A run left ``running`` by a process
that is gone (its pid is dead on this host, or its heartbeat is older than ``stale_after_s``) is
taken over and resumed; a holder that finds its run taken stops (:class:`RunTakenOver`).

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
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcicam.core.config import PROTOCOLS, RunConfig, from_dict, to_dict
from kdcicam.core.errors import KdcicamError, RunError, StoreError
from kdcicam.core.identity import config_hash
from kdcicam.core.runtime import crash_point, provenance, set_seed
from kdcicam.data.base import DatasetIndex
from kdcicam.data.cache import FrameStore, train_view
from kdcicam.data.dataset import WSOLDataset
from kdcicam.data.transforms import train_transform
from kdcicam.evaluation.evaluator import EvalResult, evaluate
from kdcicam.evaluation.selection import (
    AUDIT_SPLIT,
    DECISION_METRIC,
    DECISION_SPLIT,
    TEACHER_DECISION_METRIC,
    candidate_resizes,
    candidate_thetas,
    count_test_decisions,
    resize_policies,
    select_on_of,
    threshold_policies,
)
from kdcicam.execution.holders import STALE_AFTER_S, holder_gone
from kdcicam.execution.plan import PlannedRun
from kdcicam.model.factory import build_model
from kdcicam.store import RunInfo, Store, sqlite_file, utc_now
from kdcicam.training.checkpoint import load_checkpoint
from kdcicam.training.distributed import DistContext, broadcast_object
from kdcicam.training.recipes import TeacherSet, recipe_for
from kdcicam.training.trainer import CRITERIA, EpochLog, Position, fit

SELECTIONS_EVALUATED = ("last", *CRITERIA)  # every run is evaluated at each kept checkpoint
VAL_PROTOCOL = "paper"  # checkpoint selection reads validation metrics under this protocol
GALLERY_SIZE = 8
TAKEOVER_MARGIN_S = 2.0  # a dead holder's last heartbeat must be this old before its run is taken (acquire)


@dataclass
class RunContext:
    """What every run of an invocation shares."""

    store: Store
    artifacts_root: Path
    device: torch.device
    eval_batch_size: int = 64
    wait_poll_s: float = 5.0  # how often to look at a run another process is training
    on_event: Callable[[str, dict[str, Any]], None] | None = None  # progress / messages for the CLI
    heartbeat_s: float = 15.0  # heartbeat period while a run is held (0 = none; in-memory stores: none)
    stale_after_s: float = STALE_AFTER_S  # a running run whose heartbeat is older than this is taken over
    checkpoint_every: int = 0  # also checkpoint every this many training steps (0 = at epoch ends)
    dist: DistContext | None = None  # this process's place in a multi-process run (None: one process)
    _frames: FrameStore | None = field(default=None, repr=False)

    def frames_for(self, cfg: RunConfig) -> FrameStore | None:
        """The decoded frames every run of this invocation shares (None: ``train.data_cache`` is off)."""
        if not cfg.train.data_cache:
            return None
        if self._frames is None:
            self._frames = FrameStore(self.device, workers=max(1, torch.get_num_threads()))
        return self._frames

    @property
    def is_main(self) -> bool:
        """Whether this process owns the store and the files (rank 0, or the only process)."""
        return self.dist is None or self.dist.is_main


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
        dataset_fingerprint=index.fingerprint, artifacts_dir=str((ctx.artifacts_root / run.run_id).resolve()))
    for table, cell, _seed, _point in run.labels:
        ctx.store.add_labels(run.run_id, table, cell)
    return info


def checkpoint_for(artifacts_dir: Path, selection: str) -> Path:
    """The checkpoint file a selection criterion names (``last`` or ``best_<criterion>``)."""
    return Path(artifacts_dir) / ("last.pt" if selection == "last" else f"best_{selection}.pt")


def run_model_source(store: Store, run_id: str, selection: str) -> tuple[dict[str, Any], str]:
    """A finished run's (config dict, checkpoint path) at the checkpoint ``selection`` picks.

    Raises:
        RunError: the run is not finished.
    """
    info = store.get_run(run_id)
    if info.status != "finished":
        raise RunError(f"run {run_id[:12]} is {info.status}, not finished: it cannot be used yet")
    return dict(info.config), str(checkpoint_for(Path(info.artifacts_dir), selection))


def model_from_source(config: dict[str, Any], checkpoint: str, device: torch.device) -> torch.nn.Module:
    """The network a (config dict, checkpoint path) pair describes, in eval mode."""
    cfg = from_dict(RunConfig, config, where=f"{checkpoint} config")
    # the checkpoint holds every weight: never re-read the ImageNet file for a trained run
    model = build_model(dataclasses.replace(cfg.model, weights=None), cfg.variant, input_size=cfg.data.crop)
    state = load_checkpoint(Path(checkpoint), map_location=device)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def load_run_model(store: Store, run_id: str, selection: str, device: torch.device) -> torch.nn.Module:
    """A finished run's network at the checkpoint ``selection`` picks, in eval mode."""
    return model_from_source(*run_model_source(store, run_id, selection), device)


def teacher_sources(cfg: RunConfig, store: Store) -> dict[str, tuple[dict[str, Any], str]]:
    """The teachers a run distils from: ``"cls"`` / ``"loc"`` -> (config dict, checkpoint path).

    Plain data, so rank 0 can send it to ranks that never open the store.
    """
    t = cfg.teachers
    out = {}
    if t.cls_run:
        out["cls"] = run_model_source(store, t.cls_run, t.cls_select)
    if t.loc_run:
        out["loc"] = run_model_source(store, t.loc_run, t.loc_select)
    return out


def build_teachers(sources: dict[str, tuple[dict[str, Any], str]], device: torch.device) -> TeacherSet | None:
    """The teacher networks of :func:`teacher_sources` (None: the run distils from none)."""
    if not sources:
        return None
    return TeacherSet(cls_model=model_from_source(*sources["cls"], device) if "cls" in sources else None,
                      loc_model=model_from_source(*sources["loc"], device) if "loc" in sources else None)


def load_teachers(cfg: RunConfig, store: Store, device: torch.device) -> TeacherSet | None:
    return build_teachers(teacher_sources(cfg, store), device)


class RunTakenOver(RunError):
    """Another process took this run over (it judged this one dead): stop, leaving the run to it."""


class DistributedAbort(RunError):
    """Rank 0 stopped a multi-process run after training had started (recorded in the store first);
    the other ranks are inside collectives and are ended by torchrun when this process exits."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a run; the run is recorded as interrupted, and the message says how to resume."""


def _store_is_shared(store: Store) -> bool:
    """Whether other processes can see the store (anything but an in-memory SQLite database)."""
    return not store.url.startswith("sqlite") or sqlite_file(store.url) is not None


class _Heartbeat:
    """Beats a held run's heartbeat from a daemon thread every ``period_s``, through training and
    evaluation alike, and notices when another process has taken the run (:meth:`check`)."""

    def __init__(self, store: Store, run_id: str, period_s: float) -> None:
        self._store = store
        self._run_id = run_id
        self._period = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def __enter__(self) -> _Heartbeat:
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
            except Exception:  # noqa: BLE001 - a busy or unreachable store: beat again next period
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


def _take_over(info: RunInfo, ctx: RunContext, attempt: dict[str, str | None]) -> bool:
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
        True once this process holds the run; False when another process finished it.
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
                    _emit(ctx, "warning", run_id=run_id, message=f"run {run_id[:12]}: the process training it "
                          f"stopped ({info.message or info.status}); this process resumes it")
                return True
            continue  # another process claimed it first: look again
        gone = _holder_gone(info, ctx)
        if gone is None:
            if not waited:
                _emit(ctx, "waiting", run_id=run_id, holder=f"process {info.pid} on {info.host}")
                waited = True
            time.sleep(ctx.wait_poll_s)
        elif _take_over(info, ctx, attempt):
            _emit(ctx, "warning", run_id=run_id,
                  message=f"run {run_id[:12]} was left running by {gone}: resuming it from its last checkpoint")
            return True


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
    prov = provenance(ctx.device)
    attempt = {k: prov[k] for k in ("git_commit", "device", "torch_version")}
    # where this attempt trains and writes checkpoints (absolute: students read teachers' files from any
    # working directory; a run resumed under another --artifacts folder records the new one)
    attempt["artifacts_dir"] = str((ctx.artifacts_root / run.run_id).resolve())
    period = ctx.heartbeat_s if _store_is_shared(ctx.store) else 0.0
    told = [False]  # whether the other ranks were told to train (they are inside collectives from then on)
    while True:
        if not acquire(run.run_id, ctx, **attempt):
            _tell(ctx, None)
            return RunOutcome(run.run_id, "finished", reused=True)
        try:
            with _Heartbeat(ctx.store, run.run_id, period) as beat:
                metrics, train_s, eval_s = _train_and_evaluate(run, index, ctx, beat, told)
                beat.check()
        except RunTakenOver as exc:
            _emit(ctx, "warning", run_id=run.run_id, message=str(exc))
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
    recipe = recipe_for(cfg.loss, cfg.variant, teachers=present or ("cls", "loc"))
    d = cfg.data
    transform = train_transform(d.train_resize, d.crop, d.randaugment, d.randaugment_ops, d.randaugment_magnitude)
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
                        beat: _Heartbeat, told: list[bool] | None = None) -> tuple[dict, float, float]:
    cfg = run.cfg
    device = ctx.device
    run_dir = ctx.artifacts_root / run.run_id
    sources = teacher_sources(cfg, ctx.store)
    if ctx.dist is not None:
        _tell(ctx, sources)  # from here on every rank trains
        if told is not None:
            told[0] = True
    model, teachers, recipe, train_set = _training_inputs(run, index, ctx, sources)

    epoch_evals = _EpochEvals(cfg, index, device, ctx.eval_batch_size, ctx.frames_for(cfg))

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
        _emit(ctx, "epoch", run_id=run.run_id, epoch=log.epoch + 1, epochs=cfg.train.epochs, terms=log.terms,
              val=val, images_per_s=log.images_per_s)

    def on_step(step: int, steps: int, terms: dict[str, float]) -> None:
        beat.check()
        _emit(ctx, "step", run_id=run.run_id, step=step, steps=steps, terms=terms)

    def on_resume(position: Position | None, warnings: list[str]) -> None:
        for warning in warnings:
            _emit(ctx, "warning", run_id=run.run_id, message=warning)
        if position is not None:
            _emit(ctx, "resumed", run_id=run.run_id, message=f"run {run.run_id[:12]}: resuming "
                  f"{position.describe(cfg.train.epochs)}", epoch=position.epoch, step=position.step)

    t0 = time.perf_counter()
    result = fit(model, recipe, cfg, train_set, run_dir, device, validate=validate, teachers=teachers,
                 on_epoch=on_epoch, on_step=on_step, on_resume=on_resume,
                 checkpoint_every=cfg.train.checkpoint_every or ctx.checkpoint_every, dist=ctx.dist)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    metrics = evaluate_checkpoints(model, run.run_id, cfg, index, ctx, result.best, beat=beat)
    return metrics, train_s, time.perf_counter() - t1


def evaluate_checkpoints(model: torch.nn.Module, run_id: str, cfg: RunConfig, index: DatasetIndex,
                         ctx: RunContext, best: dict[str, dict[str, float]],
                         beat: _Heartbeat | None = None) -> dict[str, float]:
    """Evaluate the test split at every kept checkpoint (each distinct epoch once), both protocols,
    under every threshold policy (:mod:`kdcicam.evaluation.selection`).

    Each image's heatmap is computed once per split and read at every candidate θ: the fixed θ,
    the θ chosen on the validation split (when there is one) and the oracle θ of the test split.
    Every group of final metrics also holds ``test_decisions`` (epochs whose test numbers picked a
    checkpoint) and, for a distilled run, ``teacher_test_decisions``. Every write replaces what
    an interrupted evaluation may have stored before.

    Returns:
        The paper protocol's fixed-θ metrics of the last epoch (the run's headline).
    """
    run_dir = ctx.artifacts_root / run_id
    last_state = load_checkpoint(run_dir / "last.pt", map_location=ctx.device)
    by_epoch: dict[int, list[str]] = {int(last_state["epoch"]): ["last"]}
    for criterion, b in best.items():
        by_epoch.setdefault(int(b["epoch"]), []).append(criterion)
    thetas = candidate_thetas(cfg)
    decisions = _test_decisions(ctx.store, run_id, cfg)
    headline: dict[str, float] = {}
    for epoch, selections in sorted(by_epoch.items()):
        source = "last" if "last" in selections else selections[0]
        state = last_state if source == "last" else load_checkpoint(checkpoint_for(run_dir, source), ctx.device)
        model.load_state_dict(state["model"])
        model.eval()
        for protocol in PROTOCOLS:
            gallery_ids = _gallery_ids(index) if protocol == "paper" else None
            res = evaluate(model, index.test, cfg, protocol, ctx.device, batch_size=ctx.eval_batch_size,
                           gallery_ids=gallery_ids, thetas=thetas, frames=ctx.frames_for(cfg))
            val = (evaluate(model, index.val, cfg, protocol, ctx.device, batch_size=ctx.eval_batch_size,
                            thetas=thetas, frames=ctx.frames_for(cfg)) if index.val else None)
            policies = threshold_policies(res, val, cfg)
            for selection in selections:
                _store_policies(ctx, run_id, protocol, selection, policies, decisions)
                if res.gallery is not None:
                    np.savez_compressed(run_dir / f"gallery_{selection}.npz", **res.gallery)
            crash_point("after-eval-write")
            if beat is not None:
                beat.check()
            if protocol == "paper" and "last" in selections:
                headline = dict(res.metrics)
                if cfg.eval.resize_grid:
                    audit = _resize_audit(model, cfg, index, ctx, own=(val, res))
                    ctx.store.set_final_metrics(run_id, protocol, "last", "fixed", "test", audit)
            _emit(ctx, "evaluated", run_id=run_id, protocol=protocol, selections=selections, metrics=res.metrics)
    return headline


def _resize_audit(model: torch.nn.Module, cfg: RunConfig, index: DatasetIndex, ctx: RunContext,
                  own: tuple[EvalResult | None, EvalResult]) -> dict[str, float]:
    """The paper protocol at every candidate test resize S, on val and test (audit numbers only).

    ``own``: the (val, test) results at the run's own S, already computed (their metrics are at the fixed θ).
    """
    val: dict[int, EvalResult] = {cfg.eval.test_resize: own[0]} if own[0] is not None else {}
    test: dict[int, EvalResult] = {cfg.eval.test_resize: own[1]}
    frames = ctx.frames_for(cfg)
    for size in candidate_resizes(cfg):
        if size == cfg.eval.test_resize:
            continue
        at = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, test_resize=size))
        test[size] = evaluate(model, index.test, at, "paper", ctx.device, batch_size=ctx.eval_batch_size, frames=frames)
        if index.val:
            val[size] = evaluate(model, index.val, at, "paper", ctx.device, batch_size=ctx.eval_batch_size,
                                 frames=frames)
    return resize_policies(val, test, cfg)


def _store_policies(ctx: RunContext, run_id: str, protocol: str, selection: str,
                    policies: dict[str, EvalResult], decisions: dict[str, float]) -> None:
    """Store one checkpoint's test metrics and records under each threshold policy."""
    for policy, result in policies.items():
        ctx.store.set_final_metrics(run_id, protocol, selection, policy, "test", {**result.metrics, **decisions})
        ctx.store.add_image_records(run_id, protocol, selection, "test", result.records, threshold_policy=policy)


def _test_decisions(store: Store, run_id: str, cfg: RunConfig) -> dict[str, float]:
    """How many times the test split decided something for this run (its epochs) and for its teachers."""
    out = {DECISION_METRIC: float(count_test_decisions(store.epoch_metrics(run_id)))}
    teacher_runs = [r for r in (cfg.teachers.cls_run, cfg.teachers.loc_run) if r]
    if teacher_runs:
        out[TEACHER_DECISION_METRIC] = float(sum(_decisions_of(store, r) for r in teacher_runs))
    return out


def _decisions_of(store: Store, run_id: str) -> int:
    """A finished run's test decisions, its teachers' included (from its final metrics or, for a run
    stored before they were counted, from its config: every epoch when it selected on test)."""
    finals = store.final_metrics([run_id])
    total = 0
    for name in (DECISION_METRIC, TEACHER_DECISION_METRIC):
        values = finals.loc[finals["name"] == name, "value"]
        if len(values):
            total += int(values.max())
        elif name == DECISION_METRIC:
            info = store.get_run(run_id)
            if select_on_of(info.config) == "test":
                total += int(info.config.get("train", {}).get("epochs", 0))
    return total


class _EpochEvals:
    """The per-epoch evaluations behind fit's ``validate`` callback, and how they are stored.

    ``eval.select_on = "val"``: the validation split's numbers pick checkpoints (epoch split
    "val"); with ``eval.audit_epochs`` the test split is also scored and stored as "test_audit",
    which no decision reads. ``"test"`` (the authors' behaviour): the test split's numbers pick
    checkpoints (epoch split "test_decision", each epoch one test decision); the validation split is still
    scored and stored as "val", unused. All under the paper protocol at the fixed θ.
    """

    def __init__(self, cfg: RunConfig, index: DatasetIndex, device: torch.device, batch_size: int,
                 frames: FrameStore | None = None) -> None:
        self.cfg = cfg
        self.index = index
        self.device = device
        self.batch_size = batch_size
        self.frames = frames
        self.extra: dict[str, dict[str, float]] = {}  # split -> metrics of the epoch just scored

    def _score(self, model: torch.nn.Module, samples: list) -> dict[str, float]:
        if not samples:
            return {}
        return evaluate(model, samples, self.cfg, VAL_PROTOCOL, self.device, batch_size=self.batch_size,
                        frames=self.frames).metrics

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """Score the epoch's model; returns the numbers that pick checkpoints (fit's ``validate``)."""
        self.extra = {}
        if self.cfg.eval.select_on == "test":
            self.extra["val"] = self._score(model, self.index.val)
            return self._score(model, self.index.test)
        if self.cfg.eval.audit_epochs:
            self.extra[AUDIT_SPLIT] = self._score(model, self.index.test)
        return self._score(model, self.index.val)

    def store(self, store: Store, run_id: str, epoch: int, decision: dict[str, float]) -> None:
        """Record the epoch's numbers: the deciding split's, then the others'."""
        if decision:
            store.add_epoch_metrics(run_id, epoch, DECISION_SPLIT[self.cfg.eval.select_on], decision)
        for split, metrics in self.extra.items():
            if metrics:
                store.add_epoch_metrics(run_id, epoch, split, metrics)
        self.extra = {}


def _gallery_ids(index: DatasetIndex) -> list[str]:
    """A fixed, class-spread sample of test image ids (the same for every run on this dataset)."""
    by_class: dict[int, str] = {}
    for s in sorted(index.test, key=lambda s: s.image_id):
        by_class.setdefault(s.label, s.image_id)
    return sorted(by_class.values())[:GALLERY_SIZE]


def _held_elsewhere(run_id: str, ctx: RunContext) -> bool:
    """Whether another live process is training the run right now."""
    try:
        info = ctx.store.get_run(run_id)
    except StoreError:  # not registered yet
        return False
    return info.status == "running" and _holder_gone(info, ctx) is None


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
            elif not wait and _held_elsewhere(run.run_id, ctx):
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
