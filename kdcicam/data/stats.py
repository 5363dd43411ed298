"""``kdcicam data stats``: the geometry of a dataset's boxes, to set the benchmark beside a real dataset.

Per split and overall: images and boxes per class, image sizes, the share of the image a GT box covers
(box area / image area) and how far the box centre lies from the image centre (per axis as a fraction of
the image side, and the distance in those units: 0 = centred, 0.707 = in a corner).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from kdcicam.data.base import DatasetIndex, Sample

QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)


def distribution(values: Sequence[float]) -> dict[str, float] | None:
    """Mean and the :data:`QUANTILES` of ``values`` (linear interpolation), rounded to 4 digits; None if empty."""
    if len(values) == 0:
        return None
    arr = np.asarray(values, dtype=float)
    out = {"mean": round(float(arr.mean()), 4)}
    out.update({f"p{round(100 * q):02d}": round(float(np.quantile(arr, q)), 4) for q in QUANTILES})
    return out


def box_geometry(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(area share, |centre x offset|, |centre y offset|, centre distance) of one box in a (width, height) image.

    Offsets are fractions of the image side: ``|(x0 + x1) / 2 / W - 1/2|``; distance = hypot of the two.
    """
    x0, y0, x1, y1 = box
    w, h = size
    share = (x1 - x0) * (y1 - y0) / (w * h)
    dx, dy = abs((x0 + x1) / (2 * w) - 0.5), abs((y0 + y1) / (2 * h) - 0.5)
    return share, dx, dy, math.hypot(dx, dy)


def _counts(labels: list[int], classes: int) -> dict[str, float]:
    counts = Counter(labels)
    per = [counts.get(c, 0) for c in range(classes)]
    return {"min": min(per), "median": float(np.median(per)), "max": max(per)} if per else {}


def split_stats(samples: Sequence[Sample], classes: int) -> dict:
    """JSON-ready geometry of one split (see the module docstring)."""
    sized = [s for s in samples if s.size is not None]
    geometry = [box_geometry(b, s.size) for s in sized for b in s.boxes]  # type: ignore[arg-type]
    return {
        "images": len(samples),
        "boxes": sum(len(s.boxes) for s in samples),
        "images_per_class": _counts([s.label for s in samples], classes),
        "boxes_per_class": _counts([s.label for s in samples for _ in s.boxes], classes),
        "boxes_per_image": distribution([len(s.boxes) for s in samples]),
        "image_width": distribution([s.size[0] for s in sized]),  # type: ignore[index]
        "image_height": distribution([s.size[1] for s in sized]),  # type: ignore[index]
        "sizes_known": len(sized),
        "box_area_share": distribution([g[0] for g in geometry]),
        "centre_offset_x": distribution([g[1] for g in geometry]),
        "centre_offset_y": distribution([g[2] for g in geometry]),
        "centre_distance": distribution([g[3] for g in geometry]),
    }


def dataset_stats(index: DatasetIndex) -> dict:
    """Geometry of every split of ``index`` and of all its images together."""
    splits = {name: index.split(name) for name in ("train", "val", "test") if index.split(name)}
    every = [s for samples in splits.values() for s in samples]
    return {"name": index.name, "root": str(index.root), "classes": index.num_classes,
            "all": split_stats(every, index.num_classes),
            **{name: split_stats(samples, index.num_classes) for name, samples in splits.items()}}
