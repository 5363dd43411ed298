"""The evaluator: one function for every model and both evaluation protocols.

``paper`` — the protocol behind the published tables (reference-notes.md, "Evaluation protocol";
the authors' ``test_center_crop.py``): the test image resized to a square S x S, centre crop C;
every GT box mapped into the crop and clipped to it, the best IoU counting (their test loop
scores one image's whole box list; one box per image on CUB); the box from the method's
combinational heatmap (Eq. 3) normalised and thresholded as the variant says
(:data:`VARIANT_BOX_POLICY`); IoU in crop coordinates with the authors' "+1" pixel convention
(``IoU`` in their ``utils.py``: areas (x1 - x0 + 1)(y1 - y0 + 1) of the ``find_objects`` box
(x0, y0, x1 + 1, y1 + 1) and of the clipped GT box, i.e. ``iou_matrix(..., pixel_inclusive=True)``
on this harness's continuous boxes — it reproduces their numbers, and it rates every box one
pixel larger than it is, which helps small boxes); Top-5 Loc uses the same class-independent box
for all five classes; "GT-known" is that same box counted without the class check.

``standard`` — the CAM / wsolevaluation protocol: the whole image resized to C x C (no crop), the
map min-max normalised, every GT box counted. Its box rule is ``eval.box_rule``:
``"wsolevaluation"`` (default) scores exactly as wsolevaluation does
(:mod:`kdcicam.evaluation.wsol_rule`): GT boxes resized to C x C and truncated (``resize_bbox``), the
box at θ from the largest OpenCV contour of the uint8-quantised map, the "+1" pixel IoU, all in the
C x C frame (the record's "box" is that box mapped back to the original image, for display);
``"continuous"`` is this harness's cleaner reading (threshold, largest 8-connected component,
continuous IoU in original image coordinates). GT-known Loc uses the ground-truth class's own map
(the enhanced branch's CAM of the label).

Degenerate cases, in both protocols:

- a heatmap with nothing above the threshold (all-zero or constant map, or a map constant up to
  float rounding: :mod:`kdcicam.evaluation.flat_maps`) gives the documented
  fallback box (0, 0, 0, 0) (:data:`kdcicam.evaluation.boxes.EMPTY_BOX`) with IoU 0, whatever the IoU
  convention (under "+1" that box would read as the pixel (0, 0)): it never counts as localised;
- a GT box with no area in the frame (an object the centre crop cuts away entirely) cannot be
  matched: IoU 0 with it. The image still counts in every denominator.

MaxBoxAccV2 (Choe et al., CVPR 2020) sweeps the CAM threshold on a min-max normalised map at the
network's input size: under ``standard`` the GT class's map against every GT box in that frame, with
the protocol's box rule (every contour's box competes); under ``paper`` the combinational heatmap and
the first GT box in the crop, continuous rule (MaxBoxAccV2 is not part of the authors' protocol; it
is reported under both for comparison).

On the synthetic benchmark (a dataset with ``mechanism.txt``) the standard protocol also measures the
GT class's map against each image's part / body / background masks (:mod:`kdcicam.evaluation.mechanism`):
three mass shares per record and the split's means and context mass in the metrics.

Every image yields a record (true class, top-5 with scores, box, IoU with the best GT box, correct
flags; plain Python types, JSON-serialisable), and every metric is the mean of its flag, so later
code can pair two runs image by image.

Threshold sweep (``evaluate(..., thetas=grid)``): each image's heatmap is computed once and its box
taken at every θ of the grid (:func:`boxes_at_thresholds`, the map's components labelled once for
all θ); :func:`sweep_metrics` gives the metrics per θ and :func:`at_theta` the metrics and records
at any θ of the grid, without running the model again. The threshold *policies* (fixed / chosen on
validation / oracle) that pick a θ from these live in :mod:`kdcicam.evaluation.selection`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from kdcicam.core.config import PROTOCOLS, RunConfig
from kdcicam.core.errors import ConfigError
from kdcicam.data.base import Sample
from kdcicam.data.cache import FrameStore, test_batches
from kdcicam.data.dataset import WSOLDataset, collate_wsol
from kdcicam.data.mechanism_files import mechanism_entries, read_regions
from kdcicam.data.object_masks import object_masks
from kdcicam.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TestFrame,
    TestTransform,
    test_transform_paper,
    test_transform_standard,
)
from kdcicam.evaluation.boxes import box_from_heatmap, check_heatmap, get_policy, iou_matrix
from kdcicam.evaluation.flat_maps import zero_flat_maps
from kdcicam.evaluation.mechanism import PREFERRED_FIELD, mass_metrics, region_masses
from kdcicam.evaluation.metrics import MaxBoxAccV2Meter
from kdcicam.evaluation.pxap import PxAPMeter, gt_mask
from kdcicam.evaluation.sweep import sweep_components
from kdcicam.evaluation.wsol_rule import best_pixel_ious, largest_contour_boxes, resize_gt_boxes
from kdcicam.model.heatmap import class_heatmap, combinational_heatmap, normalize_heatmap, upsample_heatmap

# the box rule each variant uses under the paper protocol (the standard protocol always uses "standard")
VARIANT_BOX_POLICY = {"paper": "standard", "reference": "reference"}
# IoU convention of each protocol: the authors' "+1" pixel IoU (paper) or continuous boxes (standard)
PROTOCOL_PIXEL_INCLUSIVE = {"paper": True, "standard": False}
FLAG_METRICS = {
    "top1_cls": "correct_top1_cls",
    "top5_cls": "correct_top5_cls",
    "top1_loc": "correct_top1_loc",
    "top5_loc": "correct_top5_loc",
    "gt_known_loc": "correct_gt_known",
}


LOC_FLAGS = ("correct_top1_loc", "correct_top5_loc", "correct_gt_known")  # the flags θ changes


@dataclass
class ThresholdSweep:
    """Every image's box at every θ of a grid, from the heatmaps of one forward pass.

    Rows follow the result's records; the IoUs obey the protocol's conventions and degenerate
    rules (an empty box scores 0), exactly as the record at that θ would.
    """

    thetas: np.ndarray  # (T,) ascending
    boxes: np.ndarray  # (N, T, 4) the predicted box, in the frame of the records' "box"
    ious: np.ndarray  # (N, T) its best IoU with the GT boxes (Top-1 / Top-5 Loc)
    gt_known_ious: np.ndarray  # (N, T) the IoU GT-known Loc counts (standard: the GT class's own map)


@dataclass
class EvalResult:
    protocol: str
    metrics: dict[str, float]  # fractions in [0, 1] (+ "theta", the threshold used)
    records: list[dict[str, Any]]  # one per image
    curve: dict[str, list[float]] = field(default_factory=dict)  # MaxBoxAccV2 accuracy per threshold
    gallery: dict[str, np.ndarray] | None = None  # arrays for the report's CAM gallery
    sweep: ThresholdSweep | None = None  # the box at every θ of a grid (``evaluate(..., thetas=...)``)


def protocol_transform(cfg: RunConfig, protocol: str) -> TestTransform:
    """The test transform of ``protocol``: square resize + centre crop (paper) or whole image (standard)."""
    if protocol == "paper":
        return test_transform_paper(cfg.eval.test_resize, cfg.eval.test_crop)
    if protocol == "standard":
        return test_transform_standard(cfg.eval.test_crop)
    raise ConfigError(f"protocol = {protocol!r}: must be one of {', '.join(PROTOCOLS)}")


def minmax(h: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation of (B, H, W) maps to [0, 1]; a constant map becomes 0."""
    flat = h.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    span = hi - lo
    return torch.where(span > 0, (h - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(h))


def best_iou(box: np.ndarray, gt_boxes: np.ndarray, pixel_inclusive: bool = False) -> float:
    """IoU of one predicted box with the best-matching GT box, with the evaluator's degenerate rules.

    Args:
        box: (4,) xyxy predicted box; zero area = the empty-foreground fallback.
        gt_boxes: (G, 4) xyxy GT boxes in the same frame (G may be 0).
        pixel_inclusive: the "+1" pixel IoU of the authors' code (paper protocol), else continuous.

    Returns:
        The best IoU, 0.0 when the box has no area, no GT box has area, or there is no GT box.
    """
    box = np.asarray(box, dtype=np.float64).reshape(4)
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt = gt[(gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])]  # (G', 4) boxes with area in the frame
    if len(gt) == 0 or box[2] <= box[0] or box[3] <= box[1]:
        return 0.0
    return float(iou_matrix(box, gt, pixel_inclusive).max())


