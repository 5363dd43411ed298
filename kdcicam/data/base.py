"""The one dataset interface every format loads into.

A dataset is an index (:class:`DatasetIndex`) of :class:`Sample` records: image path, class label,
every ground-truth box in *original pixel coordinates* as ``(x0, y0, x1, y1)`` floats (continuous
coordinates: a CUB box ``x y w h`` becomes ``(x, y, x + w, y + h)``), and a stable image id.
Several GT boxes per image are first-class: localization is correct if IoU >= 0.5 with any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), original pixels, x1 > x0, y1 > y0


@dataclass(frozen=True)
class Sample:
    """One image of a dataset split."""

    image_id: str  # stable id, unique within the dataset (e.g. the path relative to images/)
    path: Path  # absolute path of the image file, inside the dataset root
    label: int  # 0-based class index
    boxes: tuple[Box, ...]  # every GT box of the image, original pixel coordinates
    size: tuple[int, int] | None = None  # (width, height) when the index knows it, else None


@dataclass(frozen=True)
class DatasetIndex:
    """A loaded, validated dataset: classes and the train / val / test splits."""

    name: str  # "synthetic" | "cub" | "ilsvrc" | "wsol"
    root: Path
    classes: tuple[str, ...]  # class names, index = label
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]
    val: tuple[Sample, ...] = ()  # carved from train by kdcicam.data.split, never from test
    fingerprint: str = ""  # hash of the index files (or generator parameters): identifies the data
    meta: dict = field(default_factory=dict, compare=False)  # e.g. generator.json contents

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> tuple[Sample, ...]:
        """Return the split called ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r} (expected train, val or test)")
        return getattr(self, name)
