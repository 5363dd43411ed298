"""The bounding boxes of the connected components of a uint8 map at every cutoff, and nothing else.

:func:`level_boxes` returns what wsolevaluation's MaxBoxAccV2 needs from
:func:`kdcicam.evaluation.sweep.sweep_components`, the box of every component at every cutoff, with
less work: no pixel counts and no order inside a level. It shares the sweep's first two steps
(entry levels, steepest-ascent basins, basin merges per level, :mod:`kdcicam.evaluation.sweep_steps`)
and replaces its per-(basin, level) run statistics with per-basin row and column profiles:

- rowmax[b, y] = the highest entry level of basin b's pixels in row y, so basin b's piece at
  cutoff i (its pixels with entry level > i, connected by construction) spans the rows y with
  rowmax[b, y] > i; its first row is the number of rows before the prefix maximum of rowmax[b]
  exceeds i, its last row likewise from the suffix maximum. Columns the same way.
- A component at cutoff i is a union of pieces (the basins with one label at i): its box is the
  min / max of their boxes.

The tables are (lines x basins): a map with more basins than about a pixel per line and basin (noise)
goes through :func:`kdcicam.evaluation.sweep.sweep_components` instead.
"""

from __future__ import annotations

import numpy as np

from kdcicam.evaluation.sweep import sweep_components
from kdcicam.evaluation.sweep_steps import (
    _BUCKET_BITS,
    SweepWorkspace,
    _ascent_roots,
    _basin_labels,
    _entry_levels_uint8,
)

__all__ = ["level_boxes", "tie_ranks"]

RANK_LIMIT = (1 << _BUCKET_BITS) - 1  # tie ranks lie in [0, RANK_LIMIT]


def tie_ranks(order: np.ndarray) -> np.ndarray:
    """(N,) int64 ranks in [0, RANK_LIMIT] that rise with ``order`` (trunc of its min-max scaled values).

    A float CAM's ranks refine the ties of its quantised map: :func:`level_boxes` with them climbs
    towards the CAM's real maxima, so its basins are few (``RANK_LIMIT - ranks`` for the reversed map).

    Args:
        order: (H, W) finite real map.
    """
    o = np.asarray(order).ravel()
    lo, hi = float(o.min()), float(o.max())
    scale = RANK_LIMIT / (hi - lo) if hi > lo else 0.0
    if not 0 < scale < np.inf:  # constant, or a span too small to scale: no tie broken
        return np.zeros(o.size, dtype=np.int64)
    scaled = (o - lo) * scale  # (N,) float64 in [0, RANK_LIMIT] up to rounding
    np.clip(scaled, 0, RANK_LIMIT, out=scaled)
    return scaled.astype(np.int64)


