"""``kdcicam data check``: validate a dataset folder, list every defect, summarize what it holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdcicam.core.errors import KdcicamError
from kdcicam.data._io import GRAY_MODES, first_defect_error
from kdcicam.data.base import DatasetIndex
from kdcicam.data.loader import resolve_format, scan_dataset


@dataclass(frozen=True)
class CheckReport:
    """The outcome of a check: a summary when the dataset is sound, else its defect lines."""

    summary: dict | None
    defects: tuple[str, ...]


def run_check(path: Path | str, format: str = "auto", image_root: Path | str | None = None,
              read_headers: bool = True, deep: bool = False) -> CheckReport:
    """Scan a dataset folder once and report every defect, or summarize it.

    Args:
        path: Dataset folder.
        format: ``auto``, ``cub``/``synthetic``, ``ilsvrc`` or ``wsol``.
        image_root: wsol only: folder the metadata's image paths are relative to.
        read_headers: Read every image header (sizes, modes, boxes inside images). Cheap for CUB;
            minutes for the 1.28M ILSVRC train images.
        deep: Also decode every image (finds truncated files).

    Returns:
        ``CheckReport(summary, ())`` or ``CheckReport(None, defect lines)``; never raises for bad input.
    """
    try:
        fmt = resolve_format(path, format)
        scan = scan_dataset(path, fmt, image_root=image_root, read_headers=read_headers, decode=deep)
    except KdcicamError as exc:
        return CheckReport(None, (str(exc),))
    if scan.defects or scan.index is None:
        return CheckReport(None, tuple(scan.defects) or (f"{path}: dataset could not be indexed",))
    return CheckReport(summarize(scan.index, fmt, scan.modes), ())


def find_defects(path: Path | str, format: str = "auto", image_root: Path | str | None = None,
                 deep: bool = False) -> list[str]:
    """Every defect of a dataset folder, one line each (``<file>:<line>: <what>``); empty if sound."""
    return list(run_check(path, format, image_root=image_root, deep=deep).defects)


def check_dataset(path: Path | str, format: str = "auto", image_root: Path | str | None = None,
                  deep: bool = False) -> dict:
    """Summary of a sound dataset folder (see :func:`summarize`).

    Raises:
        DataError: The first defect (with a count of the others; :func:`find_defects` lists all).
    """
    report = run_check(path, format, image_root=image_root, deep=deep)
    if report.defects:
        raise first_defect_error(list(report.defects))
    return report.summary


def summarize(index: DatasetIndex, fmt: str, modes: dict[str, str]) -> dict:
    """JSON-ready facts about an index.

    Args:
        index: The loaded dataset.
        fmt: The format it was read as.
        modes: PIL mode per image id, for the images whose header was read.

    Returns:
        format, name, classes, images per split, boxes (total, max per image, images without any),
        image width / height ``[min, max]`` over the known sizes, grayscale count, fingerprint.
    """
    samples = (*index.train, *index.val, *index.test)
    sizes = [s.size for s in samples if s.size is not None]
    box_counts = [len(s.boxes) for s in samples]
    return {
        "format": fmt,
        "name": index.name,
        "root": str(index.root),
        "classes": index.num_classes,
        "train": len(index.train),
        "val": len(index.val),
        "test": len(index.test),
        "boxes": sum(box_counts),
        "max_boxes_per_image": max(box_counts, default=0),
        "images_without_boxes": sum(1 for n in box_counts if n == 0),
        "image_width": [min(w for w, _ in sizes), max(w for w, _ in sizes)] if sizes else None,
        "image_height": [min(h for _, h in sizes), max(h for _, h in sizes)] if sizes else None,
        "sizes_known": len(sizes),
        "grayscale": sum(1 for mode in modes.values() if mode in GRAY_MODES),
        "headers_read": len(modes),
        "fingerprint": index.fingerprint,
    }
