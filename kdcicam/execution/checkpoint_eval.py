"""Evaluating a trained run: the test split at every kept checkpoint, both protocols, every threshold
policy, the test-resize audit, and the test-split decision counts stored beside each number."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from kdcicam.core.config import PROTOCOLS, RunConfig
from kdcicam.core.runtime import crash_point
from kdcicam.data.base import DatasetIndex
from kdcicam.evaluation.context_swap import with_context_swap
from kdcicam.evaluation.eval_result import EvalResult
from kdcicam.evaluation.evaluator import evaluate
from kdcicam.evaluation.selection import (
    DECISION_METRIC,
    TEACHER_DECISION_METRIC,
    candidate_resizes,
    candidate_thetas,
    count_test_decisions,
    resize_policies,
    select_on_of,
    threshold_policies,
)
from kdcicam.execution.context import RunContext, emit
from kdcicam.execution.lease import Heartbeat
from kdcicam.execution.run_models import checkpoint_for
from kdcicam.store import Store
from kdcicam.training.checkpoint import load_checkpoint

GALLERY_SIZE = 8


def evaluate_checkpoints(model: torch.nn.Module, run_id: str, cfg: RunConfig, index: DatasetIndex,
                         ctx: RunContext, best: dict[str, dict[str, float]],
                         beat: Heartbeat | None = None) -> dict[str, float]:
    """Evaluate the test split at every kept checkpoint (each distinct epoch once), both protocols,
    under every threshold policy (:mod:`kdcicam.evaluation.selection`).

    Each image's heatmap is computed once per split and read at every candidate θ: the fixed θ,
    the θ chosen on the validation split (when there is one) and the oracle θ of the test split.
    Every group of final metrics also holds ``test_decisions`` (epochs whose test numbers picked a
    checkpoint) and, for a distilled run, ``teacher_test_decisions``. Every write replaces what
    an interrupted evaluation may have stored before. On the synthetic benchmark the last checkpoint's
    standard-protocol groups (and those of selections sharing its epoch) also hold the context-swapped
    copy's Top-1 (:mod:`kdcicam.evaluation.context_swap`): one extra classification of the test split per run.

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
            if "last" in selections:  # one extra pass per run: the context-swapped copy (synthetic, standard)
                res = with_context_swap(res, model, index.test, cfg, ctx.device, batch_size=ctx.eval_batch_size,
                                        frames=ctx.frames_for(cfg))
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
            emit(ctx, "evaluated", run_id=run_id, protocol=protocol, selections=selections, metrics=res.metrics)
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


def _gallery_ids(index: DatasetIndex) -> list[str]:
    """A fixed, class-spread sample of test image ids (the same for every run on this dataset)."""
    by_class: dict[int, str] = {}
    for s in sorted(index.test, key=lambda s: s.image_id):
        by_class.setdefault(s.label, s.image_id)
    return sorted(by_class.values())[:GALLERY_SIZE]
