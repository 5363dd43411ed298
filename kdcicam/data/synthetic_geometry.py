"""The embedded benchmark's object geometry: the part's place and shapes, the object's analytic extent,
shape masks and the tight box of a mask (pixel (row i, column j) covers [j, j+1) x [i, i+1))."""

from __future__ import annotations

import math

import numpy as np

from kdcicam.data.base import Box

PART_OFFSET = 0.85  # part centre on the long axis, as a fraction of the semi-major axis
PLACEMENT_MARGIN = 0.5  # pixels kept free between the object's analytic box and the border


def object_extent(a: float, b: float, angle: float, end: int, r: float,
                  shape: str) -> tuple[float, float, float, float]:
    """Analytic box of body ∪ part relative to the body centre: (x_lo, x_hi, y_lo, y_hi)."""
    c, s = math.cos(angle), math.sin(angle)
    ex = math.sqrt((a * c) ** 2 + (b * s) ** 2)  # rotated ellipse half-extents
    ey = math.sqrt((a * s) ** 2 + (b * c) ** 2)
    px, py = end * PART_OFFSET * a * c, end * PART_OFFSET * a * s  # part centre
    if shape == "disk":
        rx = ry = r
    elif shape == "square":
        rx = ry = _square_half_side(r) * (abs(c) + abs(s))
    else:
        rx = ry = _diamond_half_diagonal(r) * max(abs(c), abs(s))
    return min(-ex, px - rx), max(ex, px + rx), min(-ey, py - ry), max(ey, py + ry)


def _square_half_side(r: float) -> float:
    """Half side of the square with the area of a disk of radius r (shape is not a size cue)."""
    return r * math.sqrt(math.pi) / 2


def _diamond_half_diagonal(r: float) -> float:
    """Half diagonal of the diamond with the area of a disk of radius r."""
    return r * math.sqrt(math.pi / 2)


def part_mask(du: np.ndarray, dv: np.ndarray, r: float, shape: str) -> np.ndarray:
    """(H, W) bool mask of an equal-area disk / square / diamond of 'radius' r at the origin."""
    if shape == "disk":
        return du ** 2 + dv ** 2 <= r ** 2
    if shape == "square":
        return np.maximum(np.abs(du), np.abs(dv)) <= _square_half_side(r)
    if shape == "diamond":
        return np.abs(du) + np.abs(dv) <= _diamond_half_diagonal(r)
    raise ValueError(f"unknown part shape {shape!r}")


def mask_box(mask: np.ndarray) -> Box:
    """Tight box of a non-empty mask in continuous pixel coordinates.

    Args:
        mask: (H, W) bool.

    Returns:
        ``(x0, y0, x1, y1)`` with x0 = first column, x1 = last column + 1 (likewise rows).
    """
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        raise ValueError("mask_box: empty mask")
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)
