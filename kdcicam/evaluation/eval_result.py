"""What an evaluation returns: metrics, per-image records, the MaxBoxAccV2 curve, the gallery arrays and the
threshold sweep, and the record flag behind each metric."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FLAG_METRICS = {
    "top1_cls": "correct_top1_cls",
    "top5_cls": "correct_top5_cls",
    "top1_loc": "correct_top1_loc",
    "top5_loc": "correct_top5_loc",
    "gt_known_loc": "correct_gt_known",
}


LOC_FLAGS = ("correct_top1_loc", "correct_top5_loc", "correct_gt_known")  # the flags θ changes


@dataclass
class ThresholdSweep:
    """Every image's box at every θ of a grid, from the heatmaps of one forward pass.

    Rows follow the result's records; the IoUs obey the protocol's conventions and degenerate
    rules (an empty box scores 0), exactly as the record at that θ would.
    """

    thetas: np.ndarray  # (T,) ascending
    boxes: np.ndarray  # (N, T, 4) the predicted box, in the frame of the records' "box"
    ious: np.ndarray  # (N, T) its best IoU with the GT boxes (Top-1 / Top-5 Loc)
    gt_known_ious: np.ndarray  # (N, T) the IoU GT-known Loc counts (standard: the GT class's own map)


@dataclass
class EvalResult:
    """One evaluation of one model under one protocol."""

    protocol: str
    metrics: dict[str, float]  # fractions in [0, 1] (+ "theta", the threshold used)
    records: list[dict[str, Any]]  # one per image
    curve: dict[str, list[float]] = field(default_factory=dict)  # MaxBoxAccV2 accuracy per threshold
    gallery: dict[str, np.ndarray] | None = None  # arrays for the report's CAM gallery
    sweep: ThresholdSweep | None = None  # the box at every θ of a grid (``evaluate(..., thetas=...)``)
