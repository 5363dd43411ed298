"""Trivial localization baselines: a method that does not beat them localizes nothing.

- **whole image**: the box is the whole test input (the full image under the ``standard``
  protocol, the whole centre crop under the ``paper`` protocol);
- **centred box**: one centred box of relative side ``s`` (a fraction of the input's width and
  height), with ``s`` chosen on the *validation* split, then applied to the test split.

Both are scored like the evaluator scores a method's box: IoU >= the run's threshold with any GT box
in original coordinates (``standard``), or with every GT box clipped to the crop in crop
coordinates and the "+1" pixel convention (``paper``). The number reported is GT-known Loc (a
baseline has no class prediction; Top-1 Loc would multiply it by the classification accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from kdcicam.core.config import RunConfig
from kdcicam.core.errors import DataError
from kdcicam.data.base import Sample
from kdcicam.data.image_files import file_problem
from kdcicam.evaluation.boxes import iou_matrix
from kdcicam.evaluation.protocols import PROTOCOL_PIXEL_INCLUSIVE as PIXEL_INCLUSIVE
from kdcicam.evaluation.protocols import protocol_transform

CENTRED_SIZES: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(2, 21))  # 0.10 .. 1.00


@dataclass(frozen=True)
class BaselineResult:
    protocol: str
    whole_image: float  # GT-known Loc of the whole-input box, fraction
    centred: float  # GT-known Loc of the centred box chosen on validation, on test
    centred_size: float  # the chosen relative side
    centred_val: float  # its accuracy on the validation split


def _size(sample: Sample) -> tuple[int, int]:
    if sample.size is not None:
        return tuple(sample.size)  # type: ignore[return-value]
    problem = file_problem(sample.path)
    if problem is not None:
        raise DataError(f"{sample.path}: {problem}")
    with Image.open(sample.path) as img:  # header only
        return img.size


def _gt_and_frame(samples: Sequence[Sample], cfg: RunConfig, protocol: str) -> list[tuple[np.ndarray, tuple[float, float]]]:
    """Per image: the GT boxes the protocol scores against, and the (W, H) of the frame they live in."""
    transform = protocol_transform(cfg, protocol)
    out = []
    for s in samples:
        if not s.boxes:
            continue
        w, h = _size(s)
        boxes = torch.tensor(s.boxes, dtype=torch.float32)
        if protocol == "paper":
            frame = transform.frame((w, h))
            gt = frame.to_frame(boxes).numpy()  # every GT box, in the crop, clipped (the best IoU counts)
            out.append((gt, (float(frame.crop_size[0]), float(frame.crop_size[1]))))
        else:
            out.append((boxes.numpy(), (float(w), float(h))))
    return out


def _accuracy(items, rel: float, protocol: str, iou_threshold: float) -> float:
    return _scores(items, rel, protocol, iou_threshold)[0]


def _scores(items, rel: float, protocol: str, iou_threshold: float) -> tuple[float, float]:
    """(accuracy at the IoU threshold, mean IoU) of the centred box of relative side ``rel``."""
    hits = 0
    total_iou = 0.0
    for gt, (w, h) in items:
        box = np.array([(1 - rel) / 2 * w, (1 - rel) / 2 * h, (1 + rel) / 2 * w, (1 + rel) / 2 * h])
        if PIXEL_INCLUSIVE[protocol]:
            box = np.round(box)
        areas = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
        if not (areas > 0).any():
            continue  # a GT box cut away by the crop can never be hit
        iou = iou_matrix(box, gt[areas > 0], pixel_inclusive=PIXEL_INCLUSIVE[protocol]).max()
        hits += iou >= iou_threshold
        total_iou += iou
    n = max(len(items), 1)
    return hits / n, total_iou / n


def trivial_baselines(val: Sequence[Sample], test: Sequence[Sample], cfg: RunConfig, protocol: str,
                      sizes: Sequence[float] = CENTRED_SIZES) -> BaselineResult:
    """Whole-image and best-centred-box GT-known Loc on ``test`` (the centred size picked on ``val``)."""
    thr = cfg.eval.iou_threshold
    test_items = _gt_and_frame(test, cfg, protocol)
    val_items = _gt_and_frame(val, cfg, protocol) or test_items[:0]
    if val_items:
        # best accuracy on validation; ties go to the size with the higher mean IoU
        scores = [(*_scores(val_items, s, protocol, thr), s) for s in sizes]
        best_val, _mean_iou, best_size = max(scores, key=lambda t: (t[0], t[1]))
    else:  # no validation boxes (e.g. ILSVRC train): fall back to the middle size, say so via val = nan
        best_val, best_size = float("nan"), 0.5
    return BaselineResult(protocol=protocol, whole_image=_accuracy(test_items, 1.0, protocol, thr),
                          centred=_accuracy(test_items, best_size, protocol, thr), centred_size=best_size,
                          centred_val=best_val)
