"""Shared helpers of the dataset loaders: defect collection, table parsing, safe paths, image headers.

Every loader *scans* a dataset into a :class:`ScanResult` that holds every defect found (one line
each, ``<file>:<line>: <what is wrong>``) instead of stopping at the first one; ``load_*`` functions
then raise :class:`~kdcicam.core.errors.DataError` with the first line, and ``kdcicam data check`` prints
them all.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from kdcicam.core.errors import DataError
from kdcicam.core.limits import limit
from kdcicam.data.base import Box, DatasetIndex
from kdcicam.data.header_count import header_read
from kdcicam.data.image_files import end_problem, file_problem, pixels_problem

BOX_TOLERANCE = 1.0  # px a box may exceed its image (annotation tools round to the pixel border)
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


class Defects:
    """One-line defect reports, ``<file>[:<line>]: <what>``, listed by file then line."""

    def __init__(self) -> None:
        self._items: list[tuple[str, int, str]] = []

    def add(self, where: str | Path, what: str, line: int | None = None) -> None:
        """Record one defect in file ``where`` (at 1-based ``line`` when given)."""
        place = f"{where}:{line}" if line is not None else str(where)
        self._items.append((str(where), line or 0, f"{place}: {what}"))

    @property
    def lines(self) -> list[str]:
        """The reports sorted by file, then line (file-level reports last); stable otherwise."""
        ordered = sorted(self._items, key=lambda item: (item[0], item[1] == 0, item[1]))
        return [text for _, _, text in ordered]

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class ScanResult:
    """What a loader found: the index (``None`` when there are defects), every defect, image modes."""

    index: DatasetIndex | None
    defects: list[str]
    modes: dict[str, str] = field(default_factory=dict)  # image_id -> PIL mode, headers read only


def first_defect_error(defects: list[str]) -> DataError:
    """One-line :class:`DataError` for a non-empty defect list (the first line, plus a count)."""
    more = len(defects) - 1
    suffix = ""
    if more:
        suffix = f" (and {more} more defect{'s' if more > 1 else ''}; `kdcicam data check` lists them)"
    return DataError(defects[0] + suffix)


def index_or_raise(scan: ScanResult) -> DatasetIndex:
    """Return the scanned index, or raise :class:`DataError` naming the first defect."""
    if scan.defects or scan.index is None:
        raise first_defect_error(scan.defects or ["dataset could not be indexed"])
    return scan.index


def read_text(path: Path, defects: Defects,
              required: bool = True) -> tuple[bytes, list[tuple[int, str]]] | None:
    """Read a UTF-8 text file as raw bytes plus its non-blank lines.

    Args:
        path: The file.
        defects: Receives "missing file" / "not UTF-8" reports.
        required: Whether a missing file is a defect (else ``None`` is returned silently).

    Returns:
        ``(raw bytes, [(1-based line number, stripped line), ...])`` or ``None`` when unreadable.
    """
    if not path.is_file():
        if required:
            defects.add(path, "missing file" if not path.exists() else "not a regular file")
        return None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        defects.add(path, f"cannot read file: {exc.strerror or exc}")
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        defects.add(path, f"not UTF-8 text (byte {exc.start})")
        return None
    lines = [(i, s.strip()) for i, s in enumerate(text.splitlines(), start=1)]
    return raw, [(i, s) for i, s in lines if s]


def parse_rows(
    path: Path,
    content: list[tuple[int, str]],
    defects: Defects,
    spec: str,
    types: tuple[type, ...],
    sep: str | None = None,
    skipped: set | None = None,
) -> list[tuple[int, list]]:
    """Parse table lines into typed columns, reporting each malformed line.

    Args:
        path: The file (named in defect lines).
        content: ``(line number, stripped text)`` pairs from :func:`read_text`.
        defects: Receives one report per malformed line.
        spec: The expected line, e.g. ``"<image_id> <class_id>"`` or ``"path,label"``.
        types: One of ``int``, ``float`` (finite), ``str`` per column. A final ``str`` column of a
            whitespace-separated table keeps any inner spaces.
        sep: Column separator; ``None`` = runs of whitespace.
        skipped: Receives the (typed, when possible) first field of every malformed line, so that
            callers do not report that key again as "missing".

    Returns:
        ``[(line number, [typed values...]), ...]`` for the well-formed lines.
    """
    names = [name.strip("<>") for name in (spec.split(sep) if sep else spec.split())]
    n = len(types)
    rows = []
    for line, text in content:
        if sep is None:
            fields = text.split(None, n - 1) if types[-1] is str else text.split()
        else:
            fields = [f.strip() for f in text.split(sep)]
        problem = None
        if len(fields) != n or not all(fields):
            problem = f"expected {n} columns '{spec}', got {len(fields)}: {text!r}"
        else:
            values = [_convert(typ, field) for typ, field in zip(types, fields)]
            bad = next((k for k, value in enumerate(values) if value is None), None)
            if bad is not None:
                kind = "an integer" if types[bad] is int else "a finite number"
                problem = f"{names[bad]} is not {kind}: {fields[bad]!r}"
        if problem is None:
            rows.append((line, values))
            continue
        defects.add(path, problem, line)
        if skipped is not None and fields:
            skipped.add(_convert(types[0], fields[0]))
    return rows


def _convert(typ: type, text: str) -> object:
    """``text`` as ``typ`` (``int``, finite ``float`` or ``str``), ``None`` when it is not one."""
    if typ is int:
        return parse_int(text)
    if typ is float:
        return parse_float(text)
    return text


def parse_int(text: str) -> int | None:
    """``int(text)`` or ``None`` (no floats, no blanks)."""
    try:
        return int(text)
    except ValueError:
        return None


def parse_float(text: str) -> float | None:
    """A finite ``float(text)`` or ``None``."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class PathGuard:
    """Checks that image paths relative to ``base`` stay inside the dataset ``root``.

    Rejects absolute paths, ``..`` components, and paths whose real location (symlinks followed)
    lies outside ``root``. Folder real paths are cached, so checking the 11,788 CUB images costs
    about one ``lstat`` each.
    """

    def __init__(self, base: Path, root: Path) -> None:
        self.base = Path(base)
        self.root = Path(root)
        self._base = os.fspath(base)
        self._real_root = os.path.realpath(root)
        self._dirs: dict[str, bool] = {}

    def _inside(self, real: str) -> bool:
        return real == self._real_root or real.startswith(self._real_root.rstrip(os.sep) + os.sep)

    def problem(self, rel: str) -> str | None:
        """Why image path ``rel`` is unsafe, or ``None`` when it is fine."""
        if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or rel.startswith("\\"):
            return f"absolute image path {rel!r} (must be relative to {self.base})"
        if ".." in rel.replace("\\", "/").split("/"):
            return f"image path {rel!r} escapes {self.base} ('..' component)"
        full = os.path.join(self._base, rel)
        parent = os.path.dirname(full)
        inside = self._dirs.get(parent)
        if inside is None:
            inside = self._dirs[parent] = self._inside(os.path.realpath(parent))
        if not inside or os.path.islink(full):
            real = os.path.realpath(full)
            if not self._inside(real):
                return f"image path {rel!r} resolves outside the dataset root {self.root} (to {real})"
        return None


