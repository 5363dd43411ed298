"""PxAP: pixel average precision of CAMs against object masks (wsolevaluation's ``MaskEvaluator``).

Masks come in wsolevaluation's OpenImages layout: per image one or more instance masks and one
ignore mask (PNG, any size), read as grayscale and resized to the CAM's frame with OpenCV's
``INTER_NEAREST`` rule (source index = floor(destination index x source size / destination size)).
A pixel is object where any instance mask is > 0.5, ignored where the ignore mask is > 0.5 and no
instance is, background elsewhere (``get_mask``). Ignored pixels count nowhere.

Per image the CAM values (in [0, 1]) of object and background pixels are histogrammed on the bins
[t_0, t_1), ..., [t_{n-1}, 1), [1, 2), [2, 3] of the CAM thresholds t_i = i / n. Over the split,
for each bin edge e taken from the top: TP(e) = object pixels with CAM >= e, FP(e) = background
pixels with CAM >= e, precision = TP / (TP + FP), recall = TP / #object. PxAP = 100 x the sum of
precision x (recall step) over the edges where TP + FP > 0 (wsolevaluation's ``compute``).
Beside it: the PR curve and the best pixel F1 = 2TP / (2TP + FP + FN) and pixel IoU =
TP / (TP + FP + FN) over the thresholds, each with its threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kdcicam.data.object_masks import read_gray_nearest
from kdcicam.evaluation.boxes import check_heatmap


def read_mask(path: Path | str, size: tuple[int, int]) -> np.ndarray:
    """A grayscale mask resized (nearest, OpenCV's rule) to ``size`` = (W, H); > 0.5 is set.

    Raises:
        DataError: missing or unreadable file.
    """
    return read_gray_nearest(path, size, "mask file") > 0  # (H, W); an 8-bit gray > 0.5 is >= 1


def gt_mask(mask_root: Path | str, instances: tuple[str, ...], ignore: str, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8: 1 object, 255 ignored, 0 background (wsolevaluation's ``get_mask``).

    Args:
        mask_root: folder the mask paths are relative to.
        instances: instance mask paths (at least one).
        ignore: ignore mask path ("" = none).
        size: (W, H) of the CAM's frame.
    """
    root = Path(mask_root)
    obj = np.zeros((size[1], size[0]), dtype=bool)
    for rel in instances:
        obj |= read_mask(root / rel, size)
    ignored = read_mask(root / ignore, size) & ~obj if ignore else np.zeros_like(obj)
    return obj.astype(np.uint8) + 255 * ignored.astype(np.uint8)


class PxAPMeter:
    """Pixel histograms of object and background CAM values; ``compute()`` gives PxAP and friends.

    Args:
        cam_thresholds: number n of thresholds i / n (wsolevaluation's ``cam_curve_interval`` = 1/n).
    """

    def __init__(self, cam_thresholds: int = 100) -> None:
        if cam_thresholds < 1:
            raise ValueError(f"cam_thresholds must be >= 1, got {cam_thresholds}")
        self.thresholds = np.arange(0, 1, 1 / cam_thresholds)[:cam_thresholds]  # (n,)
        self.edges = np.append(self.thresholds, [1.0, 2.0, 3.0])  # (n + 3,) bin edges
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self.true_hist = np.zeros(len(self.edges) - 1, dtype=np.int64)  # object pixels per bin
        self.false_hist = np.zeros(len(self.edges) - 1, dtype=np.int64)  # background pixels per bin
        self.count = 0

    def update(self, cam: Any, mask: np.ndarray) -> None:
        """Count one image: CAM (H, W) in [0, 1], mask (H, W) uint8 from :func:`gt_mask`."""
        scores = check_heatmap(cam, unit_range=True).astype(np.float64)
        if scores.shape != mask.shape:
            raise ValueError(f"CAM shape {scores.shape} differs from the mask's {mask.shape}")
        self.true_hist += np.histogram(scores[mask == 1], bins=self.edges)[0]
        self.false_hist += np.histogram(scores[mask == 0], bins=self.edges)[0]
        self.count += 1

    def compute(self) -> dict[str, Any]:
        """PxAP (%), the PR curve and the best-threshold pixel F1 / IoU (%).

        Raises:
            ValueError: no object pixel, or no pixel predicted at any threshold.
        """
        tp = self.true_hist[::-1].cumsum().astype(np.float64)  # (B,) at edges 2, 1, t_{n-1}, ..., t_0
        fp = self.false_hist[::-1].cumsum().astype(np.float64)
        fn = tp[-1] - tp
        if tp[-1] <= 0:
            raise ValueError("PxAP: no object pixel in the evaluated masks")
        if ((tp + fp) <= 0).all():
            raise ValueError("PxAP: no pixel is predicted at any threshold")
        predicted = (tp + fp) > 0
        precision = np.where(predicted, tp / np.where(predicted, tp + fp, 1), 0.0)
        recall = tp / tp[-1]
        pxap = float((precision[1:] * np.diff(recall))[predicted[1:]].sum()) * 100
        at = self.edges[:-1][::-1]  # (B,) the threshold of each point: 2, 1, t_{n-1}, ..., t_0
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        iou = tp / np.maximum(tp + fp + fn, 1)
        curve = slice(1, None)  # edge 2 selects nothing in a [0, 1] map
        i_f1 = int(np.argmax(f1[curve])) + 1
        i_iou = int(np.argmax(iou[curve])) + 1
        return {"pxap": pxap, "images": self.count,
                "pixel_f1": float(f1[i_f1]) * 100, "pixel_f1_threshold": float(at[i_f1]),
                "pixel_iou": float(iou[i_iou]) * 100, "pixel_iou_threshold": float(at[i_iou]),
                "pr_curve": {"thresholds": at[curve].tolist(), "precision": precision[curve].tolist(),
                             "recall": recall[curve].tolist()}}
