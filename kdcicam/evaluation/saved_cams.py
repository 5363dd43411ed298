"""Score saved CAMs of any method as wsolevaluation does (``kdcicam eval-cams``).

Input: one split of wsolevaluation metadata (:mod:`kdcicam.data.wsol_split`: image ids, image
sizes, boxes or masks) and a folder with one ``.npy`` file per image. The CAM of image id
``<dir>/<name>.jpg`` is ``CAM_DIR/<dir>/<name>.jpg.npy`` (what wsolevaluation reads: the image
id plus ``.npy``) or ``CAM_DIR/<dir>/<name>.npy``. Nothing else is read: no image, no other split.

Each CAM is read with ``np.load(allow_pickle=False)`` and must be a finite 2-D real array. Under
the default box rule (``"wsolevaluation"``) a CAM of ``size x size`` with values in [0, 1] is used
as it is, in float64 (what wsolevaluation's ``t2n`` makes of it); one of another shape is resized
bilinearly to ``size x size`` and min-max normalised, one outside [0, 1] min-max normalised (both
counted in the result; wsolevaluation refuses them). Then, per image:

- MaxBoxAccV2 and BoxAcc per IoU level at the best CAM threshold (every OpenCV contour's box),
  against the GT boxes resized to ``size x size`` as ``resize_bbox`` does
  (:mod:`kdcicam.evaluation.wsol_rule`);
- GT-known Loc at each θ: the largest contour's box at θ, "+1" IoU >= ``iou_threshold``;
- the legacy MaxBoxAcc (largest contour at every threshold) on request: it finds the contours of
  every threshold one by one, ~100 times slower;
- PxAP, its PR curve and the best pixel F1 / IoU when masks are given (:mod:`kdcicam.evaluation.pxap`).

``box_rule="continuous"`` is this harness's cleaner reading instead (every CAM resized and min-max
normalised; boxes of 8-connected components; continuous IoU; GT-known in original image
coordinates); its numbers are not wsolevaluation's.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdcicam.core.config import BOX_RULES, METRIC_VERSION
from kdcicam.core.errors import ConfigError, DataError
from kdcicam.core.limits import check_limit
from kdcicam.data.wsol_split import SplitMetadata
from kdcicam.evaluation.cam_files import CamProblemsError, find_cam, load_cam
from kdcicam.evaluation.metrics import MaxBoxAccV2Meter
from kdcicam.evaluation.pxap import PxAPMeter, gt_mask

DEFAULT_THETAS: tuple[float, ...] = (0.2,)  # CAM's threshold (Zhou et al. 2016) on a min-max map
NOT_AVAILABLE = ("top1_cls", "top5_cls", "top1_loc", "top5_loc")  # need class predictions
NOT_AVAILABLE_REASON = "saved CAMs carry no class predictions"

__all__ = ["DEFAULT_THETAS", "CamProblemsError", "CamScores", "score_cams"]


@dataclass(frozen=True)
class CamScores:
    """What a folder of saved CAMs scores on one split (fractions in [0, 1])."""

    images: int  # images scored
    size: int  # side of the square frame the CAMs are scored in
    box_rule: str  # "wsolevaluation" or "continuous"
    thetas: tuple[float, ...]  # CAM thresholds of GT-known Loc
    iou_threshold: float  # IoU a box needs to count as correct
    gt_known_loc: tuple[float, ...]  # per θ, aligned with ``thetas``
    maxboxacc_v2: float | None  # mean over the IoU levels of the best-threshold box accuracy
    maxboxacc: dict[str, float]  # per IoU level ("iou_0.3", ...): accuracy at its best threshold
    best_threshold: dict[str, float]  # per IoU level: that threshold
    curve: dict[str, list[float]]  # "thresholds" and per IoU level the accuracy at every threshold
    legacy_maxboxacc: dict[str, float] | None = None  # per IoU level, the largest contour only
    pxap: dict[str, Any] | None = None  # PxAP, PR curve, best pixel F1 / IoU (percentages)
    adjusted: dict[str, int] = field(default_factory=dict)  # CAMs "resized" / "normalised"
    records: list[dict[str, Any]] = field(default_factory=list)  # per image: boxes, IoUs, flags per θ

    def to_dict(self, records: bool = False) -> dict[str, Any]:
        """A JSON-ready summary (``None`` for the metrics that need class predictions)."""
        out: dict[str, Any] = {
            "protocol": "standard",
            "box_rule": self.box_rule,
            "metric_version": METRIC_VERSION,
            "images": self.images,
            "size": self.size,
            "iou_threshold": self.iou_threshold,
            "gt_known_loc": {f"{t:g}": v for t, v in zip(self.thetas, self.gt_known_loc)},
            "maxboxacc_v2": self.maxboxacc_v2,
            "maxboxacc": dict(self.maxboxacc),
            "best_threshold": dict(self.best_threshold),
            "legacy_maxboxacc": self.legacy_maxboxacc,
            "pxap": self.pxap,
            "adjusted_cams": dict(self.adjusted),
            **{name: None for name in NOT_AVAILABLE},
            "not_available": {"metrics": list(NOT_AVAILABLE), "reason": NOT_AVAILABLE_REASON},
            "curve": {k: list(v) for k, v in self.curve.items()},
        }
        if records:
            out["records"] = self.records
        return out


@dataclass(frozen=True)
class _Job:
    """What a worker needs to score one image."""

    image_id: str
    path: Path
    gt: np.ndarray | None  # (G, 4) boxes in the scoring frame (wsolevaluation) or original pixels
    image_size: tuple[int, int] | None  # (W, H) of the original image
    masks: tuple[tuple[str, ...], str] | None


@dataclass(frozen=True)
class _Settings:
    size: int
    box_rule: str
    thetas: tuple[float, ...]
    cam_thresholds: int
    iou_levels: tuple[float, ...]
    legacy: bool
    mask_root: Path | None


def score_cams(
    cam_dir: Path | str,
    meta: SplitMetadata,
    *,
    thetas: Sequence[float] = DEFAULT_THETAS,
    size: int = 224,
    iou_threshold: float = 0.5,
    cam_thresholds: int = 100,
    iou_levels: Sequence[float] = (0.3, 0.5, 0.7),
    box_rule: str = "wsolevaluation",
    mask_root: Path | str | None = None,
    legacy: bool = False,
    jobs: int = 1,
) -> CamScores:
    """Score the saved CAM of every image of a split.

    Args:
        cam_dir: folder of ``.npy`` CAMs.
        meta: the split's metadata.
        thetas: CAM thresholds in [0, 1] for GT-known Loc.
        size: side of the square frame CAMs are scored in (wsolevaluation: 224).
        iou_threshold: IoU needed for a correct box at θ.
        cam_thresholds: number of thresholds (0, 1/n, ..., (n-1)/n) of the box and PxAP curves.
        iou_levels: MaxBoxAccV2 IoU levels.
        box_rule: ``"wsolevaluation"`` or ``"continuous"``.
        mask_root: folder of the masks named in localization.txt: also score PxAP.
        legacy: also the legacy MaxBoxAcc (largest contour at every threshold; slow).
        jobs: worker processes.

    Raises:
        ConfigError: an option out of range.
        CamProblemsError: CAMs missing or malformed, images without boxes / sizes / masks (one
            line each in ``.lines``).
        DataError: nothing to score.
    """
    settings = _check_options(thetas, size, iou_threshold, cam_thresholds, iou_levels, box_rule, mask_root,
                              legacy, jobs)
    score_boxes = bool(meta.boxes)
    if not score_boxes and settings.mask_root is None:
        raise DataError(f"{meta.folder / 'localization.txt'}: no boxes; give --masks DIR to score masks (PxAP)")
    cam_dir = Path(cam_dir)
    if not cam_dir.is_dir():
        raise DataError(f"{cam_dir}: {'not a folder' if cam_dir.exists() else 'no such folder'}")
    work, problems = _plan(cam_dir, meta, settings, score_boxes)
    results = _run(work, settings, jobs)
    problems += [r["problem"] for r in results if "problem" in r]
    if problems:
        raise CamProblemsError(problems, len(meta.image_ids))
    return _summarise(results, settings, float(iou_threshold), score_boxes)


def _check_options(thetas, size, iou_threshold, cam_thresholds, iou_levels, box_rule, mask_root, legacy,
                   jobs) -> _Settings:
    thetas = tuple(float(t) for t in thetas)
    if not thetas:
        raise ConfigError("theta: give at least one CAM threshold")
    for t in thetas:
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"theta = {t:g}: must be in [0, 1]")
    for name, value in (("size", size), ("cam_thresholds", cam_thresholds), ("jobs", jobs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} = {value!r}: must be a positive integer")
    check_limit("image_side", size, "size")
    if not 0.0 < iou_threshold <= 1.0:
        raise ConfigError(f"iou_threshold = {iou_threshold!r}: must be in (0, 1]")
    if box_rule not in BOX_RULES:
        raise ConfigError(f"box_rule = {box_rule!r}: must be one of {', '.join(BOX_RULES)}")
    root = None if mask_root is None else Path(mask_root)
    if root is not None and not root.is_dir():
        raise DataError(f"{root}: {'not a folder' if root.exists() else 'no such folder'} (--masks)")
    return _Settings(size, box_rule, thetas, cam_thresholds, tuple(float(v) for v in iou_levels), legacy, root)


def _plan(cam_dir: Path, meta: SplitMetadata, settings: _Settings,
          score_boxes: bool) -> tuple[list[_Job], list[str]]:
    """One job per image whose inputs are all there, and one problem line per image that lacks one."""
    from kdcicam.evaluation.wsol_rule import resize_gt_boxes

    jobs: list[_Job] = []
    problems: list[str] = []
    for image_id in meta.image_ids:
        try:
            path = find_cam(cam_dir, image_id)
        except DataError as exc:
            problems.append(str(exc))
            continue
        if path is None:
            problems.append(f"{image_id}: no CAM ({cam_dir / image_id}.npy)")
            continue
        gt = size = masks = None
        if score_boxes:
            if image_id not in meta.boxes or image_id not in meta.sizes:
                what = "box in localization.txt" if image_id not in meta.boxes else "size in image_sizes.txt"
                problems.append(f"{image_id}: no {what}")
                continue
            size = meta.sizes[image_id]
            gt = np.asarray(meta.boxes[image_id], dtype=np.float64).reshape(-1, 4)  # (G, 4) original pixels
            if settings.box_rule == "wsolevaluation":
                gt = resize_gt_boxes(gt, size, (settings.size, settings.size))  # (G, 4) frame, integers
        if settings.mask_root is not None:
            if image_id not in meta.masks:
                problems.append(f"{image_id}: no mask in localization.txt")
                continue
            masks = meta.masks[image_id]
        jobs.append(_Job(image_id, path, gt, size, masks))
    return jobs, problems


def _run(work: list[_Job], settings: _Settings, jobs: int) -> list[dict[str, Any]]:
    if jobs == 1 or len(work) < 2 * jobs:
        return _score_chunk(work, settings)
    chunks = [work[i::jobs] for i in range(jobs)]
    with ProcessPoolExecutor(jobs) as pool:
        parts = list(pool.map(_score_chunk, chunks, [settings] * jobs))
    order = {job.image_id: i for i, job in enumerate(work)}
    return sorted((r for part in parts for r in part), key=lambda r: order[r["image_id"]])


def _score_chunk(work: list[_Job], settings: _Settings) -> list[dict[str, Any]]:
    """Per image: best IoU per CAM threshold, GT-known IoU and box per θ, PxAP histograms."""
    from kdcicam.evaluation.cam_files import prepare_cam
    from kdcicam.evaluation.sweep import SweepWorkspace
    from kdcicam.evaluation.wsol_rule import box_scores

    boxes = MaxBoxAccV2Meter(settings.cam_thresholds, settings.iou_levels, box_rule=settings.box_rule)
    workspaces = (SweepWorkspace(), SweepWorkspace())
    legacy = MaxBoxAccV2Meter(settings.cam_thresholds, settings.iou_levels, multi_contour=False)
    out: list[dict[str, Any]] = []
    for job in work:
        try:
            cam, adjusted = prepare_cam(load_cam(job.path), settings.size, settings.box_rule)
        except DataError as exc:
            out.append({"image_id": job.image_id, "problem": str(exc)})
            continue
        result: dict[str, Any] = {"image_id": job.image_id, "adjusted": adjusted}
        if job.gt is not None and settings.box_rule == "wsolevaluation" and len(job.gt):
            result["best"], found = box_scores(cam, boxes.thresholds, job.gt, settings.thetas, workspaces)
            if settings.legacy:
                result["legacy"] = legacy.best_ious(cam, job.gt)
            result["located"] = _located(found, job.gt)
        elif job.gt is not None:
            result["best"] = boxes.best_ious(cam, job.gt) if len(job.gt) else None
            if settings.legacy and len(job.gt):
                result["legacy"] = legacy.best_ious(cam, job.gt)
            result["located"] = _locate(cam, job, settings)
        if job.masks is not None:
            pxap = PxAPMeter(settings.cam_thresholds)
            try:
                pxap.update(cam, gt_mask(settings.mask_root, *job.masks, (settings.size, settings.size)))
            except DataError as exc:
                out.append({"image_id": job.image_id, "problem": f"{job.image_id}: {exc}"})
                continue
            result["hist"] = (pxap.true_hist, pxap.false_hist)
        out.append(result)
    return out


def _locate(cam: np.ndarray, job: _Job, settings: _Settings) -> list[tuple[list[float], float]]:
    """(box, IoU) at each θ: wsolevaluation's largest contour in the frame, or the continuous rule."""
    if settings.box_rule == "wsolevaluation":
        from kdcicam.evaluation.wsol_rule import largest_contour_boxes

        return _located(largest_contour_boxes(cam, settings.thetas), job.gt)  # (Θ, 4) frame
    from kdcicam.data.transforms import test_transform_standard
    from kdcicam.evaluation.protocols import locate_standard

    frame = test_transform_standard(settings.size).frame(job.image_size)
    located = [locate_standard(cam, t, frame, job.gt) for t in settings.thetas]
    return [([round(float(v), 2) for v in box], float(iou)) for box, iou in located]


