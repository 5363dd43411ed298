"""One entry point for every dataset format: detect it, load it, carve the validation split."""

from __future__ import annotations

from pathlib import Path

from kdcicam.core.errors import ConfigError, DataError
from kdcicam.data._io import ScanResult, index_or_raise
from kdcicam.data.base import DatasetIndex
from kdcicam.data.cub import scan_cub
from kdcicam.data.ilsvrc import MAPPING_FILE, scan_ilsvrc
from kdcicam.data.split import carve_validation
from kdcicam.data.wsol import EXTRA_FILE, scan_wsol

FORMATS = ("cub", "ilsvrc", "wsol")
_ALIASES = {"synthetic": "cub"}  # the embedded benchmark is written in the CUB layout
_SIGNS = {  # format -> files whose presence identifies it (checked in this order)
    "cub": ("images.txt",),
    "ilsvrc": (MAPPING_FILE,),
    "wsol": ("train/image_ids.txt", "test/image_ids.txt", "metadata/train/image_ids.txt",
             "metadata/test/image_ids.txt"),
}


def detect_format(root: Path | str) -> str:
    """Which layout a dataset folder uses: ``"cub"``, ``"ilsvrc"`` or ``"wsol"`` (first match wins).

    Raises:
        DataError: The folder is missing or matches no format (the message lists what was looked for).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")
    for fmt, signs in _SIGNS.items():
        if any((root / sign).is_file() for sign in signs):
            return fmt
    looked = "; ".join(f"{fmt}: {' or '.join(signs)}" for fmt, signs in _SIGNS.items())
    raise DataError(f"{root}: unknown dataset layout (looked for {looked})")


def resolve_format(root: Path | str, format: str) -> str:
    """``format`` checked and made concrete (``"auto"`` detected, ``"synthetic"`` -> ``"cub"``)."""
    fmt = _ALIASES.get(format, format)
    if fmt == "auto":
        return detect_format(root)
    if fmt not in FORMATS:
        raise ConfigError(f"format: unknown {format!r} (expected auto, {', '.join(FORMATS)} or synthetic)")
    return fmt


def scan_dataset(root: Path | str, format: str = "auto", image_root: Path | str | None = None,
                 read_headers: bool = True, decode: bool = False) -> ScanResult:
    """Validate a dataset folder of any format, collecting every defect.

    Args:
        root: Dataset folder (for wsol: the metadata folder, or a folder holding ``metadata/``).
        format: ``auto``, ``cub`` (alias ``synthetic``), ``ilsvrc`` or ``wsol``.
        image_root: wsol only: folder the metadata's image paths are relative to.
        read_headers: Read every image header (every format: sizes, boxes inside images, JPEG/PNG
            files cut short); ``False``: only check that each image file exists.
        decode: Also decode every image's pixels.

    Returns:
        The scan (index ``None`` when there are defects).
    """
    fmt = resolve_format(root, format)
    if fmt == "cub":
        return _require_splits(scan_cub(root, read_headers=read_headers, decode=decode), root)
    if fmt == "ilsvrc":
        return _require_splits(scan_ilsvrc(root, read_headers=read_headers, decode=decode), root)
    metadata_dir, default_root = _wsol_dirs(Path(root))
    return _require_splits(scan_wsol(metadata_dir, image_root if image_root is not None else default_root,
                                     read_headers=read_headers, decode=decode), root)


def _require_splits(scan: ScanResult, root: Path | str) -> ScanResult:
    """A dataset without train or without test images is a defect: it would train to "finished" with
    no metric (no test images) or learn nothing (no train images)."""
    if scan.index is None:
        return scan
    empty = [name for name in ("train", "test") if not scan.index.split(name)]
    if not empty:
        return scan
    defects = [f"{root}: the {name} split has no images" for name in empty]
    return ScanResult(index=None, defects=defects, modes=scan.modes)


def _wsol_dirs(root: Path) -> tuple[Path, Path | None]:
    """The metadata folder, and the image root implied by the layout (``root/metadata`` -> ``root``)."""
    if any((root / split / "image_ids.txt").is_file() for split in ("train", "test")):
        return root, None
    metadata = root / "metadata"
    return metadata, None if (metadata / EXTRA_FILE).is_file() else root


def load_dataset(root: Path | str, format: str = "auto", val_fraction: float = 0.1, split_seed: int = 0,
                 image_root: Path | str | None = None, read_headers: bool = True) -> DatasetIndex:
    """Load, validate and split a dataset.

    Args:
        root: Dataset folder (see :func:`scan_dataset`).
        format: ``auto``, ``cub``/``synthetic``, ``ilsvrc`` or ``wsol``.
        val_fraction: Share of each class's train images carved into val (kept as is when the
            dataset has its own val split).
        split_seed: Seed of that split.
        image_root: wsol only: folder the metadata's image paths are relative to.
        read_headers: Read every image header first (see :func:`scan_dataset`).

    Returns:
        The index with train / val / test.

    Raises:
        DataError: The dataset has a defect (the first is named, with a count of the others).
        ConfigError: Unknown ``format``.
    """
    index = index_or_raise(scan_dataset(root, format, image_root=image_root, read_headers=read_headers))
    return carve_validation(index, val_fraction, split_seed)
