"""Object masks of a dataset, in wsolevaluation's OpenImages layout (``masks.txt`` at the dataset root).

``masks.txt`` lines are ``<image_id>,<mask>,<ignore>`` as in wsolevaluation's OpenImages
``localization.txt``: paths relative to the dataset root, several lines for several instance masks
of one image, the ignore mask (may be empty) on the first. The synthetic benchmark writes one for
every image (``kdcicam data synth``); a dataset without the file has no masks, and its runs no PxAP.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from kdcicam.core.errors import DataError
from kdcicam.data.base import Sample

MASKS_FILE = "masks.txt"


def dataset_root(sample: Sample) -> Path:
    """The dataset root of a sample whose path is ``<root>/images/<image_id>``."""
    depth = len(PurePosixPath(sample.image_id).parts)
    return sample.path.parents[depth]


def object_masks(samples: Sequence[Sample]) -> tuple[Path, dict[str, tuple[tuple[str, ...], str]]] | None:
    """The mask root and, per image id of ``samples``, its (instance masks, ignore mask) paths.

    Returns:
        None when the dataset has no ``masks.txt`` or a sample has no mask line.

    Raises:
        DataError: a malformed ``masks.txt`` line (file and line named).
    """
    if not samples:
        return None
    root = dataset_root(samples[0])
    path = root / MASKS_FILE
    if not path.is_file():
        return None
    masks: dict[str, tuple[list[str], str]] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        fields = raw.split(",")
        if len(fields) != 3 or not fields[0] or not fields[1]:
            raise DataError(f"{path}:{number}: expected <image_id>,<mask>,<ignore>; got {raw!r}")
        if fields[0] in masks:
            masks[fields[0]][0].append(fields[1])
        else:
            masks[fields[0]] = ([fields[1]], fields[2])
    if any(s.image_id not in masks for s in samples):
        return None
    return root, {s.image_id: (tuple(masks[s.image_id][0]), masks[s.image_id][1]) for s in samples}


def read_gray_nearest(path: Path | str, size: tuple[int, int], kind: str) -> np.ndarray:
    """A mask image as 8-bit gray, resized to ``size`` = (W, H) with OpenCV's nearest rule (source pixel
    ``floor(i * h / H)``), as wsolevaluation reads its masks.

    Args:
        kind: what the file is, for the error ("mask file", "region mask").

    Returns:
        (H, W) uint8.

    Raises:
        DataError: missing or unreadable file.
    """
    try:
        with Image.open(path) as img:
            gray = np.asarray(img.convert("L"), dtype=np.uint8)  # (h, w)
    except FileNotFoundError:
        raise DataError(f"{path}: no such {kind}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable {kind} ({type(exc).__name__}: {exc})") from None
    width, height = size
    rows = np.minimum((np.arange(height) * (gray.shape[0] / height)).astype(np.int64), gray.shape[0] - 1)
    cols = np.minimum((np.arange(width) * (gray.shape[1] / width)).astype(np.int64), gray.shape[1] - 1)
    return gray[rows[:, None], cols[None, :]]  # (H, W)
