"""One split of wsolevaluation metadata, read the way wsolevaluation reads it (no image files needed).

A split folder (``metadata/<dataset>/<split>``) holds::

    image_ids.txt      <image_id>                          one per line, in order
    image_sizes.txt    <image_id>,<w>,<h>                  needed for boxes
    localization.txt   <image_id>,<x0>,<y0>,<x1>,<y1>      boxes (several lines = several boxes), or
                       <image_id>,<mask>,<ignore>          masks (OpenImages; several lines = several
                                                           instance masks, the ignore mask on the first)

This is everything wsolevaluation's ``evaluate_wsol`` reads to score saved CAMs: nothing about the
other splits, the class labels or the images. Boxes of zero width or height are kept (they score
with the "+1" IoU); a box with x1 < x0 or y1 < y0 is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from kdcicam.core.errors import DataError

SPLIT_CHOICES = ("test", "val")


@dataclass(frozen=True)
class SplitMetadata:
    """What one split's metadata says about its images."""

    folder: Path
    image_ids: tuple[str, ...]
    sizes: dict[str, tuple[int, int]]  # image id -> (W, H)
    boxes: dict[str, tuple[tuple[float, float, float, float], ...]]  # image id -> x0y0x1y1 boxes
    masks: dict[str, tuple[tuple[str, ...], str]]  # image id -> (instance mask paths, ignore mask path)


def split_folder(metadata: Path | str, split: str | None) -> Path:
    """The split folder: ``metadata`` itself when it holds ``image_ids.txt``, else ``metadata/split``.

    Raises:
        DataError: neither holds ``image_ids.txt`` (the message says which split to name).
    """
    root = Path(metadata)
    if split is not None and split not in SPLIT_CHOICES:
        raise DataError(f"--split {split!r}: must be one of {', '.join(SPLIT_CHOICES)}")
    if split is None:
        if (root / "image_ids.txt").is_file():
            return root
        found = [s for s in SPLIT_CHOICES if (root / s / "image_ids.txt").is_file()]
        hint = f"; name one with --split ({' or '.join(found)})" if found else ""
        raise DataError(f"{root}: no image_ids.txt (not a wsolevaluation split folder){hint}")
    folder = root if (root / "image_ids.txt").is_file() and root.name == split else root / split
    if not (folder / "image_ids.txt").is_file():
        raise DataError(f"{folder}: no image_ids.txt (not a wsolevaluation split folder)")
    return folder


def read_split(folder: Path | str) -> SplitMetadata:
    """Read one split folder.

    Raises:
        DataError: a missing or malformed file, naming the file and line.
    """
    folder = Path(folder)
    ids = [fields[0] for _, fields in _rows(folder / "image_ids.txt", (1,))]
    if not ids:
        raise DataError(f"{folder / 'image_ids.txt'}: no image ids")
    seen: set[str] = set()
    for image_id in ids:
        if image_id in seen:
            raise DataError(f"{folder / 'image_ids.txt'}: image id {image_id!r} is listed twice")
        seen.add(image_id)
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    masks: dict[str, tuple[list[str], str]] = {}
    loc = folder / "localization.txt"
    for line, fields in _rows(loc, (3, 5)):
        image_id = fields[0]
        if len(fields) == 5:
            box = tuple(_number(loc, line, v) for v in fields[1:])
            if box[2] < box[0] or box[3] < box[1]:
                raise DataError(f"{loc}:{line}: box {fields[1:]} has x1 < x0 or y1 < y0")
            boxes.setdefault(image_id, []).append(box)  # type: ignore[arg-type]
        elif image_id in masks:
            masks[image_id][0].append(fields[1])
        else:
            masks[image_id] = ([fields[1]], fields[2])
    sizes: dict[str, tuple[int, int]] = {}
    if boxes:
        path = folder / "image_sizes.txt"
        for line, fields in _rows(path, (3,)):
            w, h = (_number(path, line, v) for v in fields[1:])
            if w <= 0 or h <= 0 or w != int(w) or h != int(h):
                raise DataError(f"{path}:{line}: image size {fields[1]}x{fields[2]} must be positive integers")
            sizes[fields[0]] = (int(w), int(h))
    return SplitMetadata(folder, tuple(ids), sizes, {k: tuple(v) for k, v in boxes.items()},
                         {k: (tuple(v[0]), v[1]) for k, v in masks.items()})


def _rows(path: Path, widths: tuple[int, ...]) -> list[tuple[int, list[str]]]:
    """(line number, comma-separated fields) of every non-blank line, each of an allowed width."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        fields = [f.strip() for f in raw.split(",")]
        if len(fields) not in widths or not fields[0]:
            want = " or ".join(str(w) for w in widths)
            raise DataError(f"{path}:{number}: expected {want} comma-separated fields, got {raw.strip()!r}")
        out.append((number, fields))
    return out


def _number(path: Path, line: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}:{line}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}:{line}: {text!r} is not a finite number")
    return value
