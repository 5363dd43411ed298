"""Boxes from heatmaps at one threshold, and IoU.

Pure functions on numpy arrays (torch tensors are accepted and converted). Conventions:

- A heatmap is a real array ``(H, W)``; row = y, column = x.
- A box is ``(x0, y0, x1, y1)`` in *continuous* pixel coordinates: pixel (x, y) covers
  [x, x+1) x [y, y+1), so a component whose pixels span columns x0..x1 and rows y0..y1
  (inclusive) has the box ``(x0, y0, x1 + 1, y1 + 1)``; its area is the pixel count of its
  bounding rectangle. Boxes are float64 arrays of shape (4,) or (N, 4).
- IoU (default) = area(A ∩ B) / area(A ∪ B) of continuous boxes; a zero-area box has IoU 0 with
  everything, itself included.
- ``pixel_inclusive=True`` reproduces the "+1" convention of wsolevaluation's
  ``calculate_multiple_iou`` and of the authors' code: coordinates are read as *inclusive* pixel
  indices, area = (x1 - x0 + 1)(y1 - y0 + 1), intersection likewise. This equals the continuous
  IoU of the boxes ``(x0, y0, x1 + 1, y1 + 1)``; the box (0, 0, 0, 0) is then the single pixel
  (0, 0) (IoU 1 with itself), as in wsolevaluation.
- Masks are strict: a pixel is foreground when its value is *greater than* the cutoff, as
  OpenCV's ``THRESH_BINARY`` (wsolevaluation), MATLAB's ``im2bw`` (CAM) and the authors' code do.
  With this rule a perfect 0/1 map gives the GT box at every threshold in [0, 1).
- An empty mask (all-zero map, nothing above the cutoff) gives :data:`EMPTY_BOX` = (0, 0, 0, 0),
  wsolevaluation's fallback; its continuous IoU with any box is 0.
- wsolevaluation's own box rule (OpenCV contours, integer boxes) is :mod:`kdcicam.evaluation.wsol_rule`;
  the sweep of every threshold at once is :mod:`kdcicam.evaluation.sweep`.
- Ties between components (same pixel count, same box area) go to the component whose first
  pixel comes first in raster order (row-major), i.e. the lowest ``scipy.ndimage.label`` label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

EMPTY_BOX = np.zeros(4)  # (4,) fallback box of an empty mask: (0, 0, 0, 0)
EMPTY_BOX.setflags(write=False)

_STRUCTURES = {4: ndimage.generate_binary_structure(2, 1),  # the cross: 4-connectivity
               8: ndimage.generate_binary_structure(2, 2)}  # the 3x3 square: 8-connectivity


# --------------------------------------------------------------------------- validation

def to_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of ``x`` (numpy array, torch tensor, or nested sequence)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def check_heatmap(h: Any, unit_range: bool = False) -> np.ndarray:
    """Validate a heatmap before any number is computed from it (cf. ``check_scoremap_validity``).

    Args:
        h: (H, W) real array, numpy or torch.
        unit_range: also require every value to lie in [0, 1] (a per-image normalised map).

    Returns:
        The heatmap as a numpy array (H, W) of its own float dtype (integers become float64).

    Raises:
        ValueError: wrong number of dimensions, empty, non-real dtype, NaN, ±inf, or (with
            ``unit_range``) a value outside [0, 1]; the message says which and where.
    """
    a = to_numpy(h)
    if a.ndim != 2:
        raise ValueError(f"heatmap must be a 2-D array (H, W); got {a.ndim}-D shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"heatmap must not be empty; got shape {a.shape}")
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating)
                                   or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"heatmap must have a real numeric dtype; got {a.dtype}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    lo, hi = a.min(), a.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN propagates to min/max, ±inf shows there
        bad = ~np.isfinite(a)
        y, x = np.argwhere(bad)[0]
        kind = "NaN" if np.isnan(a[y, x]) else "inf"
        raise ValueError(f"heatmap must be finite; it contains {int(bad.sum())} NaN/inf values "
                         f"(first: {kind} at row {y}, column {x})")
    if unit_range and (lo < 0 or hi > 1):
        raise ValueError(f"heatmap must be in [0, 1] (normalise it per image first); "
                         f"got min={float(lo)}, max={float(hi)}")
    return a


def check_boxes(boxes: Any, name: str = "boxes") -> np.ndarray:
    """Validate xyxy boxes and return them as float64 (N, 4).

    Args:
        boxes: (4,) or (N, 4) array-like, numpy or torch.
        name: what to call them in error messages.

    Raises:
        ValueError: wrong shape, non-finite coordinates, or x1 < x0 / y1 < y0.
    """
    b = to_numpy(boxes).astype(np.float64)
    if b.ndim == 1:
        b = b[None, :]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{name} must have shape (4,) or (N, 4) in x0y0x1y1 order; "
                         f"got shape {to_numpy(boxes).shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"{name} must be finite; got {b[~np.isfinite(b).all(axis=1)][0].tolist()}")
    wrong = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if wrong.any():
        raise ValueError(f"{name} must follow x0y0x1y1 with x1 >= x0 and y1 >= y0; "
                         f"got {b[wrong][0].tolist()}")
    return b


# --------------------------------------------------------------------------- IoU

def iou_matrix(a: Any, b: Any, pixel_inclusive: bool = False) -> np.ndarray:
    """IoU of every box of ``a`` with every box of ``b``.

    Args:
        a: (N, 4) or (4,) xyxy boxes.
        b: (M, 4) or (4,) xyxy boxes.
        pixel_inclusive: False: continuous boxes, area (x1-x0)(y1-y0). True: the "+1"
            convention of wsolevaluation / the authors' code, area (x1-x0+1)(y1-y0+1).

    Returns:
        (N, M) float64; 0 wherever the union is empty (two zero-area boxes).
    """
    a = check_boxes(a, "box_a")  # (N, 4)
    b = check_boxes(b, "box_b")  # (M, 4)
    one = 1.0 if pixel_inclusive else 0.0
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + one
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + one
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)  # (N, M)
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)  # (N,)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)  # (M,)
    union = area_a[:, None] + area_b[None, :] - inter  # (N, M)
    ok = union > 0
    return np.where(ok, inter / np.where(ok, union, 1.0), 0.0)


# --------------------------------------------------------------------------- box policies

@dataclass(frozen=True)
class BoxPolicy:
    """How a heatmap and θ become one box.

    Attributes:
        mask: ``"absolute"``: foreground = h > θ (h normalised per image to [0, 1]);
            ``"mean_of_kept"``: keep h > θ·max(h) (others set to 0), foreground = kept map >
            mean of the kept map over *all* pixels (zeros included) — the authors' code.
        select: ``"pixels"``: the component with the most pixels; ``"bbox_area"``: the
            component with the largest bounding-box area (w·h in pixels).
        connectivity: 8 (diagonal neighbours connect; OpenCV contours treat foreground so) or
            4 (``scipy.ndimage.label``'s default structure, used by the authors' code).
    """

    mask: Literal["absolute", "mean_of_kept"]
    select: Literal["pixels", "bbox_area"]
    connectivity: Literal[4, 8]


# CAM (Zhou et al. 2016) / wsolevaluation: threshold, largest component, its box.
STANDARD = BoxPolicy(mask="absolute", select="pixels", connectivity=8)
# The authors' released code (reference-notes.md "Heatmap and box").
REFERENCE = BoxPolicy(mask="mean_of_kept", select="bbox_area", connectivity=4)
POLICIES: dict[str, BoxPolicy] = {"standard": STANDARD, "reference": REFERENCE}


def get_policy(policy: str | BoxPolicy) -> BoxPolicy:
    """Resolve a policy name (``"standard"``, ``"reference"``); a :class:`BoxPolicy` passes."""
    if isinstance(policy, BoxPolicy):
        return policy
    if policy not in POLICIES:
        raise ValueError(f"unknown box policy {policy!r} (known: {', '.join(POLICIES)})")
    return POLICIES[policy]


def foreground_mask(h: Any, theta: float, policy: str | BoxPolicy = "standard") -> np.ndarray:
    """The binary foreground of a heatmap under a policy's threshold rule.

    Args:
        h: (H, W) heatmap; in [0, 1] for the ``"absolute"`` rule.
        theta: threshold (absolute value, or fraction of the max for ``"mean_of_kept"``).
        policy: policy name or :class:`BoxPolicy`.

    Returns:
        (H, W) bool mask.
    """
    pol = get_policy(policy)
    a = check_heatmap(h, unit_range=pol.mask == "absolute")
    if pol.mask == "absolute":
        return a > theta  # (H, W)
    kept = np.where(a > theta * a.max(), a, 0.0)  # (H, W) values <= θ·max zeroed
    return kept > kept.mean()  # (H, W) mean over all pixels, zeros included


def component_boxes(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Every connected component of a mask as a box, in raster order of its first pixel.

    Args:
        mask: (H, W) bool.
        connectivity: 4 or 8.

    Returns:
        boxes (K, 4) float64 continuous xyxy, and pixels (K,) int64 the component sizes.
    """
    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    labels, n = ndimage.label(mask, structure=_STRUCTURES[connectivity])  # (H, W), labels 1..n
    if n == 0:
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    slices = ndimage.find_objects(labels)
    boxes = np.array([(sx.start, sy.start, sx.stop, sy.stop) for sy, sx in slices],
                     dtype=np.float64)  # (K, 4) slices stop one past the last pixel
    pixels = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)  # (K,)
    return boxes, pixels