def locate_standard(heat: np.ndarray, theta: float, frame: TestFrame,
                    gt_boxes: np.ndarray) -> tuple[np.ndarray, float]:
    """The standard protocol's box for one map and its IoU in original image coordinates.

    Args:
        heat: (C, C) map min-max normalised to [0, 1], in the frame's pixels.
        theta: CAM threshold in [0, 1].
        frame: the test geometry of the image (maps the box back to the original image).
        gt_boxes: (G, 4) every GT box of the image, original pixels.

    Returns:
        The (4,) box in original pixels (the fallback (0, 0, 0, 0) when nothing exceeds θ) and
        its best continuous IoU over the GT boxes.
    """
    box = to_original_box(box_from_heatmap(heat, theta, "standard"), frame)  # (4,) original pixels
    return box, best_iou(box, gt_boxes, PROTOCOL_PIXEL_INCLUSIVE["standard"])


def to_original_box(box: np.ndarray, frame: TestFrame) -> np.ndarray:
    """A (4,) box of the frame's pixels mapped back to the original image (float64, clipped to it)."""
    boxes = torch.as_tensor(np.asarray(box, dtype=np.float64), dtype=torch.float64).reshape(1, 4)  # (1, 4)
    return frame.to_original(boxes)[0].numpy()  # (4,)


