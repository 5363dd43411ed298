"""Selection policies: every choice that touches the test set, named and stored with each number.

Three choices move WSOL numbers by points and are rarely stated: the CAM threshold θ, the
checkpoint (epoch) and which split picked them. The authors' code picked θ, the test resize and
the teacher epochs on the test set (reference-notes.md, "Evaluation protocol").

Threshold policies (``final_metrics.threshold_policy``), all from one forward pass per image
(:func:`kdcicam.evaluation.evaluator.evaluate` with ``thetas``):

- ``fixed``: the run's θ (``eval.theta``: the paper's per dataset and backbone);
- ``val``: the θ of the candidates (:func:`candidate_thetas`) that maximises ``eval.theta_metric``
  on the validation split, then applied to the test split;
- ``oracle``: the θ that maximises it on the test split itself: an upper bound, never a headline.

Ties go to the smallest θ. The candidates always include the fixed θ, so the oracle is never
below ``fixed`` on the metric it maximises.

Test-resize policies (paper protocol only, audit only, ``eval.resize_grid``): the last
checkpoint is also evaluated at every resize S of the grid (+ the run's S); the S that maximises
``eval.theta_metric`` at the fixed θ on the validation split, and the one that maximises it on the
test split itself (an upper bound), are stored as final metrics ``resize_val_S`` /
``resize_oracle_S`` with the test metrics they give (``<metric>@resize_val``, ``<metric>@resize_oracle``).

Checkpoint policy (``eval.select_on``): the per-epoch metrics that pick the ``best_*`` checkpoints
come from the validation split (``"val"``, default) or from the test split (``"test"``, the
authors' behaviour; each epoch is then one look at the test set for a decision, counted in the
final metric ``test_decisions``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from kdcicam.core.config import RunConfig

if TYPE_CHECKING:  # the evaluator (torch) is imported where θ policies run: reading stored numbers needs none
    from kdcicam.evaluation.eval_result import EvalResult

# epoch-metric split of the per-epoch numbers that pick checkpoints, by eval.select_on
DECISION_SPLIT = {"val": "val", "test": "test_decision"}
AUDIT_SPLIT = "test_audit"  # per-epoch test numbers recorded for the report only (eval.audit_epochs)
DECISION_METRIC = "test_decisions"  # final metric: epochs whose test numbers picked a checkpoint
TEACHER_DECISION_METRIC = "teacher_test_decisions"  # ... summed over the run's teachers (and theirs)


def candidate_thetas(cfg: RunConfig) -> tuple[float, ...]:
    """The θ the val and oracle policies choose from: ``eval.theta_grid`` plus the fixed θ, ascending."""
    return tuple(sorted({float(t) for t in cfg.eval.theta_grid} | {float(cfg.eval.theta)}))


def choose_theta(result: EvalResult, metric: str, iou_threshold: float) -> float:
    """The θ of ``result.sweep`` that maximises ``metric`` on the result's split (ties: the smallest θ).

    Args:
        result: an evaluation made with ``thetas`` (see :func:`kdcicam.evaluation.evaluator.evaluate`).
        metric: ``"gt_known_loc"``, ``"top1_loc"`` or ``"top5_loc"``.
        iou_threshold: the IoU a box must reach.

    Returns:
        The chosen θ.
    """
    from kdcicam.evaluation.theta_sweep import sweep_metrics

    values = sweep_metrics(result, iou_threshold)[metric]  # (T,)
    if np.isnan(values).all():
        raise ValueError("cannot choose θ on an empty split")
    return float(result.sweep.thetas[int(np.nanargmax(values))])  # first maximum = smallest θ


def threshold_policies(test: EvalResult, val: EvalResult | None, cfg: RunConfig) -> dict[str, EvalResult]:
    """The test split's result under each threshold policy.

    Args:
        test: the test split, evaluated with ``thetas=candidate_thetas(cfg)``.
        val: the validation split evaluated the same way, or None when there is none (then no
            ``"val"`` policy: nothing honest to choose θ on).
        cfg: the run's config (θ, the metric to maximise, the IoU threshold).

    Returns:
        policy -> result: ``"fixed"`` (``test`` itself, its θ in ``metrics["theta"]``), ``"val"``
        and ``"oracle"`` (re-read at their θ, no second forward pass).
    """
    from kdcicam.evaluation.theta_sweep import at_theta

    iou = cfg.eval.iou_threshold
    out = {"fixed": test}
    if val is not None and val.records:
        out["val"] = at_theta(test, choose_theta(val, cfg.eval.theta_metric, iou), iou)
    if test.records:
        out["oracle"] = at_theta(test, choose_theta(test, cfg.eval.theta_metric, iou), iou)
    return out


def count_test_decisions(epochs: pd.DataFrame) -> int:
    """How many epochs' test-split numbers were used to pick checkpoints (rows of split "test_decision").

    Args:
        epochs: :meth:`Store.epoch_metrics` of one run.
    """
    if epochs.empty:
        return 0
    return int(epochs.loc[epochs["split"] == DECISION_SPLIT["test"], "epoch"].nunique())


def select_on_of(config: Mapping) -> str:
    """A stored run config's ``eval.select_on`` (runs stored before it existed selected on val)."""
    return str(config.get("eval", {}).get("select_on", "val"))


