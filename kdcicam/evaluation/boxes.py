"""Boxes from heatmaps, IoU, and the nested-threshold sweep behind MaxBoxAccV2.

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
_BUCKET_BITS = 16  # the sweep's ascent orders pixels by value in 2^16 buckets of the value range
_TABLE_BITS = 12  # the sweep looks entry levels up per 2^12 coarser buckets


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


def to_wsolevaluation_boxes(boxes: Any, shape: tuple[int, int]) -> np.ndarray:
    """The box wsolevaluation reports for the same component, for use with ``pixel_inclusive``.

    wsolevaluation turns ``cv2.boundingRect`` (x, y, w, h) into (x, y, min(x+w, W-1),
    min(y+h, H-1)): our continuous (x0, y0, x1, y1) with x1, y1 clipped to W-1, H-1. Read with
    the "+1" IoU this box is one pixel wider/taller than the component unless it touches the
    right/bottom edge. :data:`EMPTY_BOX` maps to itself.

    Args:
        boxes: (N, 4) or (4,) continuous boxes.
        shape: (H, W) of the heatmap the boxes come from.

    Returns:
        (N, 4) float64.
    """
    out = check_boxes(boxes).copy()
    height, width = shape
    out[:, 2] = np.minimum(out[:, 2], width - 1)
    out[:, 3] = np.minimum(out[:, 3], height - 1)
    return out


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


# --------------------------------------------------------------------------- threshold sweep

@dataclass(frozen=True)
class ComponentSweep:
    """The connected components of ``values > cutoffs[i]`` for every cutoff i.

    Components are listed level by level (``levels`` ascending) and, within a level, in raster
    order of their first pixel (the order of ``scipy.ndimage.label``'s labels).
    """

    levels: np.ndarray  # (K,) int64  index i of the cutoff the component belongs to
    boxes: np.ndarray  # (K, 4) float64  continuous xyxy box
    pixels: np.ndarray  # (K,) int64  number of pixels
    num_levels: int  # number of cutoffs
    shape: tuple[int, int]  # (H, W) of the swept map


def _check_sweep_inputs(values: Any, cutoffs: Any,
                        connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    v = check_heatmap(values)  # (H, W) float16/32/64, compared exactly in float64
    c = np.asarray(cutoffs, dtype=np.float64).ravel()  # (T,)
    if c.size == 0 or not np.isfinite(c).all():
        raise ValueError(f"cutoffs must be a non-empty finite sequence; got {c.tolist()}")
    if (np.diff(c) < 0).any():
        raise ValueError("cutoffs must be in ascending (non-decreasing) order")
    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    return v, c


def sweep_reference(values: Any, cutoffs: Any, connectivity: int = 8) -> ComponentSweep:
    """Plain sweep: label ``values > c`` from scratch at every cutoff c (the yardstick).

    Args:
        values: (H, W) map.
        cutoffs: (T,) ascending cutoffs.
        connectivity: 4 or 8.

    Returns:
        The :class:`ComponentSweep`.
    """
    v, c = _check_sweep_inputs(values, cutoffs, connectivity)
    v = v.astype(np.float64, copy=False)  # exact; compare in float64
    levels, boxes, pixels = [], [], []
    for i, cutoff in enumerate(c):
        b, p = component_boxes(v > cutoff, connectivity)  # (K_i, 4), (K_i,)
        levels.append(np.full(len(b), i, dtype=np.int64))
        boxes.append(b)
        pixels.append(p)
    return ComponentSweep(np.concatenate(levels), np.concatenate(boxes).reshape(-1, 4),
                          np.concatenate(pixels), len(c), v.shape)


def largest_per_level(sweep: ComponentSweep) -> np.ndarray:
    """Index of each level's component with the most pixels (ties: the raster-first one).

    Args:
        sweep: a :class:`ComponentSweep`.

    Returns:
        (T',) int64 indices into the sweep's arrays, one per level that has a component, in
        level order.
    """
    k = len(sweep.levels)
    order = np.lexsort((np.arange(k), -sweep.pixels, sweep.levels))  # level, most pixels, first
    head = np.ones(k, dtype=bool)
    head[1:] = sweep.levels[order][1:] != sweep.levels[order][:-1]
    return order[head]


def sweep_best_iou(sweep: ComponentSweep, gt_boxes: Any, multi_contour: bool = True,
                   wsolevaluation: bool = False) -> np.ndarray:
    """Best IoU with any GT box at every level of a sweep (the quantity MaxBoxAccV2 counts).

    Args:
        sweep: the components at every level.
        gt_boxes: (G, 4) or (4,) GT boxes, in the map's pixel frame.
        multi_contour: True: every component's box competes (MaxBoxAccV2); False: only the
            component with the most pixels (MaxBoxAcc).
        wsolevaluation: score boxes as wsolevaluation does: boxes clipped by
            :func:`to_wsolevaluation_boxes` and the "+1" IoU (``pixel_inclusive``).

    Returns:
        (T,) float64; a level without any component scores :data:`EMPTY_BOX`.
    """
    gt = check_boxes(gt_boxes, "gt_boxes")  # (G, 4)
    pick = np.arange(len(sweep.levels)) if multi_contour else largest_per_level(sweep)
    boxes, levels = sweep.boxes[pick], sweep.levels[pick]  # (K, 4), (K,)
    fallback = EMPTY_BOX[None, :]
    if wsolevaluation:
        boxes = to_wsolevaluation_boxes(boxes, sweep.shape)
        fallback = to_wsolevaluation_boxes(fallback, sweep.shape)
    best = np.full(sweep.num_levels, -1.0)  # (T,)
    if len(boxes):
        np.maximum.at(best, levels, iou_matrix(boxes, gt, wsolevaluation).max(axis=1))
    best[best < 0] = iou_matrix(fallback, gt, wsolevaluation).max()
    return best


class SweepWorkspace:
    """Scratch buffers that :func:`sweep_components` reuses across calls on same-size maps.

    The sweep's passes over the image are cheap enough that fetching fresh memory for every
    temporary (the allocator hands large freed arrays back to the OS, and touching new pages
    faults) would cost as much as the arithmetic. Keep one workspace per evaluator; it is not
    thread-safe. Results never alias these buffers.
    """

    def __init__(self) -> None:
        self.shape: tuple[int, int] | None = None

    def prepare(self, height: int, width: int) -> SweepWorkspace:
        """(Re)allocate the buffers for an (H, W) map if the size changed; return self."""
        if self.shape != (height, width):
            size = height * width
            self.shape = (height, width)
            self.index = np.arange(size)  # (N,) raster index
            self.reverse = np.arange(size - 1, -1, -1)  # (N,) N - 1 - raster index
            self.column = np.tile(np.arange(width), height)  # (N,) column x
            self.real = np.empty(size)  # (N,) float64 scratch
            self.ints = [np.empty(size, dtype=np.int64) for _ in range(4)]  # (N,) int64 scratch
        return self


def sweep_components(values: Any, cutoffs: Any, connectivity: int = 8,
                     workspace: SweepWorkspace | None = None) -> ComponentSweep:
    """Same result as :func:`sweep_reference`, computed once for all cutoffs.

    The masks are nested (a higher cutoff keeps a subset), so the components at every cutoff are
    unions of pieces of one partition of the image, computed once:

    1. Each pixel's entry level e(p) = number of cutoffs it exceeds (it is foreground at cutoffs
       0 .. e(p)-1). Steepest ascent on the order (e, value, -raster index): every pixel points to
       its highest neighbour, or to itself if none is higher; pointer jumping follows the
       pointers to a root and so splits the image into basins, one per local maximum. Along a
       path e never falls, so the part of a basin above any cutoff is connected: one piece.
    2. Two adjacent foreground pixels of different basins join their basins at every cutoff both
       exceed. A union-find over these links (the strongest per pair of touching basins),
       processed from the highest cutoff down, labels the component of each basin at each level.
    3. Per (basin, entry level): first / last raster index, min / max column, pixel count; a
       reverse cumulative min / max / sum over levels gives each basin's piece at every cutoff.
    4. A component's box / pixel count / first pixel = min / max / sum over its basins' pieces.

    The per-pixel work is a fixed number of vectorised passes (no per-threshold labelling); the
    per-level work is on the (levels x basins) table, small for smooth maps.

    Args:
        values: (H, W) map.
        cutoffs: (T,) ascending cutoffs; component k exists where ``values > cutoffs[level]``.
        connectivity: 4 or 8.
        workspace: scratch buffers to reuse (see :class:`SweepWorkspace`); None = fresh ones.

    Returns:
        The :class:`ComponentSweep`, equal array for array to :func:`sweep_reference`'s.
    """
    v, c = _check_sweep_inputs(values, cutoffs, connectivity)
    height, width = v.shape
    num = len(c)
    vmin, vmax = float(v.min()), float(v.max())
    if vmax == vmin:  # constant map: one component or none at each level
        top = int(np.searchsorted(c, vmin, side="left"))  # levels 0 .. top-1
        return ComponentSweep(np.arange(top), np.tile([0.0, 0.0, width, height], (top, 1)),
                              np.full(top, height * width), num, (height, width))
    if not 0 < ((1 << _BUCKET_BITS) - 1) / (vmax - vmin) < np.inf:  # span overflows / underflows
        return sweep_reference(v, c, connectivity)
    size = height * width
    if int(size).bit_length() + int(num).bit_length() + 1 > 62:
        raise ValueError(f"a {height}x{width} map with {num} cutoffs is too large for the "
                         "fast sweep")
    ws = (workspace or SweepWorkspace()).prepare(height, width)
    entry, bucket = _entry_levels(v, vmin, vmax, c, ws)  # (N,) each, workspace buffers
    if not entry.any():
        return ComponentSweep(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64), num,
                              (height, width))
    root, spare, basin = _ascent_roots(entry, bucket, ws, connectivity)  # (N,) each

    # Basins: the foreground roots, numbered in raster order; id nb collects everything else.
    roots = np.flatnonzero(root == ws.index)
    roots = roots[entry[roots] > 0]  # (B,)
    nb = len(roots)
    basin_of = spare
    basin_of.fill(nb)
    basin_of[roots] = np.arange(nb)
    np.take(basin_of, root, out=basin, mode="clip")  # (N,)
    label = _basin_labels(basin, entry, ws.column, connectivity, nb, num)  # (T, B)

    # 3. Pieces: stats per (basin, entry level), cumulated from the top level down.
    key = basin  # key = basin * (T+1) + e, in place
    key *= num + 1
    key += entry
    cells = (nb + 1) * (num + 1)
    first, x0 = np.full(cells, size), np.full(cells, width)
    last, x1 = np.full(cells, -1), np.full(cells, -1)
    np.minimum.at(first, key, ws.index)
    np.maximum.at(last, key, ws.index)
    np.minimum.at(x0, key, ws.column)
    np.maximum.at(x1, key, ws.column)
    count = np.bincount(key, minlength=cells)

    def pieces(a: np.ndarray, op: np.ufunc) -> np.ndarray:
        # piece of basin b at cutoff i = its pixels with entry level > i
        a = a.reshape(nb + 1, num + 1)[:nb, ::-1]  # (B, T+1) levels T .. 0
        return op.accumulate(a, axis=1)[:, ::-1][:, 1:].T  # (T, B) row i: levels i+1 .. T

    p_count = pieces(count, np.add)  # (T, B)
    live = p_count > 0  # (T, B) basin b has a piece at level i

    # 4. Components: reduce the live pieces over (level, label).
    comp = np.broadcast_to(np.arange(num)[:, None] * nb, (num, nb))[live] + label[live]  # (L,)
    cells = num * nb
    c_first, c_x0 = np.full(cells, size), np.full(cells, width)
    c_last, c_x1 = np.full(cells, -1), np.full(cells, -1)
    np.minimum.at(c_first, comp, pieces(first, np.minimum)[live])
    np.maximum.at(c_last, comp, pieces(last, np.maximum)[live])
    np.minimum.at(c_x0, comp, pieces(x0, np.minimum)[live])
    np.maximum.at(c_x1, comp, pieces(x1, np.maximum)[live])
    c_count = np.bincount(comp, weights=p_count[live], minlength=cells).astype(np.int64)
    used = np.flatnonzero(c_count)  # sorted by level, then label
    used = used[np.lexsort((c_first[used], used // nb))]  # level, then raster order of first pixel
    boxes = np.stack([c_x0[used], c_first[used] // width,
                      c_x1[used] + 1, c_last[used] // width + 1], axis=1).astype(np.float64)
    return ComponentSweep(used // nb, boxes, c_count[used], num, (height, width))


def _entry_levels(v: np.ndarray, vmin: float, vmax: float, c: np.ndarray,
                  ws: SweepWorkspace) -> tuple[np.ndarray, np.ndarray]:
    """Exact entry levels e = #{i : c_i < v} and value buckets (step 1 of the sweep).

    ``bucket`` = trunc((v - min) * scale) is monotone in v, and so is its coarse bucket. A coarse
    bucket that holds no cutoff's own coarse bucket lies strictly between two cutoffs, so a
    table gives e for all its pixels; pixels of the (few) buckets that hold a cutoff are
    searched exactly.

    Args:
        v: (H, W) float map (float16/32/64), not constant.
        vmin: its minimum.
        vmax: its maximum (> vmin).
        c: (T,) ascending float64 cutoffs.
        ws: prepared workspace; the results live in ``ws.ints[3]`` and ``ws.ints[0]``.

    Returns:
        entry (N,) int64 in [0, T], bucket (N,) int64 in [0, 2^16).
    """
    bucket, tmp, _, entry = ws.ints
    scale = ((1 << _BUCKET_BITS) - 1) / (vmax - vmin)
    flat = v.ravel()
    np.subtract(flat, vmin, out=ws.real, dtype=np.float64)  # the same float64 arithmetic ...
    ws.real *= scale  # ... as for the cutoffs below, so one monotone map for both
    np.copyto(bucket, ws.real, casting="unsafe")  # (N,) trunc: monotone in v
    shift = _BUCKET_BITS - _TABLE_BITS
    coarse = 1 << _TABLE_BITS
    cut = np.clip((c - vmin) * scale, -1, 1 << _BUCKET_BITS).astype(np.int64) >> shift  # (T,)
    # table[k] = #{i : cut_i < k}: count the cutoffs by coarse bucket, then cumulate
    table = np.cumsum(np.bincount(np.clip(cut + 1, 0, coarse), minlength=coarse + 1)[:coarse])
    holds = np.zeros(coarse, dtype=bool)  # the bucket holds a cutoff: search its pixels exactly
    holds[cut[(cut >= 0) & (cut < coarse)]] = True
    np.right_shift(bucket, shift, out=tmp)
    np.take(table, tmp, out=entry, mode="clip")  # (N,)
    unsure = np.flatnonzero(holds[tmp])
    entry[unsure] = np.searchsorted(c, flat[unsure], side="left")
    return entry, bucket


def _ascent_roots(entry: np.ndarray, bucket: np.ndarray, ws: SweepWorkspace,
                  connectivity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Root of every pixel's steepest-ascent path (step 1 of the sweep).

    The order is the packed integer (e, value bucket, -raster index): it refines the entry level
    e (which alone decides correctness), the value makes paths climb towards real maxima (few
    basins), the index makes it strict (no cycles on plateaus). The max of the packed keys over
    a neighbourhood is at once the best neighbour's key and, in its low bits, its index.

    Args:
        entry: (N,) entry levels (``ws.ints[3]``, kept).
        bucket: (N,) value buckets in [0, 2^16) (``ws.ints[0]``, consumed).
        ws: prepared workspace.
        connectivity: 4 or 8.

    Returns:
        root (N,) int64 root index per pixel, and the two other free workspace buffers.
    """
    height, width = ws.shape
    size = entry.size
    index_bits = int(size).bit_length()
    entry_bits = int(entry.max()).bit_length()
    value_bits = max(0, min(_BUCKET_BITS, 62 - index_bits - entry_bits))
    along, best, packed = ws.ints[0], ws.ints[1], ws.ints[2]
    np.left_shift(entry, value_bits + index_bits, out=packed)  # (N,)
    bucket >>= _BUCKET_BITS - value_bits
    bucket <<= index_bits
    packed |= bucket
    packed |= ws.reverse  # lower raster index wins ties
    _neighbourhood_max(packed, best, along, height, width, connectivity)
    best &= (1 << index_bits) - 1
    root = np.subtract(size - 1, best, out=best)  # (N,) the best neighbour (or itself)
    spare = along
    rounds = 0
    while True:  # pointer jumping: after k rounds every path of length <= 2^k is done
        np.take(root, root, out=spare, mode="clip")
        rounds += 1
        done = rounds > 3 and np.array_equal(spare, root)
        root, spare = spare, root
        if done:
            return root, spare, packed


def _basin_labels(basin: np.ndarray, entry: np.ndarray, column: np.ndarray, connectivity: int,
                  nb: int, num: int) -> np.ndarray:
    """Component label of every basin at every level (step 2 of the sweep).

    Args:
        basin: (N,) basin per pixel (nb for pixels of no foreground basin).
        entry: (N,) entry levels.
        column: (N,) column of each pixel.
        connectivity: 4 or 8.
        nb: number of basins.
        num: number of levels.

    Returns:
        (T, B) int64: basins with equal labels at level i form one component there.
    """
    size = len(basin)
    width = int(column[-1]) + 1
    # forward neighbour offsets, each with the column (0 or W-1) whose pairs wrap a row end
    steps = [(1, width - 1), (width, None)]
    if connectivity == 8:
        steps += [(width + 1, width - 1), (width - 1, 0)]
    found, offset = [], []
    for d, wrap in steps:
        if 0 < d < size:
            differ = basin[:size - d] != basin[d:]  # (N-d,) pairs (p, p+d) across basins
            if wrap is not None:
                differ[wrap::width] = False  # p in that column: p+d is not its neighbour
            found.append(np.flatnonzero(differ))
            offset.append(d)
    label = np.broadcast_to(np.arange(nb), (num, nb)).copy()  # (T, B) nothing merged
    if not found:  # a single pixel
        return label
    at = np.concatenate(found)  # (M,) first pixel of each candidate pair
    nxt = at + np.repeat(offset, [len(f) for f in found])  # (M,) its neighbour
    st = np.minimum(entry[at], entry[nxt])  # both foreground at levels 0 .. st-1
    a, b = basin[at], basin[nxt]
    pair = np.minimum(a, b) * nb + np.maximum(a, b)  # basin pair, lower id first
    if not st.all():
        pair, st = pair[st > 0], st[st > 0]
    if st.size == 0:
        return label
    if nb * nb <= 4 * size:  # strongest link per pair through a dense table
        table = np.zeros(nb * nb, dtype=np.int64)
        np.maximum.at(table, pair, st)
        pair = np.flatnonzero(table)
        st = table[pair]
    else:  # many basins (noise): sort instead
        order = np.lexsort((st, pair))
        pair, st = pair[order], st[order]
        last = np.ones(len(pair), dtype=bool)
        last[:-1] = pair[1:] != pair[:-1]
        pair, st = pair[last], st[last]
    order = np.argsort(-st, kind="stable")
    # Kruskal from the top level down (union by size): merging component cb into ca at
    # strength s means cb's basins carry ca's label at levels 0 .. s-1.
    owner = list(range(nb))  # find() with path halving
    weight = [1] * nb
    parent = np.arange(nb)  # merge tree: parent[cb] = ca ...
    joined = np.zeros(nb, dtype=np.int64)  # ... at levels below joined[cb]
    for p, s in zip(pair[order].tolist(), st[order].tolist()):
        ra, rb = p // nb, p % nb
        while owner[ra] != ra:
            owner[ra] = owner[owner[ra]]
            ra = owner[ra]
        while owner[rb] != rb:
            owner[rb] = owner[owner[rb]]
            rb = owner[rb]
        if ra == rb:
            continue
        if weight[ra] < weight[rb]:
            ra, rb = rb, ra
        owner[rb] = ra
        weight[ra] += weight[rb]
        parent[rb], joined[rb] = ra, s
    # Label at level i: climb the merge tree while the merge is in effect (joined > i). Merge
    # levels only fall going up, so the climb stops at the first merge not yet made.
    levels = np.arange(num)[:, None]  # (T, 1)
    step = np.where(joined[None, :] > levels, parent[None, :], np.arange(nb)[None, :])  # (T, B)
    step += levels * nb  # flat index into step.ravel()
    flat = step.ravel()
    label = flat
    while True:
        nxt_label = flat[label]  # (T*B,)
        if np.array_equal(nxt_label, label):
            return (label.reshape(num, nb) - levels * nb)
        label = nxt_label


def _neighbourhood_max(key: np.ndarray, out: np.ndarray, scratch: np.ndarray, height: int,
                       width: int, connectivity: int) -> None:
    """``out`` = max of ``key`` over each pixel and its 8 (or 4) neighbours, on flat buffers.

    Shifts of the flat array are contiguous (fast); a shift by one column wraps around row ends,
    so the first and last columns are redone on 2-D views.

    Args:
        key: (N,) int64 values.
        out: (N,) int64 result buffer.
        scratch: (N,) int64 buffer (overwritten).
        height: H.
        width: W.
        connectivity: 8 (the 3x3 square, separable) or 4 (the cross).
    """
    rows = scratch if connectivity == 8 else out  # max along the row: left, self, right
    np.copyto(rows, key)
    if width > 1:
        np.maximum(rows[1:], key[:-1], out=rows[1:])
        np.maximum(rows[:-1], key[1:], out=rows[:-1])
        k2, r2 = key.reshape(height, width), rows.reshape(height, width)
        np.maximum(k2[:, 0], k2[:, 1], out=r2[:, 0])  # undo the wrap-around
        np.maximum(k2[:, -1], k2[:, -2], out=r2[:, -1])
    src = rows if connectivity == 8 else key  # then along the column: up, self, down
    if connectivity == 8:
        np.copyto(out, rows)
    np.maximum(out[width:], src[:-width], out=out[width:])
    np.maximum(out[:-width], src[width:], out=out[:-width])