def _located(found: np.ndarray, gt: np.ndarray) -> list[tuple[list[float], float]]:
    """(box, "+1" IoU with the best GT box) for each of wsolevaluation's (Θ, 4) boxes."""
    from kdcicam.evaluation.wsol_rule import best_pixel_ious

    ious = best_pixel_ious(found, gt)
    return [(b.tolist(), float(i)) for b, i in zip(found, ious)]


def _summarise(results: list[dict[str, Any]], settings: _Settings, iou_threshold: float,
               score_boxes: bool) -> CamScores:
    n = len(results)
    if n == 0:
        raise DataError("no image to score")
    levels = [f"iou_{t:g}" for t in settings.iou_levels]
    thresholds = np.arange(0, 1, 1 / settings.cam_thresholds)[: settings.cam_thresholds]
    curve: dict[str, list[float]] = {"thresholds": thresholds.tolist()}
    maxbox: dict[str, float] = {}
    best_at: dict[str, float] = {}
    v2: float | None = None
    legacy: dict[str, float] | None = None
    hits = np.zeros(len(settings.thetas))
    records: list[dict[str, Any]] = []
    if score_boxes:
        scored = [r for r in results if r.get("best") is not None]
        accs = _accuracy(np.array([r["best"] for r in scored]), settings.iou_levels)  # (L, T)
        for level, acc in zip(levels, accs):
            curve[level] = (acc / 100).tolist()
            maxbox[level] = float(acc.max()) / 100
            best_at[level] = float(thresholds[int(acc.argmax())])
        v2 = float(np.mean(list(maxbox.values())))
        if settings.legacy:
            lacc = _accuracy(np.array([r["legacy"] for r in scored]), settings.iou_levels)
            legacy = {level: float(a.max()) / 100 for level, a in zip(levels, lacc)}
        for r in results:
            flags = [iou >= iou_threshold for _, iou in r["located"]]
            hits += flags
            records.append({"image_id": r["image_id"], "box": [b for b, _ in r["located"]],
                            "iou": [i for _, i in r["located"]], "correct_gt_known": flags})
    pxap = None
    if settings.mask_root is not None:
        meter = PxAPMeter(settings.cam_thresholds)
        for r in results:
            meter.true_hist += r["hist"][0]
            meter.false_hist += r["hist"][1]
        meter.count = n
        try:
            pxap = meter.compute()
        except ValueError as exc:
            raise DataError(str(exc)) from None
    adjusted = {k: sum(r["adjusted"] == k for r in results) for k in ("resized", "normalised")}
    return CamScores(images=n, size=settings.size, box_rule=settings.box_rule, thetas=settings.thetas,
                     iou_threshold=iou_threshold, gt_known_loc=tuple(float(h) / n for h in hits) if score_boxes else (),
                     maxboxacc_v2=v2, maxboxacc=maxbox, best_threshold=best_at, curve=curve,
                     legacy_maxboxacc=legacy, pxap=pxap, adjusted=adjusted, records=records)


def _accuracy(best: np.ndarray, iou_levels: tuple[float, ...]) -> np.ndarray:
    """(L, T) % of images whose best IoU reaches each level at each threshold (best: (N, T))."""
    if best.size == 0:
        return np.zeros((len(iou_levels), 1))
    return (best[None, :, :] >= np.array(iou_levels)[:, None, None]).sum(axis=1) * 100.0 / len(best)
