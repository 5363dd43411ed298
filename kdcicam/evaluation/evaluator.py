"""The evaluator: one function for every model and both evaluation protocols.

``paper`` — the protocol behind the published tables (reference-notes.md, "Evaluation protocol";
the authors' ``test_center_crop.py``): the test image resized to a square S x S, centre crop C;
every GT box mapped into the crop and clipped to it, the best IoU counting (their test loop
scores one image's whole box list; one box per image on CUB); the box from the method's
combinational heatmap (Eq. 3) normalised and thresholded as the variant says
(:data:`kdcicam.evaluation.protocols.VARIANT_BOX_POLICY`); IoU in crop coordinates with the authors'
"+1" pixel convention (``IoU`` in their ``utils.py``: areas (x1 - x0 + 1)(y1 - y0 + 1) of the ``find_objects`` box
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
taken at every θ of the grid (:mod:`kdcicam.evaluation.theta_sweep`: the metrics per θ and the metrics and
records at any θ of the grid, without running the model again). The threshold *policies* (fixed / chosen
on validation / oracle) that pick a θ from these live in :mod:`kdcicam.evaluation.selection`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from kdcicam.core.config import RunConfig
from kdcicam.data.base import Sample
from kdcicam.data.cache import FrameStore, test_batches
from kdcicam.data.dataset import WSOLDataset, collate_wsol
from kdcicam.data.mechanism_files import mechanism_entries, read_regions
from kdcicam.data.object_masks import object_masks
from kdcicam.evaluation.boxes import box_from_heatmap
from kdcicam.evaluation.eval_result import FLAG_METRICS, EvalResult, ThresholdSweep
from kdcicam.evaluation.flat_maps import zero_flat_maps
from kdcicam.evaluation.gallery_arrays import add_to_gallery, stack_gallery
from kdcicam.evaluation.mechanism import PREFERRED_FIELD, mass_metrics, region_masses
from kdcicam.evaluation.metrics import MaxBoxAccV2Meter
from kdcicam.evaluation.protocols import (
    PROTOCOL_PIXEL_INCLUSIVE,
    VARIANT_BOX_POLICY,
    best_iou,
    locate_standard,
    minmax,
    protocol_transform,
    to_original_box,
)
from kdcicam.evaluation.pxap import PxAPMeter, gt_mask
from kdcicam.evaluation.theta_sweep import sweep_image
from kdcicam.evaluation.wsol_rule import best_pixel_ious, largest_contour_boxes, resize_gt_boxes
from kdcicam.model.heatmap import class_heatmap, combinational_heatmap, normalize_heatmap, upsample_heatmap


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
            heatmap: the result's ``sweep`` (see :mod:`kdcicam.evaluation.theta_sweep`).
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
                sweep_image(swept, heat_np[i], gt_np[i], grid, policy, gt, None if protocol == "paper" else frame,
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
                add_to_gallery(gallery, batch, i, heat_np[i], crop_box, label, top5[0])
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
                      gallery=stack_gallery(gallery) if gallery["image_ids"] else None, sweep=sweep)
