"""The two evaluation protocols' rules: each protocol's test transform and IoU convention, each variant's box
rule, min-max normalisation of maps, a box's best IoU with the GT boxes, and boxes mapped from the test frame
back to the original image (the evaluator's module docstring describes both protocols)."""

from __future__ import annotations

import numpy as np
import torch

from kdcicam.core.config import PROTOCOLS, RunConfig
from kdcicam.core.errors import ConfigError
from kdcicam.data.box_geometry import TestFrame
from kdcicam.data.transforms import TestTransform, test_transform_paper, test_transform_standard
from kdcicam.evaluation.boxes import box_from_heatmap, iou_matrix

# the box rule each variant uses under the paper protocol (the standard protocol always uses "standard")
VARIANT_BOX_POLICY = {"paper": "standard", "reference": "reference"}
# IoU convention of each protocol: the authors' "+1" pixel IoU (paper) or continuous boxes (standard)
PROTOCOL_PIXEL_INCLUSIVE = {"paper": True, "standard": False}


def protocol_transform(cfg: RunConfig, protocol: str) -> TestTransform:
    """The test transform of ``protocol``: square resize + centre crop (paper) or whole image (standard)."""
    if protocol == "paper":
        return test_transform_paper(cfg.eval.test_resize, cfg.eval.test_crop)
    if protocol == "standard":
        return test_transform_standard(cfg.eval.test_crop)
    raise ConfigError(f"protocol = {protocol!r}: must be one of {', '.join(PROTOCOLS)}")


def minmax(h: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation of (B, H, W) maps to [0, 1]; a constant map becomes 0."""
    flat = h.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    span = hi - lo
    return torch.where(span > 0, (h - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(h))


def best_iou(box: np.ndarray, gt_boxes: np.ndarray, pixel_inclusive: bool = False) -> float:
    """IoU of one predicted box with the best-matching GT box, with the evaluator's degenerate rules.

    Args:
        box: (4,) xyxy predicted box; zero area = the empty-foreground fallback.
        gt_boxes: (G, 4) xyxy GT boxes in the same frame (G may be 0).
        pixel_inclusive: the "+1" pixel IoU of the authors' code (paper protocol), else continuous.

    Returns:
        The best IoU, 0.0 when the box has no area, no GT box has area, or there is no GT box.
    """
    box = np.asarray(box, dtype=np.float64).reshape(4)
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt = gt[(gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])]  # (G', 4) boxes with area in the frame
    if len(gt) == 0 or box[2] <= box[0] or box[3] <= box[1]:
        return 0.0
    return float(iou_matrix(box, gt, pixel_inclusive).max())


def locate_standard(heat: np.ndarray, theta: float, frame: TestFrame,
                    gt_boxes: np.ndarray) -> tuple[np.ndarray, float]:
    """The standard protocol's box for one map and its IoU in original image coordinates.

    Args:
        heat: (C, C) map min-max normalised to [0, 1], in the frame's pixels.
        theta: CAM threshold in [0, 1].
        frame: the test geometry of the image (maps the box back to the original image).
        gt_boxes: (G, 4) every GT box of the image, original pixels.

    Returns:
        The (4,) box in original pixels (the fallback (0, 0, 0, 0) when nothing exceeds θ) and
        its best continuous IoU over the GT boxes.
    """
    box = to_original_box(box_from_heatmap(heat, theta, "standard"), frame)  # (4,) original pixels
    return box, best_iou(box, gt_boxes, PROTOCOL_PIXEL_INCLUSIVE["standard"])


def to_original_box(box: np.ndarray, frame: TestFrame) -> np.ndarray:
    """A (4,) box of the frame's pixels mapped back to the original image (float64, clipped to it)."""
    boxes = torch.as_tensor(np.asarray(box, dtype=np.float64), dtype=torch.float64).reshape(1, 4)  # (1, 4)
    return frame.to_original(boxes)[0].numpy()  # (4,)


def best_ious(boxes: np.ndarray, gt_boxes: np.ndarray, pixel_inclusive: bool = False) -> np.ndarray:
    """:func:`best_iou` of each of several boxes (same degenerate rules, same floating-point result).

    Args:
        boxes: (T, 4) xyxy predicted boxes.
        gt_boxes: (G, 4) xyxy GT boxes in the same frame (G may be 0).
        pixel_inclusive: the "+1" pixel IoU (paper protocol), else continuous.

    Returns:
        (T,) float64 best IoU per box; 0 for a box without area or when no GT box has area.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (T, 4)
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt = gt[(gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])]  # (G', 4) boxes with area in the frame
    out = np.zeros(len(b))  # (T,)
    if len(gt) == 0 or len(b) == 0:
        return out
    has_area = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # (T,)
    if has_area.any():
        out[has_area] = iou_matrix(b[has_area], gt, pixel_inclusive).max(axis=1)
    return out


def to_original_boxes(boxes: np.ndarray, frame: TestFrame) -> np.ndarray:
    """(T, 4) frame boxes mapped back to the original image, as :func:`to_original_box` maps one."""
    return frame.to_original(torch.as_tensor(boxes, dtype=torch.float64)).numpy()  # (T, 4)
