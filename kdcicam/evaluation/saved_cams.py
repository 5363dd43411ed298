"""Score saved CAMs of any method with this harness's standard-protocol evaluator (``kdcicam eval-cams``).

Input: one ``.npy`` file per test image of a wsolevaluation metadata folder, holding a 2-D real CAM of
any size and scale (the CAM of the image's ground-truth class, as wsolevaluation saves them). A
CAM for image id ``<dir>/<name>.jpg`` is looked up as ``CAM_DIR/<dir>/<name>.jpg.npy`` (what
wsolevaluation writes: ``np.save`` appends ``.npy`` to the image id) or
``CAM_DIR/<dir>/<name>.npy`` (extension replaced).

Per image, exactly what :func:`kdcicam.evaluation.evaluator.evaluate` does under the ``standard`` protocol with
the GT class's map: the CAM resized bilinearly (align_corners=False) to ``size x size`` and min-max
normalised (a constant CAM becomes all zeros); for each θ the box of the largest 8-connected
component of ``cam > θ`` mapped back to original image coordinates and matched against every GT box
(continuous IoU; nothing above θ gives the fallback box (0, 0, 0, 0), never correct): GT-known Loc
at θ. MaxBoxAccV2 sweeps the normalised CAM against the GT boxes mapped into the ``size x size``
frame, as wsolevaluation does. Saved CAMs carry no class predictions, so Top-1/Top-5 Cls and Loc are
reported as not available.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from kdcicam.core.errors import ConfigError, DataError
from kdcicam.core.limits import check_limit
from kdcicam.data.base import Sample
from kdcicam.data.image_files import file_problem
from kdcicam.data.transforms import test_transform_standard
from kdcicam.evaluation.boxes import check_heatmap
from kdcicam.evaluation.evaluator import locate_standard, minmax
from kdcicam.evaluation.metrics import MaxBoxAccV2Meter
from kdcicam.model.heatmap import upsample_heatmap

CAM_SUFFIX = ".npy"
DEFAULT_THETAS: tuple[float, ...] = (0.2,)  # CAM's threshold (Zhou et al. 2016) on a min-max map
NOT_AVAILABLE = ("top1_cls", "top5_cls", "top1_loc", "top5_loc")  # need class predictions
NOT_AVAILABLE_REASON = "saved CAMs carry no class predictions"


@dataclass(frozen=True)
class CamScores:
    """What a folder of saved CAMs scores on the test split (fractions in [0, 1])."""

    images: int  # test images scored
    size: int  # side of the square frame the CAMs were resized to
    thetas: tuple[float, ...]  # CAM thresholds of GT-known Loc
    iou_threshold: float  # IoU a box needs to count as correct
    gt_known_loc: tuple[float, ...]  # per θ, aligned with ``thetas``
    maxboxacc_v2: float  # mean over the IoU levels of the best-threshold box accuracy
    maxboxacc: dict[str, float]  # per IoU level ("iou_0.3", ...): accuracy at its best threshold
    best_threshold: dict[str, float]  # per IoU level: that threshold
    curve: dict[str, list[float]]  # "thresholds" and per IoU level the accuracy at every threshold
    records: list[dict[str, Any]] = field(default_factory=list)  # per image: boxes, IoUs, flags per θ

    def to_dict(self, records: bool = False) -> dict[str, Any]:
        """A JSON-ready summary (``None`` for the metrics that need class predictions)."""
        out: dict[str, Any] = {
            "protocol": "standard",
            "images": self.images,
            "size": self.size,
            "iou_threshold": self.iou_threshold,
            "gt_known_loc": {f"{t:g}": v for t, v in zip(self.thetas, self.gt_known_loc)},
            "maxboxacc_v2": self.maxboxacc_v2,
            "maxboxacc": dict(self.maxboxacc),
            "best_threshold": dict(self.best_threshold),
            **{name: None for name in NOT_AVAILABLE},
            "not_available": {"metrics": list(NOT_AVAILABLE), "reason": NOT_AVAILABLE_REASON},
            "curve": {k: list(v) for k, v in self.curve.items()},
        }
        if records:
            out["records"] = self.records
        return out


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


def locate_cams(cam_dir: Path | str, samples: Sequence[Sample]) -> list[Path]:
    """The CAM file of every sample, in order.

    Raises:
        DataError: ``cam_dir`` is not a folder, or CAMs are missing (the first missing image id,
            where it was looked for, and how many are missing).
    """
    cam_dir = Path(cam_dir)
    if not cam_dir.is_dir():
        raise DataError(f"{cam_dir}: {'not a folder' if cam_dir.exists() else 'no such folder'}")
    paths = [find_cam(cam_dir, s.image_id) for s in samples]
    missing = [s.image_id for s, p in zip(samples, paths) if p is None]
    if missing:
        looked = " or ".join(str(p) for p in cam_candidates(cam_dir, missing[0]))
        raise DataError(f"{cam_dir}: no CAM for test image {missing[0]!r} (looked for {looked}); "
                        f"{len(missing)} of {len(samples)} test images have no CAM")
    return [p for p in paths if p is not None]


def load_cam(path: Path | str) -> np.ndarray:
    """Read and validate one saved CAM.

    Args:
        path: a ``.npy`` file holding one 2-D real array (no pickles).

    Returns:
        (H, W) float64 array, finite.

    Raises:
        DataError: unreadable file, an ``.npz`` archive, wrong number of dimensions, empty, a
            non-real dtype, NaN or inf (one line naming the file).
    """
    try:
        cam = np.load(path, allow_pickle=False)
    except Exception as exc:  # OSError, ValueError (pickles, bad header), EOFError...
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
        size: side of the output frame (the network input size of the standard protocol).

    Returns:
        (size, size) float64 in [0, 1].
    """
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float64))[None]  # (1, H, W)
    return minmax(upsample_heatmap(t, (size, size)))[0].numpy()  # (size, size)


