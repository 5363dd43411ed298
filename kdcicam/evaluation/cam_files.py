"""Saved CAM files: where an image's CAM is, reading it safely, and bringing it to the scoring frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdcicam.core.errors import DataError
from kdcicam.evaluation.boxes import check_heatmap
from kdcicam.evaluation.protocols import minmax
from kdcicam.model.heatmap import upsample_heatmap

CAM_SUFFIX = ".npy"


class CamProblemsError(DataError):
    """Some CAMs are missing or malformed; ``lines`` says which, one line each."""

    def __init__(self, lines: list[str], total: int) -> None:
        self.lines = list(lines)
        super().__init__(f"{len(lines)} of {total} images cannot be scored (missing or malformed CAM or "
                         "metadata; one line each above)")


def cam_candidates(cam_dir: Path | str, image_id: str) -> tuple[Path, ...]:
    """Where the CAM of ``image_id`` may be: ``<image_id>.npy``, then the extension replaced by ``.npy``."""
    base = Path(cam_dir) / image_id
    paths = [base.with_name(base.name + CAM_SUFFIX), base.with_suffix(CAM_SUFFIX)]
    return tuple(dict.fromkeys(paths))  # one path when the id has no extension


def find_cam(cam_dir: Path | str, image_id: str) -> Path | None:
    """The CAM file of ``image_id`` in ``cam_dir``, or None when there is none.

    Raises:
        DataError: Both candidate files exist (which one is the CAM would be a guess).
    """
    found = [p for p in cam_candidates(cam_dir, image_id) if p.is_file()]
    if len(found) > 1:
        raise DataError(f"{found[0]}: image {image_id!r} has two CAM files ({found[0].name} and "
                        f"{found[1].name}); remove one")
    return found[0] if found else None


def load_cam(path: Path | str) -> np.ndarray:
    """Read and validate one saved CAM: a finite 2-D real array, never a pickle.

    Returns:
        (H, W) float64 array.

    Raises:
        DataError: unreadable file, a pickled object, an ``.npz`` archive, wrong number of
            dimensions, empty, a non-real dtype, NaN or inf (one line naming the file).
    """
    try:
        cam = np.load(path, allow_pickle=False)
    except ValueError as exc:
        why = "a pickled object (refused: loading it could run code)" if "pickle" in str(exc) else str(exc)
        raise DataError(f"{path}: not a plain .npy array: {why}") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc})") from None
    if not isinstance(cam, np.ndarray):
        cam.close()
        raise DataError(f"{path}: an .npz archive; expected one .npy array per image")
    try:
        cam = check_heatmap(cam).astype(np.float64)  # (H, W)
    except ValueError as exc:
        raise DataError(f"{path}: unusable CAM: {exc}") from None
    scale = np.abs(cam).max()
    if scale > np.finfo(np.float64).max / 4:  # e.g. ±1e308: the span would overflow; min-max ignores scale
        cam = cam / scale
    return cam


def normalize_cam(cam: np.ndarray, size: int) -> np.ndarray:
    """Resize a CAM bilinearly to ``size x size`` and min-max normalise it (constant -> zeros).

    Args:
        cam: (H, W) finite CAM.
        size: side of the output frame.

    Returns:
        (size, size) float64 in [0, 1].
    """
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float64))[None]  # (1, H, W)
    return minmax(upsample_heatmap(t, (size, size)))[0].numpy()  # (size, size)


def prepare_cam(cam: np.ndarray, size: int, box_rule: str) -> tuple[np.ndarray, str]:
    """The CAM as scored, and how it was adjusted ("" / "resized" / "normalised").

    wsolevaluation rule: a ``size x size`` CAM in [0, 1] as it is; another shape resized and
    min-max normalised; values outside [0, 1] min-max normalised. Continuous rule: always
    resized and normalised (the evaluator's standard map).
    """
    if box_rule != "wsolevaluation":
        return normalize_cam(cam, size), ""
    if cam.shape != (size, size):
        return normalize_cam(cam, size), "resized"
    if cam.min() < 0 or cam.max() > 1:
        return normalize_cam(cam, size), "normalised"
    return cam, ""
