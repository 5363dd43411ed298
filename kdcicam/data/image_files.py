"""Checks made before an image file is decoded: it is a regular file (a FIFO would block the reader for
ever), the size its header declares is within the pixel limit (``KDCICAM_MAX_IMAGE_PIXELS``), and a JPEG
or PNG file still ends with its end marker (a file cut short is found without decoding it)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kdcicam.core.limits import LIMITS, limit


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image file (missing, or not a regular file: a FIFO would
    block the reader for ever), else None."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "image file does not exist"
    except OSError as exc:
        return f"cannot read image file ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a folder" if stat.S_ISDIR(info.st_mode) else "special"
        return f"not a regular file ({kind})"
    return None


def pixels_problem(width: int, height: int, bound: int | None = None) -> str | None:
    """Why an image of the declared ``width x height`` is refused (above the pixel limit ``bound``,
    default: ``limit("image_pixels")``), else None."""
    bound = limit("image_pixels") if bound is None else bound
    if width * height > bound:
        return (f"image declares {width}x{height} = {width * height} pixels, above the limit of {bound} "
                f"(set {LIMITS['image_pixels'].env} to raise it)")
    return None


END_SCAN_BYTES = 4096  # trailing bytes searched for the end marker (room for padding after it)
_END_MARKERS = ((b"\xff\xd8\xff", b"\xff\xd9", "JPEG end-of-image marker"),
                (b"\x89PNG\r\n\x1a\n", b"IEND", "PNG IEND chunk"))


def end_problem(path: Path) -> str | None:
    """Why a JPEG or PNG file looks cut short (its end marker is not among its last
    :data:`END_SCAN_BYTES` bytes), else None; other formats are not checked."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(0, os.fstat(f.fileno()).st_size - END_SCAN_BYTES))
        tail = f.read()
    for magic, marker, name in _END_MARKERS:
        if head.startswith(magic) and marker not in tail:
            return f"truncated image file (no {name} at its end)"
    return None