def probe_image(path: Path, decode: bool = False) -> tuple[tuple[int, int, str] | None, str | None]:
    """Width, height and PIL mode of an image from its header, or why it cannot be read.

    Args:
        path: The image file.
        decode: Also decode every pixel (finds every damaged file; much slower than a header read, which
            finds a JPEG or PNG file cut short by its missing end marker).

    Returns:
        ``((width, height, mode), None)`` on success, else ``(None, reason)``.
    """
    from PIL import Image

    bound = limit("image_pixels")  # a bad KDCICAM_MAX_IMAGE_PIXELS is a ConfigError, not a defect per image
    header_read()
    problem = file_problem(path)
    if problem is not None:
        return None, problem
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below
            with Image.open(path) as img:
                width, height = img.size
                mode = img.mode
                problem = pixels_problem(width, height, bound)
                if decode and problem is None:
                    img.load()
        if problem is None and not decode:
            problem = end_problem(path)  # a file cut short, found without decoding it
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        return None, f"unreadable image ({type(exc).__name__}: {exc})"
    if problem is not None:
        return None, problem
    return (width, height, mode), None


def read_image_info(path: Path, decode: bool = False) -> tuple[int, int, str]:
    """Like :func:`probe_image`, raising :class:`DataError` (naming the file) on failure."""
    info, reason = probe_image(path, decode)
    if info is None:
        raise DataError(f"{path}: {reason}")
    return info


def box_problem(box: Box, size: tuple[int, int] | None, tol: float = BOX_TOLERANCE) -> str | None:
    """Why an ``(x0, y0, x1, y1)`` box is invalid (empty, or outside a ``(W, H)`` image), else ``None``."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return f"degenerate box {_fmt_box(box)} (needs x1 > x0 and y1 > y0)"
    if size is not None:
        width, height = size
        if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
            return f"box {_fmt_box(box)} lies outside its {width}x{height} image"
    return None


def _fmt_box(box: Box) -> str:
    return "(" + ", ".join(format_number(v) for v in box) + ")"


def format_number(value: float) -> str:
    """Shortest exact text of a coordinate: ``60`` for 60.0, ``60.5`` for 60.5 (round-trips via float)."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def fingerprint(parts: Iterable[tuple[str, bytes]]) -> str:
    """First 16 hex digits of a sha256 over named byte blobs (name and length delimit each blob)."""
    digest = hashlib.sha256()
    for name, blob in parts:
        digest.update(name.encode("utf-8") + b"\0" + str(len(blob)).encode("ascii") + b"\0")
        digest.update(blob)
    return digest.hexdigest()[:16]


def is_image_name(name: str) -> bool:
    """Whether a file name has a known image extension (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
