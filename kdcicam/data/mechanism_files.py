"""The synthetic benchmark's mechanism files: where each image's part and body lie, whether its context
is its class's own, and its context-swapped copy (docs/synthetic.md, "Mechanism files").

``mechanism.txt`` at the dataset root has one line per image, no header::

    <image_id>,<region mask>,<preferred>,<context-swapped copy>,<its context>

paths relative to the dataset root; ``preferred`` 1 when the image's context is its class's preferred
one, else 0; the last two fields are empty for a train image (only test images have a copy). A region
mask is a PNG of the image's size: 0 background, 128 body (the object minus the part), 255 part. A
copy is the test image's object drawn on another class's context (``context_swap/``, never listed in
``images.txt``, so no split ever reads it). A dataset without the file (every real one) has none of this.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdcicam.core.errors import DataError
from kdcicam.data.base import Sample
from kdcicam.data.object_masks import dataset_root, read_gray_nearest

MECHANISM_FILE = "mechanism.txt"
REGIONS_DIR = "regions"
CONTEXT_SWAP_DIR = "context_swap"
BACKGROUND, BODY, PART = 0, 1, 2  # region labels as read
_GRAY = {BACKGROUND: 0, BODY: 128, PART: 255}  # as written in the PNG


@dataclass(frozen=True)
class MechanismEntry:
    """One image's mechanism files (paths relative to the dataset root)."""

    regions: str
    preferred: bool  # its context is its class's preferred one
    swapped: str | None  # its context-swapped copy (test images only)
    swapped_context: int | None  # 0-based context of the copy


def region_labels(body: np.ndarray, part: np.ndarray) -> np.ndarray:
    """The region mask as written: (H, W) uint8, 255 part, 128 body (object minus part), 0 background.

    Args:
        body: (H, W) bool, the whole body (including what the part covers).
        part: (H, W) bool.
    """
    out = np.full(body.shape, _GRAY[BACKGROUND], dtype=np.uint8)  # (H, W)
    out[body] = _GRAY[BODY]
    out[part] = _GRAY[PART]
    return out


def mechanism_line(image_id: str, regions: str, preferred: bool, swapped: str | None,
                   swapped_context: int | None) -> str:
    """One ``mechanism.txt`` line."""
    copy = "" if swapped is None else swapped
    context = "" if swapped_context is None else str(int(swapped_context))
    return f"{image_id},{regions},{int(preferred)},{copy},{context}"


def mechanism_entries(samples: Sequence[Sample]) -> tuple[Path, dict[str, MechanismEntry]] | None:
    """The dataset root and, per image id of ``samples``, its mechanism files.

    Returns:
        None when the dataset has no ``mechanism.txt`` or a sample has no line in it.

    Raises:
        DataError: a malformed line (file and line named).
    """
    if not samples:
        return None
    root = dataset_root(samples[0])
    path = root / MECHANISM_FILE
    if not path.is_file():
        return None
    entries: dict[str, MechanismEntry] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        fields = raw.split(",")
        if (len(fields) != 5 or not fields[0] or not fields[1] or fields[2] not in ("0", "1")
                or bool(fields[3]) != bool(fields[4]) or not (fields[4] == "" or fields[4].isdigit())):
            raise DataError(f"{path}:{number}: expected <image_id>,<regions>,<0|1>,<copy>,<context>; got {raw!r}")
        entries[fields[0]] = MechanismEntry(regions=fields[1], preferred=fields[2] == "1",
                                            swapped=fields[3] or None,
                                            swapped_context=int(fields[4]) if fields[4] else None)
    if any(s.image_id not in entries for s in samples):
        return None
    return root, {s.image_id: entries[s.image_id] for s in samples}


def context_swapped(samples: Sequence[Sample]) -> list[Sample] | None:
    """``samples`` with each image replaced by its context-swapped copy (same id, label and boxes).

    Returns:
        None when the dataset has no mechanism files or a sample has no copy (a train image, a real dataset).
    """
    found = mechanism_entries(samples)
    if found is None:
        return None
    root, entries = found
    if any(entries[s.image_id].swapped is None for s in samples):
        return None
    return [dataclasses.replace(s, path=root / str(entries[s.image_id].swapped)) for s in samples]


def read_regions(path: Path | str, size: tuple[int, int]) -> np.ndarray:
    """A region mask resized to ``size`` = (W, H) with OpenCV's nearest rule (as PxAP reads masks).

    Returns:
        (H, W) uint8 of :data:`BACKGROUND`, :data:`BODY`, :data:`PART`.

    Raises:
        DataError: missing or unreadable file.
    """
    resized = read_gray_nearest(path, size, "region mask")  # (H, W)
    # nearest values are the written grays; split halfway between them
    return np.where(resized >= 192, PART, np.where(resized >= 64, BODY, BACKGROUND)).astype(np.uint8)
