"""wsolevaluation's box rule (Choe et al., CVPR 2020, clovaai/wsolevaluation ``evaluation.py``).

The rule of the ``standard`` protocol's box numbers, reproduced without OpenCV:

- a CAM in [0, 1] is quantised as ``(cam * 255).astype(np.uint8)`` (the product in the CAM's own
  dtype, truncated);
- at CAM threshold t the foreground is ``q > int(t * max(q))`` (``cv2.threshold``, THRESH_BINARY);
- the candidate boxes are the bounding rectangles of every contour ``cv2.findContours(RETR_TREE,
  CHAIN_APPROX_SIMPLE)`` returns (:mod:`kdcicam.evaluation.contours`): outer contours of the
  8-connected components and the contours of their holes. MaxBoxAccV2 scores the best of them;
  the legacy MaxBoxAcc, and GT-known Loc at a fixed θ, only the contour of largest
  ``cv2.contourArea`` (the first in OpenCV's order on ties);
- a rectangle (x, y, w, h) becomes the box (x, y, min(x + w, W - 1), min(y + h, H - 1)); no
  contour gives (0, 0, 0, 0);
- boxes are integer pixel indices scored with the "+1" IoU (``calculate_multiple_iou``:
  areas (x1 - x0 + 1)(y1 - y0 + 1)), so (0, 0, 0, 0) is the pixel (0, 0) and a GT box of zero
  width is one pixel wide;
- GT boxes are resized to the CAM's frame as ``resize_bbox`` does: each coordinate times
  new size / old size in float64, truncated to an integer.

The one-pass MaxBoxAccV2 (:func:`best_iou_all_contours`) finds the boxes of the nested foregrounds
once with :func:`kdcicam.evaluation.level_boxes.level_boxes`, and of the nested backgrounds
(4-connected, for the holes) once more; the float CAM, when given, orders the sweeps' ascent inside a
level (fewer basins, same boxes). :func:`box_scores` also takes GT-known Loc's largest contour from
the first sweep where the mask is one component.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdcicam.evaluation.boxes import check_boxes, check_heatmap, iou_matrix
from kdcicam.evaluation.contours import find_contours, largest_contour_box
from kdcicam.evaluation.level_boxes import RANK_LIMIT, level_boxes, tie_ranks
from kdcicam.evaluation.sweep import SweepWorkspace

NO_CONTOUR_BOX = np.zeros((1, 4))  # wsolevaluation's box when nothing is foreground
NO_CONTOUR_BOX.setflags(write=False)


def quantize(cam: Any) -> np.ndarray:
    """``(cam * 255).astype(np.uint8)`` as float64 (exact integers), the product in the CAM's dtype.

    Args:
        cam: (H, W) float CAM in [0, 1] (NaN, inf and values outside [0, 1] are refused).
    """
    a = check_heatmap(cam, unit_range=True)
    return (a * a.dtype.type(255)).astype(np.uint8).astype(np.float64)  # (H, W)


def integer_cutoffs(q: np.ndarray, thresholds: Any) -> np.ndarray:
    """``int(t * max(q))`` for every CAM threshold t: foreground at t is ``q > cutoff``.

    Args:
        q: (H, W) quantised map.
        thresholds: (T,) CAM thresholds in [0, 1).

    Returns:
        (T,) float64 integers.
    """
    t = np.asarray(thresholds, dtype=np.float64).ravel()
    return np.trunc(t * float(q.max()))  # (T,) t·max >= 0: trunc = int()


def to_wsol_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Continuous rectangles (x, y, x + w, y + h) -> (x, y, min(x + w, W - 1), min(y + h, H - 1))."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    height, width = shape
    out[:, 2] = np.minimum(out[:, 2], width - 1)
    out[:, 3] = np.minimum(out[:, 3], height - 1)
    return out


def resize_gt_boxes(boxes: Any, image_size: tuple[float, float], size: tuple[int, int]) -> np.ndarray:
    """GT boxes resized as wsolevaluation's ``resize_bbox``: scaled in float64, then truncated.

    Args:
        boxes: (G, 4) x0y0x1y1 boxes of the original image.
        image_size: (W, H) of the original image.
        size: (W, H) of the CAM's frame.

    Returns:
        (G, 4) float64 integers.
    """
    b = check_boxes(boxes, "gt_boxes")
    scale = np.array([size[0] / 1.0, size[1] / 1.0, size[0] / 1.0, size[1] / 1.0])
    orig = np.array([image_size[0], image_size[1], image_size[0], image_size[1]], dtype=np.float64)
    return np.trunc(b * scale / orig)  # x · new / old, as resize_bbox computes it


def contour_boxes(q: np.ndarray, cutoff: float, largest_only: bool) -> np.ndarray:
    """The boxes wsolevaluation's ``scoremap2bbox`` returns at one cutoff.

    Args:
        q: (H, W) quantised map.
        cutoff: integer cutoff (foreground = q > cutoff).
        largest_only: only the contour of largest polygon area (legacy MaxBoxAcc, GT-known Loc).

    Returns:
        (K, 4) float64 integer boxes; :data:`NO_CONTOUR_BOX` when nothing is foreground.
    """
    if largest_only:
        box = largest_contour_box(q > cutoff)
        return NO_CONTOUR_BOX.copy() if box is None else to_wsol_boxes(box, q.shape)
    found = find_contours(q > cutoff)
    if len(found.areas) == 0:
        return NO_CONTOUR_BOX.copy()
    return to_wsol_boxes(found.boxes, q.shape)


def best_iou_largest_contour(q: np.ndarray, cutoffs: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Best "+1" IoU with any GT box of the largest contour's box at each cutoff (legacy MaxBoxAcc).

    Args:
        q: (H, W) quantised map.
        cutoffs: (T,) integer cutoffs.
        gt: (G, 4) GT boxes in the map's frame, G >= 1.

    Returns:
        (T,) float64.
    """
    out = np.zeros(len(cutoffs))
    seen: dict[float, float] = {}
    for i, c in enumerate(cutoffs.tolist()):
        if c not in seen:
            seen[c] = float(iou_matrix(contour_boxes(q, c, True), gt, pixel_inclusive=True).max())
        out[i] = seen[c]
    return out


