"""The box-accuracy meter behind MaxBoxAccV2 and MaxBoxAcc: ``update()``, ``compute()``, ``reset()``.

Modelled on wsolevaluation's ``BoxEvaluator`` (Choe et al., CVPR 2020): between calls the meter
keeps only counts, so memory stays flat over a dataset; ``compute()`` returns plain numbers and
never prints. Accuracies are percentages in [0, 100]. With several GT boxes per image a box is
correct if its IoU with ANY of them reaches the IoU level.

Two box rules (:data:`BOX_RULES`):

- ``"wsolevaluation"`` (the default, the ``standard`` protocol): wsolevaluation's own rule,
  number for number (:mod:`kdcicam.evaluation.wsol_rule`): uint8 quantisation, every OpenCV
  contour's box (holes included) for MaxBoxAccV2, the largest-area contour for MaxBoxAcc, integer
  boxes and the "+1" IoU. GT boxes must be given as wsolevaluation resizes them
  (:func:`kdcicam.evaluation.wsol_rule.resize_gt_boxes`).
- ``"continuous"``: this harness's cleaner reading: foreground cam > t, the boxes of the
  8-connected components (the one with the most pixels for MaxBoxAcc), continuous boxes and IoU
  (:mod:`kdcicam.evaluation.boxes`). Its numbers are not wsolevaluation's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kdcicam.evaluation.boxes import check_boxes, check_heatmap, iou_matrix, to_numpy
from kdcicam.evaluation.sweep import SweepWorkspace, sweep_best_iou, sweep_components, sweep_reference
from kdcicam.evaluation.wsol_rule import (
    best_iou_all_contours,
    best_iou_largest_contour,
    contour_boxes,
    integer_cutoffs,
    quantize,
)

BOX_RULES = ("wsolevaluation", "continuous")


def cam_threshold_grid(n: int) -> np.ndarray:
    """wsolevaluation's CAM thresholds ``np.arange(0, 1, 1/n)``: 0, 1/n, ..., (n-1)/n.

    Args:
        n: number of thresholds (100 = ``cam_curve_interval`` 0.01, their training default).
    """
    if n < 1:
        raise ValueError(f"the number of CAM thresholds must be >= 1, got {n}")
    return np.arange(0, 1, 1 / n)[:n]


class MaxBoxAccV2Meter:
    """MaxBoxAccV2 (all contours' boxes compete) or MaxBoxAcc (the largest contour's box).

    Per image: the CAM of the GT class in [0, 1]; at every CAM threshold t the best IoU of the
    candidate boxes with any GT box; per (IoU level, threshold) the number of images reaching the
    level. ``compute()``: per IoU level the box accuracy at its best threshold (and that
    threshold); MaxBoxAccV2 is their mean over the levels (30/50/70).

    Args:
        cam_thresholds: number n of thresholds (0, 1/n, ..., (n-1)/n) or an ascending sequence
            in [0, 1).
        iou_thresholds: IoU levels, each in (0, 1].
        multi_contour: all contours' boxes compete (MaxBoxAccV2) or only the largest (MaxBoxAcc).
        box_rule: ``"wsolevaluation"`` or ``"continuous"`` (see the module docstring).
        fast: sweep all thresholds in one pass rather than labelling each; identical results.
            (The wsolevaluation rule's largest contour is always found threshold by threshold.)
    """

    def __init__(self, cam_thresholds: int | Sequence[float] = 100,
                 iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7), multi_contour: bool = True,
                 box_rule: str = "wsolevaluation", fast: bool = True) -> None:
        if isinstance(cam_thresholds, (int, np.integer)):
            grid = cam_threshold_grid(int(cam_thresholds))
        else:
            grid = np.asarray(cam_thresholds, dtype=np.float64).ravel()
        if grid.size == 0 or (np.diff(grid) <= 0).any() or grid[0] < 0 or grid[-1] >= 1:
            raise ValueError(f"cam_thresholds must be ascending in [0, 1), got {grid.tolist()}")
        levels = tuple(float(t) for t in iou_thresholds)
        if not levels or any(not 0.0 < t <= 1.0 for t in levels):
            raise ValueError(f"iou_thresholds must be in (0, 1], got {levels}")
        if box_rule not in BOX_RULES:
            raise ValueError(f"box_rule must be one of {', '.join(BOX_RULES)}; got {box_rule!r}")
        self.thresholds = grid  # (T,)
        self.iou_thresholds = levels  # (L,)
        self.multi_contour = multi_contour
        self.box_rule = box_rule
        self.fast = fast
        self._workspaces = (SweepWorkspace(), SweepWorkspace())
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self.correct = np.zeros((len(self.iou_thresholds), len(self.thresholds)), dtype=np.int64)
        self.count = 0

    def best_ious(self, cam: Any, gt_boxes: Any) -> np.ndarray:
        """(T,) best IoU of the candidate boxes with any GT box at every CAM threshold.

        Args:
            cam: (H, W) CAM of the GT class in [0, 1] (numpy or torch).
            gt_boxes: (G, 4) or (4,) GT boxes in the CAM's pixel frame, G >= 1.
        """
        gt = check_boxes(gt_boxes, "gt_boxes")  # (G, 4)
        if self.box_rule == "continuous":
            values = check_heatmap(cam, unit_range=True)
            sweep = (sweep_components(values, self.thresholds, 8, self._workspaces[0]) if self.fast
                     else sweep_reference(values, self.thresholds, 8))
            return sweep_best_iou(sweep, gt, self.multi_contour)
        q = quantize(cam)  # (H, W) uint8 values
        cutoffs = integer_cutoffs(q, self.thresholds)  # (T,)
        if not self.multi_contour:
            return best_iou_largest_contour(q, cutoffs, gt)
        if self.fast:
            return best_iou_all_contours(q, cutoffs, gt, self._workspaces, cam=to_numpy(cam))
        return np.array([iou_matrix(contour_boxes(q, c, False), gt, pixel_inclusive=True).max()
                         for c in cutoffs.tolist()])

    def update(self, cam: Any, gt_boxes: Any) -> np.ndarray:
        """Count one image; returns its (T,) best IoU at every CAM threshold (not kept)."""
        best = self.best_ious(cam, gt_boxes)  # (T,)
        self.correct += best[None, :] >= np.array(self.iou_thresholds)[:, None]  # (L, T)
        self.count += 1
        return best

    def compute(self) -> dict[str, Any]:
        """MaxBoxAccV2 and its parts.

        Returns:
            ``maxboxacc_v2`` (mean over IoU levels of the best-threshold accuracy, %),
            ``maxboxacc_iou{30,50,70}`` and ``best_threshold_iou{...}`` per level (the first
            threshold reaching the max), ``images``, ``box_rule``, and the full curve:
            ``thresholds`` (T,), ``iou_thresholds`` (L,), ``curve`` (L lists of T accuracies, %).
        """
        if self.count == 0:
            raise ValueError("MaxBoxAccV2Meter.compute() before any update")
        curve = self.correct * 100.0 / self.count  # (L, T)
        best_at = curve.argmax(axis=1)  # (L,) first max
        best = curve[np.arange(len(best_at)), best_at]  # (L,)
        out: dict[str, Any] = {"maxboxacc_v2": float(best.mean()), "images": self.count,
                               "box_rule": self.box_rule}
        for level, acc, at in zip(self.iou_thresholds, best, best_at):
            tag = f"iou{round(level * 100)}"
            out[f"maxboxacc_{tag}"] = float(acc)
            out[f"best_threshold_{tag}"] = float(self.thresholds[at])
        out["thresholds"] = self.thresholds.tolist()
        out["iou_thresholds"] = list(self.iou_thresholds)
        out["curve"] = curve.tolist()
        return out