def score_cams(
    cam_dir: Path | str,
    samples: Sequence[Sample],
    *,
    thetas: Sequence[float] = DEFAULT_THETAS,
    size: int = 224,
    iou_threshold: float = 0.5,
    cam_thresholds: int = 100,
    iou_levels: Sequence[float] = (0.3, 0.5, 0.7),
) -> CamScores:
    """Score the saved CAM of every sample: GT-known Loc at each θ, MaxBoxAccV2 and its curve.

    Args:
        cam_dir: folder of ``.npy`` CAMs (see :func:`cam_candidates`).
        samples: the test split (every sample needs its GT boxes; its size is read from the
            image header when the index does not hold it).
        thetas: CAM thresholds in [0, 1] for GT-known Loc.
        size: side of the square frame CAMs are resized to.
        iou_threshold: IoU needed for a correct box.
        cam_thresholds: number of MaxBoxAccV2 thresholds (0, 1/n, ..., (n-1)/n).
        iou_levels: MaxBoxAccV2 IoU levels.

    Returns:
        The :class:`CamScores`.

    Raises:
        ConfigError: a θ outside [0, 1], a size or number of thresholds < 1, or an IoU threshold
            outside (0, 1].
        DataError: no samples, missing or invalid CAM files.
    """
    thetas = tuple(float(t) for t in thetas)
    for t in thetas:
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"theta = {t:g}: must be in [0, 1]")
    if not thetas:
        raise ConfigError("theta: give at least one CAM threshold")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"size = {size!r}: must be a positive integer (pixels)")
    check_limit("image_side", size, "size")
    if not 0.0 < iou_threshold <= 1.0:
        raise ConfigError(f"iou_threshold = {iou_threshold!r}: must be in (0, 1]")
    if isinstance(cam_thresholds, bool) or not isinstance(cam_thresholds, int) or cam_thresholds < 1:
        raise ConfigError(f"cam_thresholds = {cam_thresholds!r}: must be a positive integer")
    if not samples:
        raise DataError(f"{cam_dir}: the test split has no images to score")
    paths = locate_cams(cam_dir, samples)
    transform = test_transform_standard(size)
    meter = MaxBoxAccV2Meter(cam_thresholds=cam_thresholds, iou_thresholds=tuple(iou_levels))
    hits = np.zeros(len(thetas), dtype=np.int64)  # (T,) images correct at each θ
    records: list[dict[str, Any]] = []
    for sample, path in zip(samples, paths):
        cam = normalize_cam(load_cam(path), size)  # (size, size) in [0, 1]
        frame = transform.frame(sample.size or _image_size(sample.path))
        gt = np.asarray(sample.boxes, dtype=np.float64).reshape(-1, 4)  # (G, 4) original pixels
        located = [locate_standard(cam, t, frame, gt) for t in thetas]  # [(box (4,), iou)] per θ
        flags = [iou >= iou_threshold for _, iou in located]
        hits += np.array(flags, dtype=np.int64)
        if len(gt):
            gt_frame = frame.to_frame(torch.as_tensor(gt, dtype=torch.float64)).numpy()  # (G, 4) size frame
            meter.update(cam, gt_frame)
        records.append({
            "image_id": sample.image_id,
            "label": int(sample.label),
            "box": [[round(float(v), 2) for v in box] for box, _ in located],
            "iou": [float(iou) for _, iou in located],
            "correct_gt_known": flags,
        })
    stats = meter.compute() if meter.count else None  # percentages
    levels = [f"iou_{t:g}" for t in meter.iou_thresholds]
    tags = [f"iou{round(t * 100)}" for t in meter.iou_thresholds]
    curve: dict[str, list[float]] = {"thresholds": [float(t) for t in meter.thresholds]}
    if stats is not None:
        curve.update({level: [a / 100.0 for a in acc] for level, acc in zip(levels, stats["curve"])})
    return CamScores(
        images=len(samples),
        size=size,
        thetas=thetas,
        iou_threshold=float(iou_threshold),
        gt_known_loc=tuple(float(h) / len(samples) for h in hits),
        maxboxacc_v2=stats["maxboxacc_v2"] / 100.0 if stats else float("nan"),
        maxboxacc={level: stats[f"maxboxacc_{tag}"] / 100.0 for level, tag in zip(levels, tags)} if stats else {},
        best_threshold={level: stats[f"best_threshold_{tag}"] for level, tag in zip(levels, tags)} if stats else {},
        curve=curve,
        records=records,
    )


def _image_size(path: Path) -> tuple[int, int]:
    """(W, H) from an image header (for indexes that do not hold sizes)."""
    problem = file_problem(path)
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:  # PIL raises OSError, ValueError... for bad files
        raise DataError(f"{path}: cannot read the image size ({type(exc).__name__}: {exc})") from None
