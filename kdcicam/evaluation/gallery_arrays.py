"""The arrays of the report's CAM gallery, gathered during evaluation: each chosen image's test crop, heatmap,
predicted and first GT box (C x C frame), label and top-1 class."""

from __future__ import annotations

import numpy as np
import torch

from kdcicam.data.pixel_steps import IMAGENET_MEAN, IMAGENET_STD


def add_to_gallery(gallery: dict[str, list], batch: dict, i: int, heat: np.ndarray, box: np.ndarray,
                   label: int, top1: int) -> None:
    """Append image ``i`` of ``batch``: its crop un-normalised to uint8, its heatmap stretched to uint8, the boxes."""
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


def stack_gallery(gallery: dict[str, list]) -> dict[str, np.ndarray]:
    """The gathered lists as arrays, one per key (image ids as strings)."""
    return {k: np.asarray(v) if k != "image_ids" else np.asarray(v, dtype=str) for k, v in gallery.items()}
