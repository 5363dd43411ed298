"""Classification and localization meters: ``update()``, ``compute()``, ``reset()``.

Modelled on wsolevaluation's evaluators (Choe et al., CVPR 2020): between calls a meter keeps
only counts (the localization meter may also keep one small record per image, for paired tests),
so memory stays flat over a dataset; ``compute()`` returns plain numbers and never prints.
Accuracies are percentages in [0, 100].

Box conventions (continuous xyxy, strict ``>`` masks, the empty-mask fallback, the
``pixel_inclusive`` "+1" IoU) are those of :mod:`kdcicam.evaluation.boxes`. With several GT boxes per image a
box is correct if its IoU with ANY of them reaches the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdcicam.evaluation.boxes import (
    SweepWorkspace,
    check_boxes,
    check_heatmap,
    iou_matrix,
    sweep_best_iou,
    sweep_components,
    sweep_reference,
    to_numpy,
)


def _percent(count: float, total: int) -> float:
    return 100.0 * float(count) / total


# --------------------------------------------------------------------------- classification

class TopKAccuracy:
    """Top-k classification accuracy from logits (``top1_cls``, ``top5_cls``, ...).

    The rank of the label is its position in a stable descending sort of the logits: ties go
    to the lower class index. With fewer classes than k every label is within the top k.
    """

    def __init__(self, ks: Sequence[int] = (1, 5)) -> None:
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
        self.ks = tuple(int(k) for k in ks)
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self.correct = np.zeros(len(self.ks), dtype=np.int64)  # (K,) images with rank < k
        self.count = 0

    def update(self, logits: Any, labels: Any) -> None:
        """Count one batch.

        Args:
            logits: (B, n) class scores (numpy or torch).
            labels: (B,) integer labels in [0, n).
        """
        s = to_numpy(logits).astype(np.float64)  # (B, n)
        y = to_numpy(labels).astype(np.int64).ravel()  # (B,)
        if s.ndim != 2 or s.shape[0] != y.shape[0]:
            raise ValueError(f"expected logits (B, n) and labels (B,), got {s.shape} and {y.shape}")
        if not np.isfinite(s).all():
            raise ValueError("logits must be finite (NaN or inf found)")
        if ((y < 0) | (y >= s.shape[1])).any():
            raise ValueError(f"labels must be in [0, {s.shape[1]}), got {y.tolist()}")
        own = s[np.arange(len(y)), y][:, None]  # (B, 1) the label's score
        lower = np.arange(s.shape[1])[None, :] < y[:, None]  # (B, n) classes before the label
        rank = (s > own).sum(axis=1) + ((s == own) & lower).sum(axis=1)  # (B,) 0 = top-1
        self.correct += (rank[None, :] < np.array(self.ks)[:, None]).sum(axis=1)
        self.count += len(y)

    def compute(self) -> dict[str, float]:
        """``{"top1_cls": %, "top5_cls": %, ..., "images": n}``."""
        if self.count == 0:
            raise ValueError("TopKAccuracy.compute() before any update")
        out: dict[str, float] = {f"top{k}_cls": _percent(c, self.count)
                                 for k, c in zip(self.ks, self.correct)}
        out["images"] = self.count
        return out


# --------------------------------------------------------------------------- localization

@dataclass(frozen=True)
class LocRecord:
    """What one image scored (for paired comparisons of two runs image by image)."""

    label: int
    top1_cls: bool  # the top-1 class is the label
    top5_cls: bool  # the label is among the top 5
    top1_loc: bool  # top1_cls and IoU(top-1 box) >= threshold
    top5_loc: bool  # top5_cls and IoU(the label's box) >= threshold
    gt_known_loc: bool  # IoU(GT-known box) >= threshold, whatever the class
    iou_top1: float  # best IoU over the GT boxes of the top-1 class's box
    iou_gt_known: float  # best IoU over the GT boxes of the GT-known box
    image_id: str | None = None


class LocalizationMeter:
    """Top-1 Loc, Top-5 Loc and GT-known Loc (plus Top-1/5 Cls) over images.

    Per image it takes the predicted top-k classes, the label, the predicted box(es), the GT
    boxes and the GT-known box:

    - one class-independent box (the authors' protocol: the combinational heatmap's box serves
      every class) or one box per top-k class (``pred_boxes`` (k, 4), row j for ``topk[j]``);
    - the GT-known box is whatever the protocol says it is: the box of the GT class's map (the
      standard protocol) or the same predicted-ranking box (the paper protocol). When omitted
      with a class-independent box, that box is used.

    Top-1 Loc: top-1 class correct AND IoU >= threshold; Top-5 Loc: label in the top 5 AND the
    label's box (the same box if class-independent) has IoU >= threshold; GT-known Loc: the
    GT-known box has IoU >= threshold. IoU is the best over the GT boxes.
    """

    def __init__(self, iou_threshold: float = 0.5, pixel_inclusive: bool = False,
                 keep_records: bool = True) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.iou_threshold = float(iou_threshold)
        self.pixel_inclusive = pixel_inclusive
        self.keep_records = keep_records
        self.reset()

    _KEYS = ("top1_cls", "top5_cls", "top1_loc", "top5_loc", "gt_known_loc")

    def reset(self) -> None:
        """Forget every update."""
        self.counts = dict.fromkeys(self._KEYS, 0)
        self.count = 0
        self._records: list[LocRecord] = []

    @property
    def records(self) -> list[LocRecord]:
        """One :class:`LocRecord` per update, in order (empty if ``keep_records`` is False)."""
        return list(self._records)

    def update(self, topk: Sequence[int], label: int, pred_boxes: Any, gt_boxes: Any,
               gt_known_box: Any = None, image_id: str | None = None) -> LocRecord:
        """Score one image and return its record.

        Args:
            topk: predicted classes, best first (at least 1; the first 5 count for Top-5).
            label: the GT class.
            pred_boxes: (4,) class-independent box, or (len(topk), 4) one box per class.
            gt_boxes: (G, 4) or (4,) GT boxes in the same frame.
            gt_known_box: (4,) box for GT-known Loc; None = the class-independent box.
            image_id: kept in the record.

        Returns:
            The image's :class:`LocRecord`.
        """
        classes = [int(k) for k in topk]
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"topk must be non-empty distinct classes, got {classes}")
        raw = to_numpy(pred_boxes)
        boxes = check_boxes(raw, "pred_boxes")  # (1, 4) or (k, 4)
        per_class = raw.ndim == 2
        if per_class and len(boxes) != len(classes):
            raise ValueError(f"pred_boxes has {len(boxes)} rows for {len(classes)} topk classes")
        if gt_known_box is None:
            if per_class:
                raise ValueError("gt_known_box is required when pred_boxes holds one box per class")
            gt_known_box = boxes[0]
        gt = check_boxes(gt_boxes, "gt_boxes")  # (G, 4)
        ious = iou_matrix(boxes, gt, self.pixel_inclusive).max(axis=1)  # (k,) or (1,)
        iou_known = float(iou_matrix(gt_known_box, gt, self.pixel_inclusive).max())
        label = int(label)
        top5 = classes[:5]
        top1_cls = classes[0] == label
        top5_cls = label in top5
        iou_label = float(ious[top5.index(label) if per_class else 0]) if top5_cls else 0.0
        rec = LocRecord(
            label=label,
            top1_cls=top1_cls,
            top5_cls=top5_cls,
            top1_loc=top1_cls and float(ious[0]) >= self.iou_threshold,
            top5_loc=top5_cls and iou_label >= self.iou_threshold,
            gt_known_loc=iou_known >= self.iou_threshold,
            iou_top1=float(ious[0]),
            iou_gt_known=iou_known,
            image_id=image_id,
        )
        for key in self._KEYS:
            self.counts[key] += int(getattr(rec, key))
        self.count += 1
        if self.keep_records:
            self._records.append(rec)
        return rec

    def compute(self) -> dict[str, float]:
        """``{"top1_cls", "top5_cls", "top1_loc", "top5_loc", "gt_known_loc": %, "images": n}``."""
        if self.count == 0:
            raise ValueError("LocalizationMeter.compute() before any update")
        out: dict[str, float] = {k: _percent(v, self.count) for k, v in self.counts.items()}
        out["images"] = self.count
        return out


# --------------------------------------------------------------------------- MaxBoxAccV2

def cam_threshold_grid(n: int) -> np.ndarray:
    """wsolevaluation's CAM thresholds ``np.arange(0, 1, 1/n)``: 0, 1/n, ..., (n-1)/n.

    Args:
        n: number of thresholds (100 = ``cam_curve_interval`` 0.01, their training default).
    """
    if n < 1:
        raise ValueError(f"the number of CAM thresholds must be >= 1, got {n}")
    return np.arange(0, 1, 1 / n)[:n]


class MaxBoxAccV2Meter:
    """MaxBoxAccV2 (Choe et al., CVPR 2020; wsolevaluation's ``BoxEvaluator``).

    Per image: the CAM of the GT class, normalised per image to [0, 1]; for every CAM threshold
    t the boxes of its foreground (every connected component with ``multi_contour``, else the
    largest), the best IoU of any of them with any GT box; per (IoU level, threshold) the
    number of images reaching the level. ``compute()``: per IoU level, the box accuracy at the
    best threshold (and that threshold); MaxBoxAccV2 is their mean over the levels (30/50/70).

    Two ways to read a CAM:

    - default (this harness's convention): foreground = cam > t, continuous boxes and IoU, the
      same rule as :func:`kdcicam.evaluation.boxes.box_from_heatmap` (``"standard"``);
    - ``wsolevaluation=True`` reproduces that code's numbers: the map is quantised to uint8
      (``floor(255·cam)``), foreground = q > floor(t·max q), boxes (x0, y0, min(x1, W-1),
      min(y1, H-1)) scored with the "+1" IoU, an empty foreground gives box (0, 0, 0, 0); pass
      the GT boxes as wsolevaluation stores them (integer x0, y0, x1, y1 after resizing).

    Known differences from wsolevaluation: it takes OpenCV contours (``RETR_TREE``), so hole
    boundaries add boxes inside a component's box; without ``multi_contour`` it picks the
    contour of largest polygon area (``cv2.contourArea``, 0 for one-pixel-wide shapes), ties in
    OpenCV's contour order. Here boxes are the 8-connected components' boxes, the largest has
    the most pixels, ties go to the raster-first component.

    Args:
        cam_thresholds: number n of thresholds (0, 1/n, ..., (n-1)/n) or an ascending sequence
            in [0, 1).
        iou_thresholds: IoU levels, each in (0, 1].
        multi_contour: all components' boxes compete (MaxBoxAccV2) or only the largest.
        wsolevaluation: reproduce wsolevaluation's quantisation and box convention.
        connectivity: 8 (default, as OpenCV contours) or 4.
        fast: use :func:`kdcicam.evaluation.boxes.sweep_components` (one pass for all thresholds) rather
            than labelling at every threshold; the results are identical.
    """

    def __init__(self, cam_thresholds: int | Sequence[float] = 100,
                 iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7), multi_contour: bool = True,
                 wsolevaluation: bool = False, connectivity: int = 8, fast: bool = True) -> None:
        if isinstance(cam_thresholds, (int, np.integer)):
            grid = cam_threshold_grid(int(cam_thresholds))
        else:
            grid = np.asarray(cam_thresholds, dtype=np.float64).ravel()
        if grid.size == 0 or (np.diff(grid) <= 0).any() or grid[0] < 0 or grid[-1] >= 1:
            raise ValueError(f"cam_thresholds must be ascending in [0, 1), got {grid.tolist()}")
        levels = tuple(float(t) for t in iou_thresholds)
        if not levels or any(not 0.0 < t <= 1.0 for t in levels):
            raise ValueError(f"iou_thresholds must be in (0, 1], got {levels}")
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
        self.thresholds = grid  # (T,)
        self.iou_thresholds = levels  # (L,)
        self.multi_contour = multi_contour
        self.wsolevaluation = wsolevaluation
        self.connectivity = connectivity
        self.fast = fast
        self._workspace = SweepWorkspace()
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self.correct = np.zeros((len(self.iou_thresholds), len(self.thresholds)), dtype=np.int64)
        self.count = 0

    def values_and_cutoffs(self, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The map and per-threshold cutoffs such that ``values > cutoffs[i]`` is the foreground.

        Args:
            cam: (H, W) validated CAM in [0, 1].

        Returns:
            values (H, W) and cutoffs (T,), ascending.
        """
        if not self.wsolevaluation:
            return cam, self.thresholds  # cam > t
        scaled = cam.astype(np.float64) * 255  # (H, W); uint8(scaled) = floor(scaled)
        qmax = float(np.floor(scaled.max()))
        cut = np.floor(self.thresholds * qmax)  # OpenCV's integer threshold int(t · max q)
        # floor(x) > k  <=>  x >= k + 1  <=>  x > the float just below k + 1
        return scaled, np.nextafter(cut + 1.0, -np.inf)

    def update(self, cam: Any, gt_boxes: Any) -> np.ndarray:
        """Count one image.

        Args:
            cam: (H, W) CAM of the GT class normalised to [0, 1] (numpy or torch).
            gt_boxes: (G, 4) or (4,) GT boxes in the CAM's pixel frame.

        Returns:
            (T,) best IoU at every CAM threshold (not kept by the meter).
        """
        values, cutoffs = self.values_and_cutoffs(check_heatmap(cam, unit_range=True))
        if self.fast:
            sweep = sweep_components(values, cutoffs, self.connectivity, self._workspace)
        else:
            sweep = sweep_reference(values, cutoffs, self.connectivity)
        best = sweep_best_iou(sweep, gt_boxes, self.multi_contour, self.wsolevaluation)  # (T,)
        self.correct += best[None, :] >= np.array(self.iou_thresholds)[:, None]  # (L, T)
        self.count += 1
        return best

    def compute(self) -> dict[str, Any]:
        """MaxBoxAccV2 and its parts.

        Returns:
            ``maxboxacc_v2`` (mean over IoU levels of the best-threshold accuracy, %),
            ``maxboxacc_iou{30,50,70}`` and ``best_threshold_iou{...}`` per level (the first
            threshold reaching the max), ``images``, and the full curve: ``thresholds`` (T,),
            ``iou_thresholds`` (L,), ``curve`` (L lists of T accuracies, %).
        """
        if self.count == 0:
            raise ValueError("MaxBoxAccV2Meter.compute() before any update")
        curve = self.correct * 100.0 / self.count  # (L, T)
        best_at = curve.argmax(axis=1)  # (L,) first max
        best = curve[np.arange(len(best_at)), best_at]  # (L,)
        out: dict[str, Any] = {"maxboxacc_v2": float(best.mean()), "images": self.count}
        for level, acc, at in zip(self.iou_thresholds, best, best_at):
            tag = f"iou{round(level * 100)}"
            out[f"maxboxacc_{tag}"] = float(acc)
            out[f"best_threshold_{tag}"] = float(self.thresholds[at])
        out["thresholds"] = self.thresholds.tolist()
        out["iou_thresholds"] = list(self.iou_thresholds)
        out["curve"] = curve.tolist()
        return out
