"""Mechanism measures on the synthetic benchmark: where the GT class's CAM puts its mass, and how much
classification rests on the context (docs/synthetic.md, "Mechanism measures").

Per image, from the GT class's CAM ``m`` as the standard protocol scores it (min-max normalised to
[0, 1] on the whole image resized to C x C) and the image's region mask read into the same frame:

    cam_mass_R = sum_{p in R} m_p / sum_p m_p        R = part, body (object minus part), background

so the three shares sum to 1; a map with no mass (flat: all zero) has none (NaN). Over a split:

- ``cam_mass_part`` / ``cam_mass_body`` / ``cam_mass_background``: the mean share over images;
- ``cam_mass_context``: the mean background share on images shown in their class's preferred context
  minus the mean on the others (NaN unless both groups have images). A CAM that spreads into every
  background alike scores 0; one drawn to the class's own context scores above 0;
- ``top1_cls_context_swapped``: Top-1 Cls on the context-swapped copy of the split;
- ``context_reliance`` = ``top1_cls - top1_cls_context_swapped`` (a fraction like every metric;
  x 100 = points).

Every value is a fraction; aggregates skip NaN images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kdcicam.data.mechanism_files import BACKGROUND, BODY, PART

# metric names (final metrics) and per-image record fields
MASS_METRICS = ("cam_mass_part", "cam_mass_body", "cam_mass_background")
MECHANISM_METRICS = (*MASS_METRICS, "cam_mass_context", "top1_cls_context_swapped", "context_reliance")
PREFERRED_FIELD = "context_preferred"
SWAPPED_FIELD = "correct_top1_cls_context_swapped"
MECHANISM_RECORD_FIELDS = (*MASS_METRICS, PREFERRED_FIELD, SWAPPED_FIELD)
_REGION_OF = {"cam_mass_part": PART, "cam_mass_body": BODY, "cam_mass_background": BACKGROUND}


def region_masses(cam: np.ndarray, regions: np.ndarray) -> dict[str, float]:
    """The share of a map's mass on the part, the body and the background.

    Args:
        cam: (H, W) map in [0, 1] (the GT class's min-max normalised CAM).
        regions: (H, W) region labels (:data:`PART`, :data:`BODY`, :data:`BACKGROUND`) in the map's frame.

    Returns:
        ``{cam_mass_part, cam_mass_body, cam_mass_background}``, summing to 1; all NaN when the map has
        no mass.

    Raises:
        ValueError: the two arrays differ in shape.
    """
    m = np.asarray(cam, dtype=np.float64)  # (H, W)
    if m.shape != np.shape(regions):
        raise ValueError(f"map {m.shape} and region mask {np.shape(regions)} differ in shape")
    total = m.sum()
    if not total > 0:
        return {name: math.nan for name in MASS_METRICS}
    return {name: float(m[regions == label].sum() / total) for name, label in _REGION_OF.items()}


def context_mass(background: Sequence[float], preferred: Sequence[bool]) -> float:
    """Mean background share on preferred-context images minus the mean on the others.

    Args:
        background: (N,) per-image ``cam_mass_background`` (NaN images are skipped).
        preferred: (N,) whether each image shows its class's preferred context.

    Returns:
        The difference, NaN unless both groups have an image with a value.
    """
    bg = np.asarray(background, dtype=np.float64)  # (N,)
    pref = np.asarray(preferred, dtype=bool)  # (N,)
    ok = ~np.isnan(bg)
    on, off = bg[ok & pref], bg[ok & ~pref]
    if not len(on) or not len(off):
        return math.nan
    return float(on.mean() - off.mean())


def mass_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The split's mass measures from per-image records carrying :data:`MASS_METRICS` and the preferred flag."""
    out = {}
    for name in MASS_METRICS:
        values = np.array([r[name] for r in records], dtype=np.float64)  # (N,)
        out[name] = float(np.nanmean(values)) if np.any(~np.isnan(values)) else math.nan
    out["cam_mass_context"] = context_mass([r["cam_mass_background"] for r in records],
                                           [r[PREFERRED_FIELD] for r in records])
    return out


def reliance_metrics(correct: Sequence[bool], correct_swapped: Sequence[bool]) -> dict[str, float]:
    """Top-1 Cls on the context-swapped copy and the drop from the split's own (fractions).

    Args:
        correct: (N,) Top-1 correctness on the split.
        correct_swapped: (N,) the same images' Top-1 correctness on their context-swapped copies.

    Raises:
        ValueError: the two differ in length or are empty.
    """
    a = np.asarray(correct, dtype=bool)
    b = np.asarray(correct_swapped, dtype=bool)
    if a.shape != b.shape or not len(a):
        raise ValueError(f"expected two equal, non-empty flag lists, got {len(a)} and {len(b)}")
    return {"top1_cls_context_swapped": float(b.mean()), "context_reliance": float(a.mean() - b.mean())}