def best_ious(boxes: np.ndarray, gt_boxes: np.ndarray, pixel_inclusive: bool = False) -> np.ndarray:
    """:func:`best_iou` of each of several boxes (same degenerate rules, same floating-point result).

    Args:
        boxes: (T, 4) xyxy predicted boxes.
        gt_boxes: (G, 4) xyxy GT boxes in the same frame (G may be 0).
        pixel_inclusive: the "+1" pixel IoU (paper protocol), else continuous.

    Returns:
        (T,) float64 best IoU per box; 0 for a box without area or when no GT box has area.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (T, 4)
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt = gt[(gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])]  # (G', 4) boxes with area in the frame
    out = np.zeros(len(b))  # (T,)
    if len(gt) == 0 or len(b) == 0:
        return out
    has_area = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # (T,)
    if has_area.any():
        out[has_area] = iou_matrix(b[has_area], gt, pixel_inclusive).max(axis=1)
    return out


def boxes_at_thresholds(h: Any, thetas: Sequence[float], policy: str = "standard") -> np.ndarray:
    """``box_from_heatmap(h, θ, policy)`` for every θ, with the map's components labelled once.

    Each θ's foreground is ``h > c(θ)`` for one cutoff c: θ itself (``"standard"``), or under the
    authors' rule (``"reference"``: keep h > θ·max, then > the kept map's mean m) max(θ·max, m)
    whenever m >= 0 (a θ where m < 0 is labelled on its own). Cutoffs are computed in the map's
    dtype exactly as :func:`kdcicam.evaluation.boxes.foreground_mask` compares, so every box is identical to
    ``box_from_heatmap``'s; the nested foregrounds are then labelled in one pass
    (:func:`kdcicam.evaluation.boxes.sweep_components`) and each θ's box picked by the policy's rule
    (most pixels / largest bounding box, ties to the raster-first component).

    Args:
        h: (H, W) heatmap (in [0, 1] for ``"standard"``).
        thetas: (T,) thresholds θ, any order (Python floats, as ``EvalConfig.theta``).
        policy: ``"standard"`` or ``"reference"``.

    Returns:
        (T, 4) float64 boxes, row t for ``thetas[t]``; the fallback (0, 0, 0, 0) where nothing is foreground.
    """
    pol = get_policy(policy)
    a = check_heatmap(h, unit_range=pol.mask == "absolute")  # (H, W), its own float dtype
    like = a.dtype.type  # a Python-float θ is compared in the map's dtype (NumPy's weak scalars)
    out = np.zeros((len(thetas), 4))  # (T, 4)
    cuts: list[float] = []
    rows: list[int] = []
    for t, theta in enumerate(thetas):
        theta = float(theta)
        if pol.mask == "absolute":
            cut = like(theta)
        else:
            keep = like(theta) * a.max()  # θ·max, as foreground_mask computes it
            m = np.where(a > keep, a, 0.0).mean()  # the kept map's mean, zeros included
            if m < 0:  # pixels below θ·max would be foreground too: no single cutoff
                out[t] = box_from_heatmap(a, theta, pol)
                continue
            cut = max(keep, m)  # kept > m  <=>  h > θ·max and h > m
        cuts.append(float(cut))  # exact: a value of the map's dtype
        rows.append(t)
    if not rows:
        return out
    order = np.argsort(np.asarray(cuts), kind="stable")  # (T',) sweep levels ascend
    sweep = sweep_components(a.astype(np.float64), np.asarray(cuts)[order], pol.connectivity)
    if len(sweep.levels):
        b = sweep.boxes  # (K, 4)
        key = sweep.pixels if pol.select == "pixels" else (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # (K,)
        pick = np.lexsort((np.arange(len(key)), -key, sweep.levels))  # level, largest, raster-first
        first = np.ones(len(pick), dtype=bool)
        first[1:] = sweep.levels[pick][1:] != sweep.levels[pick][:-1]
        chosen = pick[first]  # (L,) one component per level that has any
        rows_arr = np.asarray(rows)[order]  # (T',) sweep level -> row of ``thetas``
        out[rows_arr[sweep.levels[chosen]]] = b[chosen]
    return out


def sweep_metrics(result: EvalResult, iou_threshold: float) -> dict[str, np.ndarray]:
    """Top-1 Loc, Top-5 Loc and GT-known Loc at every θ of ``result.sweep``.

    Args:
        result: an :func:`evaluate` result made with ``thetas``.
        iou_threshold: the IoU a box must reach (``EvalConfig.iou_threshold``).

    Returns:
        metric name -> (T,) fractions, in the order of ``result.sweep.thetas``.
    """
    sweep = _need_sweep(result)
    if not result.records:
        return {m: np.full(len(sweep.thetas), np.nan) for m in ("top1_loc", "top5_loc", "gt_known_loc")}
    top1 = np.array([r["correct_top1_cls"] for r in result.records], dtype=bool)[:, None]  # (N, 1)
    top5 = np.array([r["correct_top5_cls"] for r in result.records], dtype=bool)[:, None]  # (N, 1)
    hit = sweep.ious >= iou_threshold  # (N, T)
    return {"top1_loc": (top1 & hit).mean(axis=0), "top5_loc": (top5 & hit).mean(axis=0),
            "gt_known_loc": (sweep.gt_known_ious >= iou_threshold).mean(axis=0)}


def at_theta(result: EvalResult, theta: float, iou_threshold: float) -> EvalResult:
    """The result as it would read had ``evaluate`` run at ``theta`` (a θ of ``result.sweep``).

    Classification, MaxBoxAccV2 and its curve do not depend on θ and are kept; each record's box,
    IoU and localization flags are those of θ; ``metrics["theta"]`` is θ. No gallery.

    Raises:
        ValueError: the result has no sweep, or θ is not one of its thresholds.
    """
    sweep = _need_sweep(result)
    at = np.flatnonzero(np.isclose(sweep.thetas, theta, rtol=0.0, atol=1e-12))
    if not len(at):
        raise ValueError(f"θ = {theta} is not in the sweep's grid {sweep.thetas.tolist()}")
    t = int(at[0])
    records = []
    for i, r in enumerate(result.records):
        hit = bool(sweep.ious[i, t] >= iou_threshold)
        records.append({**r, "box": [round(float(v), 2) for v in sweep.boxes[i, t]], "iou": float(sweep.ious[i, t]),
                        "correct_top1_loc": r["correct_top1_cls"] and hit,
                        "correct_top5_loc": r["correct_top5_cls"] and hit,
                        "correct_gt_known": bool(sweep.gt_known_ious[i, t] >= iou_threshold)})
    metrics = dict(result.metrics)
    for name, flag in FLAG_METRICS.items():
        if flag in LOC_FLAGS:
            metrics[name] = float(np.mean([r[flag] for r in records])) if records else float("nan")
    metrics["theta"] = float(sweep.thetas[t])
    return dataclasses.replace(result, metrics=metrics, records=records, gallery=None)


def _need_sweep(result: EvalResult) -> ThresholdSweep:
    if result.sweep is None:
        raise ValueError("this result has no threshold sweep: evaluate it with thetas=...")
    return result.sweep


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    cfg: RunConfig,
    protocol: str,
    device: torch.device,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    gallery_ids: Sequence[str] | None = None,
    thetas: Sequence[float] | None = None,
    frames: FrameStore | None = None,
) -> EvalResult:
    """Classify and localize every sample under ``protocol``; returns metrics and per-image records.

    Args:
        model: the network (set to eval mode here; the context pool is frozen).
        samples: the split to evaluate (validation or test).
        cfg: the run's config (θ, test sizes, variant).
        protocol: ``"paper"`` or ``"standard"``.
        device: where to run the model.
        batch_size: evaluation batch size.
        num_workers: data-loader worker processes.
        gallery_ids: image ids whose crop, heatmap and boxes are returned for the report's gallery.
        thetas: also take every image's box at each of these θ (sorted, deduplicated) from the same
            heatmap: the result's ``sweep`` (see :func:`sweep_metrics`, :func:`at_theta`).
        frames: read the split's decoded frames from this store (built on first use) instead of
            decoding every image with PIL: the same pixels (``tests/test_data_cache.py``), the same result.

    Returns:
        The :class:`EvalResult`: metrics (means of the record flags, MaxBoxAccV2, θ), one record
        per sample in order, the MaxBoxAccV2 curve per IoU level, the gallery arrays and the sweep.
    """
    transform = protocol_transform(cfg, protocol)
    if frames is not None:
        loader: Iterable[dict] = test_batches(frames.get(samples, transform), batch_size, device)
    else:
        loader = DataLoader(WSOLDataset(samples, transform), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=collate_wsol)
    theta = cfg.eval.theta
    side = cfg.eval.test_crop
    policy = VARIANT_BOX_POLICY[cfg.variant] if protocol == "paper" else "standard"
    wsol_rule = protocol == "standard" and cfg.eval.box_rule == "wsolevaluation"
    masks = object_masks(samples) if protocol == "standard" else None  # (root, id -> paths) or None
    pxap = PxAPMeter(cfg.eval.maxbox_thresholds) if masks is not None else None
    regions = mechanism_entries(samples) if protocol == "standard" else None  # synthetic benchmark only
    maxbox = MaxBoxAccV2Meter(cam_thresholds=cfg.eval.maxbox_thresholds, iou_thresholds=tuple(cfg.eval.maxbox_ious),
                              box_rule="wsolevaluation" if wsol_rule else "continuous")
    wanted = set(gallery_ids or ())
    gallery: dict[str, list] = {k: [] for k in ("image_ids", "images", "heatmaps", "pred_boxes", "gt_boxes",
                                                "labels", "top1")}
    records: list[dict[str, Any]] = []
    grid = sorted({float(t) for t in thetas}) if thetas is not None else None
    swept: dict[str, list[np.ndarray]] = {"boxes": [], "ious": [], "gt_known_ious": []}
    was_training = model.training
    model.eval()
    for batch in loader:
        images = batch["image"].to(device)
        labels = batch["label"].to(device)
        out = model(images, update_pool=False)
        logits = out.logits_e.float()  # (B, n)
        k = min(5, logits.shape[1])
        # ranked by logits, as the authors' torch.sort of the outputs and as Eq. 3 ranks the maps (softmax
        # probabilities of logits one float step apart can tie and flip the order); ties: lower class first
        top_idx = logits.sort(dim=1, descending=True, stable=True).indices[:, :k]  # (B, k)
        top_scores = logits.softmax(dim=1).gather(1, top_idx)  # (B, k) their probabilities
        heat = combinational_heatmap(out.cams_e.float(), logits, cfg.variant, cfg.model.heatmap_function)  # Eq. 3
        heat = zero_flat_maps(heat)  # flat up to rounding: no location, the empty box
        if protocol == "paper":
            heat = normalize_heatmap(heat, cfg.variant)  # (B, h, w) min-max (paper) / min-subtracted (reference)
        heat = upsample_heatmap(heat, (side, side))  # (B, C, C)
        if protocol == "standard":
            heat = minmax(heat)  # (B, C, C) in [0, 1]
            class_map = zero_flat_maps(class_heatmap(out.cams_e.float(), labels))  # (B, h, w)
            gt_map = minmax(upsample_heatmap(class_map, (side, side)))  # (B, C, C)
        else:
            if cfg.variant == "paper":
                heat = heat.clamp(0.0, 1.0)  # bilinear keeps [0, 1] up to float rounding
            gt_map = minmax(heat)  # (B, C, C) the swept map: the combinational heatmap
        heat_np, gt_np = heat.cpu().numpy(), gt_map.cpu().numpy()
        top_idx_l, top_scores_l = top_idx.cpu().tolist(), top_scores.cpu().tolist()
        for i in range(images.shape[0]):
            label = int(batch["label"][i])
            top5 = [int(c) for c in top_idx_l[i]]
            crop_box = box_from_heatmap(heat_np[i], theta, policy)  # (4,) in the C x C frame
            if protocol == "paper":
                box_out = crop_box
                gt = batch["boxes"][i].numpy()  # (G, 4) every GT box in the crop frame, clipped: the best IoU counts
                iou = best_iou(box_out, gt, PROTOCOL_PIXEL_INCLUSIVE["paper"])
                gt_known_iou = iou  # the same class-independent box, no class check
                sweep_gt = gt
            elif wsol_rule:  # wsolevaluation's boxes and "+1" IoU in the C x C frame
                frame = transform.frame(tuple(batch["orig_size"][i]))
                gt = batch["orig_boxes"][i].numpy()  # (G, 4) every GT box, original pixels
                sweep_gt = resize_gt_boxes(gt, frame.orig_size, (side, side)) if len(gt) else gt
                crop_box = largest_contour_boxes(heat_np[i], [theta])[0]  # (4,) integer box, C x C frame
                box_out = to_original_box(crop_box, frame)  # (4,) original pixels, for display
                iou = float(best_pixel_ious(crop_box, sweep_gt)[0])
                gt_known_iou = float(best_pixel_ious(largest_contour_boxes(gt_np[i], [theta]), sweep_gt)[0])
                gt = sweep_gt  # the sweep scores the frame's boxes too
            else:
                frame = transform.frame(tuple(batch["orig_size"][i]))
                gt = batch["orig_boxes"][i].numpy()  # (G, 4) every GT box, original pixels
                box_out = to_original_box(crop_box, frame)  # (4,) original pixels
                iou = best_iou(box_out, gt, PROTOCOL_PIXEL_INCLUSIVE["standard"])
                _, gt_known_iou = locate_standard(gt_np[i], theta, frame, gt)  # the GT class's own map
                sweep_gt = batch["boxes"][i].numpy()  # (G, 4) every GT box in the C x C frame (wsolevaluation)
            if grid is not None:
                _sweep_image(swept, heat_np[i], gt_np[i], grid, policy, gt, None if protocol == "paper" else frame,
                             wsol_rule)
            if len(sweep_gt):
                maxbox.update(gt_np[i], sweep_gt)
            if pxap is not None:  # the GT class's map against the object mask, as wsolevaluation's PxAP
                pxap.update(gt_np[i], gt_mask(masks[0], *masks[1][str(batch["image_id"][i])], (side, side)))
            hit = iou >= cfg.eval.iou_threshold
            records.append({
                "image_id": str(batch["image_id"][i]),
                "label": label,
                "top5": top5,
                "top5_scores": [round(float(s), 6) for s in top_scores_l[i]],
                "box": [round(float(v), 2) for v in box_out],
                "iou": float(iou),
                "correct_top1_cls": top5[0] == label,
                "correct_top5_cls": label in top5,
                "correct_top1_loc": top5[0] == label and hit,
                "correct_top5_loc": label in top5 and hit,
                "correct_gt_known": gt_known_iou >= cfg.eval.iou_threshold,
            })
            if regions is not None:  # the GT class's map against the part / body / background masks
                entry = regions[1][records[-1]["image_id"]]
                records[-1].update(region_masses(gt_np[i], read_regions(regions[0] / entry.regions, (side, side))),
                                   **{PREFERRED_FIELD: entry.preferred})
            if batch["image_id"][i] in wanted:
                _add_to_gallery(gallery, batch, i, heat_np[i], crop_box, label, top5[0])
    if was_training:
        model.train()
    metrics = {name: float(np.mean([r[flag] for r in records])) if records else float("nan")
               for name, flag in FLAG_METRICS.items()}
    curve: dict[str, list[float]] = {}
    metrics["maxboxacc_v2"] = float("nan")
    if maxbox.count:
        box_stats = maxbox.compute()  # percentages
        metrics["maxboxacc_v2"] = box_stats["maxboxacc_v2"] / 100.0
        curve = {f"iou_{t:g}": [a / 100.0 for a in acc]
                 for t, acc in zip(box_stats["iou_thresholds"], box_stats["curve"])}
    if pxap is not None and pxap.count:
        try:
            px = pxap.compute()  # percentages
        except ValueError:  # no object pixel / nothing predicted: PxAP undefined
            px = {"pxap": float("nan"), "pixel_f1": float("nan"), "pixel_iou": float("nan"), "pr_curve": {}}
        metrics.update({k: px[k] / 100.0 for k in ("pxap", "pixel_f1", "pixel_iou")})
        curve.update({f"pxap_{k}": v for k, v in px["pr_curve"].items()})
    if regions is not None and records:
        metrics.update(mass_metrics(records))
    metrics["theta"] = float(theta)
    sweep = None
    if grid is not None:
        n, t = len(records), len(grid)
        sweep = ThresholdSweep(thetas=np.asarray(grid),
                               boxes=np.asarray(swept["boxes"]).reshape(n, t, 4),
                               ious=np.asarray(swept["ious"]).reshape(n, t),
                               gt_known_ious=np.asarray(swept["gt_known_ious"]).reshape(n, t))
    return EvalResult(protocol=protocol, metrics=metrics, records=records, curve=curve,
                      gallery=_stack_gallery(gallery) if gallery["image_ids"] else None, sweep=sweep)


def _sweep_image(swept: dict[str, list[np.ndarray]], heat: np.ndarray, gt_map: np.ndarray, grid: list[float],
                 policy: str, gt: np.ndarray, frame: TestFrame | None, wsol_rule: bool = False) -> None:
    """Append one image's boxes and IoUs at every θ of ``grid`` (the record's rules, vectorised over θ).

    ``frame`` None: the paper protocol (crop frame, every GT box, "+1" IoU); else the standard one,
    with ``wsol_rule`` wsolevaluation's boxes scored against ``gt`` in the C x C frame.
    """
    if frame is not None and wsol_rule:
        boxes = largest_contour_boxes(heat, grid)  # (T, 4) C x C frame
        swept["boxes"].append(_to_original_boxes(boxes, frame))
        swept["ious"].append(best_pixel_ious(boxes, gt))
        swept["gt_known_ious"].append(best_pixel_ious(largest_contour_boxes(gt_map, grid), gt))
        return
    crop_boxes = boxes_at_thresholds(heat, grid, policy)  # (T, 4) in the C x C frame
    if frame is None:  # paper: crop frame, every GT box, "+1" IoU, GT-known = the same box
        ious = best_ious(crop_boxes, gt, PROTOCOL_PIXEL_INCLUSIVE["paper"])  # (T,)
        swept["boxes"].append(crop_boxes)
        swept["ious"].append(ious)
        swept["gt_known_ious"].append(ious)
        return
    pixel_inclusive = PROTOCOL_PIXEL_INCLUSIVE["standard"]
    boxes = _to_original_boxes(crop_boxes, frame)  # (T, 4) original pixels
    known = _to_original_boxes(boxes_at_thresholds(gt_map, grid, "standard"), frame)  # (T, 4) GT class's map
    swept["boxes"].append(boxes)
    swept["ious"].append(best_ious(boxes, gt, pixel_inclusive))
    swept["gt_known_ious"].append(best_ious(known, gt, pixel_inclusive))


def _to_original_boxes(boxes: np.ndarray, frame: TestFrame) -> np.ndarray:
    """(T, 4) frame boxes mapped back to the original image, as :func:`to_original_box` maps one."""
    return frame.to_original(torch.as_tensor(boxes, dtype=torch.float64)).numpy()  # (T, 4)


def _add_to_gallery(gallery: dict[str, list], batch: dict, i: int, heat: np.ndarray, box: np.ndarray,
                    label: int, top1: int) -> None:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    image = ((batch["image"][i].float().cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    h = heat - heat.min()
    h = h / h.max() if h.max() > 0 else h
    gt = batch["boxes"][i][:1].numpy()
    gallery["image_ids"].append(batch["image_id"][i])
    gallery["images"].append(image)  # (C, C, 3) uint8
    gallery["heatmaps"].append((h * 255).round().astype(np.uint8))  # (C, C)
    gallery["pred_boxes"].append(np.asarray(box, dtype=np.float32))  # (4,) in the C x C frame
    gallery["gt_boxes"].append(gt[0].astype(np.float32) if len(gt) else np.zeros(4, np.float32))
    gallery["labels"].append(label)
    gallery["top1"].append(top1)


def _stack_gallery(gallery: dict[str, list]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) if k != "image_ids" else np.asarray(v, dtype=str) for k, v in gallery.items()}