def _select(boxes: np.ndarray, pixels: np.ndarray, select: str) -> np.ndarray:
    """The chosen component's box; np.argmax takes the first (raster-first) of ties."""
    if len(boxes) == 0:
        return EMPTY_BOX.copy()
    if select == "pixels":
        return boxes[int(np.argmax(pixels))].copy()
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (K,)
    return boxes[int(np.argmax(areas))].copy()


def box_from_heatmap(h: Any, theta: float, policy: str | BoxPolicy = "standard") -> np.ndarray:
    """One box from a heatmap at threshold θ.

    ``"standard"``: foreground h > θ on a map normalised to [0, 1], 8-connected components, the
    one with the most pixels. ``"reference"``: the authors' rule (keep > θ·max, then > mean of the
    kept map), 4-connected components, the one with the largest bounding box. Nothing in the
    foreground gives :data:`EMPTY_BOX`: an all-zero map under either policy, a constant map
    under ``"reference"`` (nothing exceeds the mean), a constant c <= θ under ``"standard"``
    (c > θ gives the whole image).

    Args:
        h: (H, W) heatmap.
        theta: the threshold θ.
        policy: ``"standard"``, ``"reference"`` or a :class:`BoxPolicy`.

    Returns:
        (4,) float64 continuous xyxy box.
    """
    pol = get_policy(policy)
    boxes, pixels = component_boxes(foreground_mask(h, theta, pol), pol.connectivity)
    return _select(boxes, pixels, pol.select)


def all_component_boxes(h: Any, theta: float, policy: str | BoxPolicy = "standard") -> np.ndarray:
    """The box of every component of the foreground (MaxBoxAccV2's multi-contour mode).

    Args:
        h: (H, W) heatmap.
        theta: the threshold θ.
        policy: its ``mask`` rule and ``connectivity`` are used (``select`` is not).

    Returns:
        (K, 4) float64 boxes in raster order; (0, 4) when the foreground is empty.
    """
    pol = get_policy(policy)
    return component_boxes(foreground_mask(h, theta, pol), pol.connectivity)[0]