def best_iou_all_contours(q: np.ndarray, cutoffs: np.ndarray, gt: np.ndarray,
                          workspaces: tuple[SweepWorkspace, SweepWorkspace] | None = None,
                          cam: np.ndarray | None = None) -> np.ndarray:
    """Best "+1" IoU of any contour's box with any GT box at each cutoff (MaxBoxAccV2).

    Outer contours: the 8-connected components of ``q > c``, from one sweep over the ascending
    cutoffs. Holes: the 4-connected components of ``q <= c`` that do not touch the border, from
    one sweep of ``255 - q`` over the cutoffs ``254 - c`` (descending c); each hole's contour box is
    its box grown by one pixel.

    Args:
        q: (H, W) quantised map.
        cutoffs: (T,) non-decreasing integer cutoffs.
        gt: (G, 4) GT boxes in the map's frame, G >= 1.
        workspaces: scratch buffers for the two sweeps (reused across same-size maps).
        cam: (H, W) the CAM q was quantised from: it only orders the sweeps' ascent within a
            level (fewer ties than q, so fewer basins); the result is the same without it.

    Returns:
        (T,) float64.
    """
    return _all_contour_ious(q, cutoffs, gt, workspaces, cam)[0]


def _all_contour_ious(q: np.ndarray, cutoffs: np.ndarray, gt: np.ndarray,
                      workspaces: tuple[SweepWorkspace, SweepWorkspace] | None,
                      cam: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`best_iou_all_contours`, and the levels (K,) and continuous boxes (K, 4) of the outer contours."""
    height, width = q.shape
    fg_ws, bg_ws = workspaces or (SweepWorkspace(), SweepWorkspace())
    num = len(cutoffs)
    best = np.full(num, -1.0)  # (T,)
    q8 = q if q.dtype == np.uint8 else q.astype(np.uint8)  # (H, W) exact: q holds integers 0..255
    ranks = None if cam is None else tie_ranks(cam)  # (N,) the CAM's order breaks q's ties
    outer_levels, outer = level_boxes(q8, cutoffs, 8, fg_ws, ranks)
    # q <= c  <=>  255 - q > 254 - c; level j <-> cutoff num - 1 - j
    if ranks is not None:
        ranks = np.subtract(RANK_LIMIT, ranks, out=ranks)  # the reversed order for 255 - q
    levels, b = level_boxes(255 - q8, 254.0 - cutoffs[::-1], 4, bg_ws, ranks)
    inside = (b[:, 0] > 0) & (b[:, 1] > 0) & (b[:, 2] < width) & (b[:, 3] < height)
    grown = b[inside] + np.array([-1.0, -1.0, 1.0, 1.0])  # (K', 4) the hole contour's box
    boxes = np.concatenate([outer, grown])  # (K + K', 4) every contour's box
    if len(boxes):
        ious = iou_matrix(to_wsol_boxes(boxes, q.shape), gt, pixel_inclusive=True).max(axis=1)
        np.maximum.at(best, np.concatenate([outer_levels, num - 1 - levels[inside]]), ious)
    empty = best < 0  # no foreground at these cutoffs
    if empty.any():
        best[empty] = float(iou_matrix(NO_CONTOUR_BOX, gt, pixel_inclusive=True).max())
    return best, outer_levels, outer


def box_scores(cam: Any, thresholds: Any, gt: np.ndarray, thetas: Any,
               workspaces: tuple[SweepWorkspace, SweepWorkspace] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One CAM's MaxBoxAccV2 IoUs and GT-known Loc boxes, from one quantisation and one sweep.

    The largest contour at a θ whose cutoff is also a sweep cutoff comes from the sweep when the
    mask there is empty or one 8-connected component (the only top-level contour: its box); else
    from :func:`largest_contour_box`.

    Args:
        cam: (H, W) CAM in [0, 1].
        thresholds: (T,) ascending CAM thresholds of the MaxBoxAccV2 curve.
        gt: (G, 4) GT boxes in the map's frame, G >= 1.
        thetas: (Θ,) CAM thresholds of GT-known Loc.
        workspaces: scratch buffers for the two sweeps.

    Returns:
        (T,) float64 best IoUs (:func:`best_iou_all_contours`) and (Θ, 4) float64 boxes
        (:func:`largest_contour_boxes`).
    """
    q = quantize(cam)
    cutoffs = integer_cutoffs(q, thresholds)  # (T,)
    best, levels, outer = _all_contour_ious(q, cutoffs, gt, workspaces, np.asarray(cam))
    counts = np.bincount(levels, minlength=len(cutoffs))  # (T,) outer contours per level
    located = np.zeros((len(np.asarray(thetas).ravel()), 4))
    for i, c in enumerate(integer_cutoffs(q, thetas).tolist()):
        level = int(np.searchsorted(cutoffs, c))
        if level < len(cutoffs) and cutoffs[level] == c and counts[level] <= 1:
            one = outer[np.searchsorted(levels, level)] if counts[level] else None
            located[i] = NO_CONTOUR_BOX[0] if one is None else to_wsol_boxes(one, q.shape)[0]
        else:
            located[i] = contour_boxes(q, c, True)[0]
    return best, located


def largest_contour_boxes(cam: Any, thetas: Any) -> np.ndarray:
    """The legacy box (largest contour) at every θ: what GT-known Loc at θ scores.

    Args:
        cam: (H, W) CAM in [0, 1].
        thetas: (T,) CAM thresholds in [0, 1].

    Returns:
        (T, 4) float64 integer boxes; (0, 0, 0, 0) where nothing is foreground.
    """
    q = quantize(cam)
    cutoffs = integer_cutoffs(q, thetas)
    seen: dict[float, np.ndarray] = {}
    out = np.zeros((len(cutoffs), 4))
    for i, c in enumerate(cutoffs.tolist()):
        if c not in seen:
            seen[c] = contour_boxes(q, c, True)[0]
        out[i] = seen[c]
    return out


def best_pixel_ious(boxes: Any, gt: Any) -> np.ndarray:
    """(K,) best "+1" IoU of each box with any GT box; 0 when there is no GT box."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    if len(g) == 0 or len(b) == 0:
        return np.zeros(len(b))
    return iou_matrix(b, g, pixel_inclusive=True).max(axis=1)
