"""The threshold sweep: every image's box at every θ of a grid from one forward pass's heatmaps
(:func:`boxes_at_thresholds`, the map's components labelled once for all θ; :func:`sweep_image`), the
metrics per θ (:func:`sweep_metrics`) and the result read at any θ of the grid (:func:`at_theta`),
without running the model again. The threshold *policies* (fixed / chosen on validation / oracle) that
pick a θ from these live in :mod:`kdcicam.evaluation.selection`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from kdcicam.data.box_geometry import TestFrame
from kdcicam.evaluation.boxes import box_from_heatmap, check_heatmap, get_policy
from kdcicam.evaluation.eval_result import FLAG_METRICS, LOC_FLAGS, EvalResult, ThresholdSweep
from kdcicam.evaluation.protocols import PROTOCOL_PIXEL_INCLUSIVE, best_ious, to_original_boxes
from kdcicam.evaluation.sweep import sweep_components
from kdcicam.evaluation.wsol_rule import best_pixel_ious, largest_contour_boxes


def boxes_at_thresholds(h: Any, thetas: Sequence[float], policy: str = "standard") -> np.ndarray:
    """``box_from_heatmap(h, θ, policy)`` for every θ, with the map's components labelled once.

    Each θ's foreground is ``h > c(θ)`` for one cutoff c: θ itself (``"standard"``), or under the
    authors' rule (``"reference"``: keep h > θ·max, then > the kept map's mean m) max(θ·max, m)
    whenever m >= 0 (a θ where m < 0 is labelled on its own). Cutoffs are computed in the map's
    dtype exactly as :func:`kdcicam.evaluation.boxes.foreground_mask` compares, so every box is identical to
    ``box_from_heatmap``'s; the nested foregrounds are then labelled in one pass
    (:func:`kdcicam.evaluation.boxes.sweep_components`) and each θ's box picked by the policy's rule
    (most pixels / largest bounding box, ties to the raster-first component).

    Args:
        h: (H, W) heatmap (in [0, 1] for ``"standard"``).
        thetas: (T,) thresholds θ, any order (Python floats, as ``EvalConfig.theta``).
        policy: ``"standard"`` or ``"reference"``.

    Returns:
        (T, 4) float64 boxes, row t for ``thetas[t]``; the fallback (0, 0, 0, 0) where nothing is foreground.
    """
    pol = get_policy(policy)
    a = check_heatmap(h, unit_range=pol.mask == "absolute")  # (H, W), its own float dtype
    like = a.dtype.type  # a Python-float θ is compared in the map's dtype (NumPy's weak scalars)
    out = np.zeros((len(thetas), 4))  # (T, 4)
    cuts: list[float] = []
    rows: list[int] = []
    for t, theta in enumerate(thetas):
        theta = float(theta)
        if pol.mask == "absolute":
            cut = like(theta)
        else:
            keep = like(theta) * a.max()  # θ·max, as foreground_mask computes it
            m = np.where(a > keep, a, 0.0).mean()  # the kept map's mean, zeros included
            if m < 0:  # pixels below θ·max would be foreground too: no single cutoff
                out[t] = box_from_heatmap(a, theta, pol)
                continue
            cut = max(keep, m)  # kept > m  <=>  h > θ·max and h > m
        cuts.append(float(cut))  # exact: a value of the map's dtype
        rows.append(t)
    if not rows:
        return out
    order = np.argsort(np.asarray(cuts), kind="stable")  # (T',) sweep levels ascend
    sweep = sweep_components(a.astype(np.float64), np.asarray(cuts)[order], pol.connectivity)
    if len(sweep.levels):
        b = sweep.boxes  # (K, 4)
        key = sweep.pixels if pol.select == "pixels" else (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # (K,)
        pick = np.lexsort((np.arange(len(key)), -key, sweep.levels))  # level, largest, raster-first
        first = np.ones(len(pick), dtype=bool)
        first[1:] = sweep.levels[pick][1:] != sweep.levels[pick][:-1]
        chosen = pick[first]  # (L,) one component per level that has any
        rows_arr = np.asarray(rows)[order]  # (T',) sweep level -> row of ``thetas``
        out[rows_arr[sweep.levels[chosen]]] = b[chosen]
    return out


def sweep_metrics(result: EvalResult, iou_threshold: float) -> dict[str, np.ndarray]:
    """Top-1 Loc, Top-5 Loc and GT-known Loc at every θ of ``result.sweep``.

    Args:
        result: an :func:`kdcicam.evaluation.evaluator.evaluate` result made with ``thetas``.
        iou_threshold: the IoU a box must reach (``EvalConfig.iou_threshold``).

    Returns:
        metric name -> (T,) fractions, in the order of ``result.sweep.thetas``.
    """
    sweep = _need_sweep(result)
    if not result.records:
        return {m: np.full(len(sweep.thetas), np.nan) for m in ("top1_loc", "top5_loc", "gt_known_loc")}
    top1 = np.array([r["correct_top1_cls"] for r in result.records], dtype=bool)[:, None]  # (N, 1)
    top5 = np.array([r["correct_top5_cls"] for r in result.records], dtype=bool)[:, None]  # (N, 1)
    hit = sweep.ious >= iou_threshold  # (N, T)
    return {"top1_loc": (top1 & hit).mean(axis=0), "top5_loc": (top5 & hit).mean(axis=0),
            "gt_known_loc": (sweep.gt_known_ious >= iou_threshold).mean(axis=0)}


def at_theta(result: EvalResult, theta: float, iou_threshold: float) -> EvalResult:
    """The result as it would read had ``evaluate`` run at ``theta`` (a θ of ``result.sweep``).

    Classification, MaxBoxAccV2 and its curve do not depend on θ and are kept; each record's box,
    IoU and localization flags are those of θ; ``metrics["theta"]`` is θ. No gallery.

    Raises:
        ValueError: the result has no sweep, or θ is not one of its thresholds.
    """
    sweep = _need_sweep(result)
    at = np.flatnonzero(np.isclose(sweep.thetas, theta, rtol=0.0, atol=1e-12))
    if not len(at):
        raise ValueError(f"θ = {theta} is not in the sweep's grid {sweep.thetas.tolist()}")
    t = int(at[0])
    records = []
    for i, r in enumerate(result.records):
        hit = bool(sweep.ious[i, t] >= iou_threshold)
        records.append({**r, "box": [round(float(v), 2) for v in sweep.boxes[i, t]], "iou": float(sweep.ious[i, t]),
                        "correct_top1_loc": r["correct_top1_cls"] and hit,
                        "correct_top5_loc": r["correct_top5_cls"] and hit,
                        "correct_gt_known": bool(sweep.gt_known_ious[i, t] >= iou_threshold)})
    metrics = dict(result.metrics)
    for name, flag in FLAG_METRICS.items():
        if flag in LOC_FLAGS:
            metrics[name] = float(np.mean([r[flag] for r in records])) if records else float("nan")
    metrics["theta"] = float(sweep.thetas[t])
    return dataclasses.replace(result, metrics=metrics, records=records, gallery=None)


def _need_sweep(result: EvalResult) -> ThresholdSweep:
    if result.sweep is None:
        raise ValueError("this result has no threshold sweep: evaluate it with thetas=...")
    return result.sweep


def sweep_image(swept: dict[str, list[np.ndarray]], heat: np.ndarray, gt_map: np.ndarray, grid: list[float],
                policy: str, gt: np.ndarray, frame: TestFrame | None, wsol_rule: bool = False) -> None:
    """Append one image's boxes and IoUs at every θ of ``grid`` (the record's rules, vectorised over θ).

    ``frame`` None: the paper protocol (crop frame, every GT box, "+1" IoU); else the standard one,
    with ``wsol_rule`` wsolevaluation's boxes scored against ``gt`` in the C x C frame.
    """
    if frame is not None and wsol_rule:
        boxes = largest_contour_boxes(heat, grid)  # (T, 4) C x C frame
        swept["boxes"].append(to_original_boxes(boxes, frame))
        swept["ious"].append(best_pixel_ious(boxes, gt))
        swept["gt_known_ious"].append(best_pixel_ious(largest_contour_boxes(gt_map, grid), gt))
        return
    crop_boxes = boxes_at_thresholds(heat, grid, policy)  # (T, 4) in the C x C frame
    if frame is None:  # paper: crop frame, every GT box, "+1" IoU, GT-known = the same box
        ious = best_ious(crop_boxes, gt, PROTOCOL_PIXEL_INCLUSIVE["paper"])  # (T,)
        swept["boxes"].append(crop_boxes)
        swept["ious"].append(ious)
        swept["gt_known_ious"].append(ious)
        return
    pixel_inclusive = PROTOCOL_PIXEL_INCLUSIVE["standard"]
    boxes = to_original_boxes(crop_boxes, frame)  # (T, 4) original pixels
    known = to_original_boxes(boxes_at_thresholds(gt_map, grid, "standard"), frame)  # (T, 4) GT class's map
    swept["boxes"].append(boxes)
    swept["ious"].append(best_ious(boxes, gt, pixel_inclusive))
    swept["gt_known_ious"].append(best_ious(known, gt, pixel_inclusive))