def level_boxes(values: np.ndarray, cutoffs: np.ndarray, connectivity: int, workspace: SweepWorkspace,
                ranks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Box of every connected component of ``values > cutoffs[i]``, for every i.

    Args:
        values: (H, W) uint8 map.
        cutoffs: (T,) ascending float64 cutoffs.
        connectivity: 4 or 8.
        workspace: scratch buffers (reused across same-size maps).
        ranks: (N,) int64 in [0, RANK_LIMIT]: the order of pixels inside one entry level in the
            steepest ascent (default: ``values``). Any ranks give the same result; ranks with
            fewer ties than ``values`` that rise with it (:func:`tie_ranks` of the float CAM behind
            a quantised map) give fewer basins, so less work.

    Returns:
        levels (K,) int64 and boxes (K, 4) float64 continuous xyxy, grouped by ascending level (the
        components of one level in no particular order): the same set of (level, box) pairs as
        :func:`kdcicam.evaluation.sweep.sweep_reference`.
    """
    height, width = values.shape
    num = len(cutoffs)
    vmin, vmax = int(values.min()), int(values.max())
    if vmin == vmax:  # constant map: the whole image at the levels below the value, else nothing
        top = int(np.searchsorted(cutoffs, vmin, side="left"))
        return np.arange(top), np.tile([0.0, 0.0, float(width), float(height)], (top, 1))
    ws = workspace.prepare(height, width)
    entry, bucket = _entry_levels_uint8(values, cutoffs, ws)  # (N,) each
    if not entry.any():
        return np.zeros(0, np.int64), np.zeros((0, 4))
    if ranks is not None:
        np.copyto(bucket, ranks)
    root, spare, basin = _ascent_roots(entry, bucket, ws, connectivity)  # (N,) each
    roots = np.flatnonzero(root == ws.index)
    roots = roots[entry[roots] > 0]  # (B,) the foreground basins' roots
    nb = len(roots)
    if nb * (height + width) > 2 * values.size:  # many small basins (noise): the per-line tables
        found = sweep_components(values, cutoffs, connectivity, ws)  # would outgrow the image
        return found.levels, found.boxes
    spare.fill(nb)  # id nb: pixels of no foreground basin
    spare[roots] = np.arange(nb)
    np.take(spare, root, out=basin, mode="clip")  # (N,) basin of every pixel
    label = _basin_labels(basin, entry, ws.column, connectivity, nb, num)  # (T, B)
    y0, y1 = _piece_spans(basin, entry, ws.row, height, nb, num, root)  # (T, B) each
    x0, x1 = _piece_spans(basin, entry, ws.column, width, nb, num, root)
    live = y0 < height  # (T, B) basin b has a piece at level i
    comp = (np.arange(num)[:, None] * nb + label)[live]  # (L,) component of each live piece
    cells = num * nb
    c_y0, c_x0 = np.full(cells, height), np.full(cells, width)
    c_y1, c_x1 = np.full(cells, -1), np.full(cells, -1)
    np.minimum.at(c_y0, comp, y0[live])
    np.maximum.at(c_y1, comp, y1[live])
    np.minimum.at(c_x0, comp, x0[live])
    np.maximum.at(c_x1, comp, x1[live])
    used = np.flatnonzero(c_y1 >= 0)  # (K,) by level, then label
    boxes = np.stack([c_x0[used], c_y0[used], c_x1[used] + 1, c_y1[used] + 1], axis=1).astype(np.float64)
    return used // nb, boxes


def _piece_spans(basin: np.ndarray, entry: np.ndarray, coord: np.ndarray, extent: int, nb: int, num: int,
                 scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last row (or column) of every basin's piece at every level.

    Args:
        basin: (N,) basin of every pixel (nb: none).
        entry: (N,) entry level of every pixel.
        coord: (N,) row (or column) of every pixel, in [0, extent).
        extent: H (or W).
        nb: number of basins B.
        num: number of levels T.
        scratch: (N,) int64 buffer (overwritten).

    Returns:
        first, last: (T, B) int64; first = extent and last = -1 where the piece is empty.
    """
    key = np.multiply(coord, nb + 1, out=scratch)
    key += basin  # (N,) coordinate * (B + 1) + basin
    top = np.zeros(extent * (nb + 1), dtype=np.int64)
    np.maximum.at(top, key, entry)
    top = top.reshape(extent, nb + 1)[:, :nb]  # (extent, B) highest entry level per row (column)
    # the piece at level i holds coordinate y iff top[y, b] > i; count the coordinates before the
    # first (after the last) one: coordinates whose prefix (suffix) maximum is still <= i
    ids = np.arange(nb)  # (B,)
    prefix = np.maximum.accumulate(top, axis=0) * nb + ids  # (extent, B) level * B + basin
    suffix = np.maximum.accumulate(top[::-1], axis=0) * nb + ids
    before = np.bincount(prefix.ravel(), minlength=(num + 1) * nb).reshape(num + 1, nb).cumsum(axis=0)
    after = np.bincount(suffix.ravel(), minlength=(num + 1) * nb).reshape(num + 1, nb).cumsum(axis=0)
    return before[:num], extent - 1 - after[:num]  # (T, B) each
