"""Connected components of a map at every threshold at once (the sweep behind MaxBoxAccV2).

:func:`sweep_components` labels the nested foregrounds ``values > cutoffs[i]`` of all cutoffs in
one pass (its steps are in :mod:`kdcicam.evaluation.sweep_steps`); :func:`sweep_reference` labels
each cutoff from scratch and is the yardstick it is tested against. Boxes follow the conventions of
:mod:`kdcicam.evaluation.boxes` (continuous xyxy, strict ``>`` masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kdcicam.evaluation.boxes import _STRUCTURES, EMPTY_BOX, check_boxes, check_heatmap, component_boxes, iou_matrix
from kdcicam.evaluation.sweep_steps import (
    _BUCKET_BITS,
    SweepWorkspace,
    _ascent_roots,
    _basin_labels,
    _entry_levels,
    _entry_levels_uint8,
    _run_stats,
)

__all__ = ["ComponentSweep", "SweepWorkspace", "largest_per_level", "sweep_best_iou", "sweep_components",
           "sweep_reference"]


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


def sweep_best_iou(sweep: ComponentSweep, gt_boxes: Any, multi_contour: bool = True) -> np.ndarray:
    """Best continuous IoU with any GT box at every level of a sweep (the ``continuous`` box rule).

    Args:
        sweep: the components at every level.
        gt_boxes: (G, 4) or (4,) GT boxes, in the map's pixel frame.
        multi_contour: True: every component's box competes (MaxBoxAccV2); False: only the
            component with the most pixels (MaxBoxAcc).

    Returns:
        (T,) float64; a level without any component scores :data:`EMPTY_BOX` (IoU 0).
    """
    gt = check_boxes(gt_boxes, "gt_boxes")  # (G, 4)
    pick = np.arange(len(sweep.levels)) if multi_contour else largest_per_level(sweep)
    boxes, levels = sweep.boxes[pick], sweep.levels[pick]  # (K, 4), (K,)
    best = np.full(sweep.num_levels, -1.0)  # (T,)
    if len(boxes):
        np.maximum.at(best, levels, iou_matrix(boxes, gt).max(axis=1))
    best[best < 0] = iou_matrix(EMPTY_BOX, gt).max()
    return best


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
    per-level work is on the (levels x basins) table, small for smooth maps. A uint8 map (the
    quantised map of wsolevaluation's rule) gets its entry levels from a 256-entry table.

    Args:
        values: (H, W) map.
        cutoffs: (T,) ascending cutoffs; component k exists where ``values > cutoffs[level]``.
        connectivity: 4 or 8.
        workspace: scratch buffers to reuse (see :class:`SweepWorkspace`); None = fresh ones.

    Returns:
        The :class:`ComponentSweep`, equal array for array to :func:`sweep_reference`'s.
    """
    small = values if isinstance(values, np.ndarray) and values.dtype == np.uint8 else None
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
    if small is not None:  # 256 values: entry levels and buckets by table look-up
        entry, bucket = _entry_levels_uint8(small, c, ws)
    else:
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
    first, last, x0, x1, count = _run_stats(key, width, cells)

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