@dataclass(frozen=True)
class EpochAudit:
    """What test-split selection of a run's checkpoint would have printed (per-epoch test numbers)."""

    run_id: str
    epochs: int  # epochs with a test number
    best: dict[str, float]  # metric -> max over epochs (fractions)
    best_epoch: dict[str, int]  # metric -> the first epoch reaching it (0-based)


def epoch_audit(run_id: str, epochs: pd.DataFrame, metrics: tuple[str, ...]) -> EpochAudit | None:
    """The best test number over a run's epochs, from its audit rows (or its test decision rows).

    Args:
        run_id: the run.
        epochs: :meth:`Store.epoch_metrics` of that run.
        metrics: which metrics.

    Returns:
        The audit, or None when the run recorded no per-epoch test number.
    """
    if epochs.empty:
        return None
    rows = epochs[epochs["split"].isin([AUDIT_SPLIT, DECISION_SPLIT["test"]]) & epochs["name"].isin(metrics)]
    rows = rows.dropna(subset=["value"]).drop_duplicates(["epoch", "name"])
    if rows.empty:
        return None
    best: dict[str, float] = {}
    best_epoch: dict[str, int] = {}
    for name, group in rows.groupby("name"):
        group = group.sort_values("epoch")
        at = int(np.argmax(group["value"].to_numpy()))
        best[str(name)] = float(group["value"].iloc[at])
        best_epoch[str(name)] = int(group["epoch"].iloc[at])
    return EpochAudit(run_id=run_id, epochs=int(rows["epoch"].nunique()), best=best, best_epoch=best_epoch)


def candidate_resizes(cfg: RunConfig) -> tuple[int, ...]:
    """The test resizes S the resize audit chooses from: ``eval.resize_grid`` plus the run's S."""
    return tuple(sorted({int(r) for r in cfg.eval.resize_grid} | {int(cfg.eval.test_resize)}))


def resize_policies(val: Mapping[int, EvalResult], test: Mapping[int, EvalResult], cfg: RunConfig,
                    metrics: tuple[str, ...] = ("top1_loc", "gt_known_loc")) -> dict[str, float]:
    """Final metrics of the resize audit: S chosen on validation and on test, and what each gives on test.

    Args:
        val: S -> the validation split at the fixed θ (may be empty: then no ``resize_val`` numbers).
        test: S -> the test split at the fixed θ.
        cfg: the run's config (``eval.theta_metric`` is maximised).
        metrics: the test metrics reported at each chosen S.

    Returns:
        ``resize_val_S``, ``<metric>@resize_val``, ``resize_oracle_S``, ``<metric>@resize_oracle``
        (ties go to the smallest S; an S whose metric is NaN is never chosen; none when every S's is).
    """
    key = cfg.eval.theta_metric
    out: dict[str, float] = {}
    for name, source in (("resize_val", val), ("resize_oracle", test)):
        scored = [s for s in source if not math.isnan(float(source[s].metrics[key]))]
        if not scored:
            continue
        best = min(scored, key=lambda s: (-source[s].metrics[key], s))
        out[f"{name}_S"] = float(best)
        for m in metrics:
            out[f"{m}@{name}"] = float(test[best].metrics[m])
    return out
