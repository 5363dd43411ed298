"""RandAugment with the ground-truth boxes following its geometric ops (:class:`BoxRandAugment`)."""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from kdcicam.data.box_geometry import clip_boxes, intersect_boxes

# RandAugment's ops that move pixels; the others (colour, contrast, solarize...) leave boxes alone.
GEOMETRIC_OPS: frozenset[str] = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})


class BoxRandAugment(v2.RandAugment):
    """torchvision's RandAugment with the boxes following its geometric ops.

    ``v2.RandAugment`` refuses ``BoundingBoxes`` inputs, so this draws the ops exactly as it does
    (same op table, magnitudes and RNG calls: for one seed the image equals ``v2.RandAugment``'s)
    and sends the boxes through the same ``F.affine`` / ``F.rotate`` call as the image for
    ShearX/Y, TranslateX/Y and Rotate; photometric ops leave them alone.

    Boxes are tracked two ways and intersected, both containing the object's visible pixels:
    the box itself, clipped after every op (which knows what an op pushed off the canvas), and its
    four corners as unclipped points (exact under a chain of affine ops, where re-boxing after each
    rotation would otherwise grow the box).
    """

    def forward(self, image: torch.Tensor, boxes: tv_tensors.BoundingBoxes):  # type: ignore[override]
        """Augment a uint8 (3, H, W) image and its (K, 4) XYXY BoundingBoxes together."""
        height, width = image.shape[-2:]
        corners = _corner_points(boxes)  # (4K, 4) degenerate boxes, unclipped
        for _ in range(self.num_ops):
            op, (magnitudes_fn, signed) = self._get_random_item(self._AUGMENTATION_SPACE)
            magnitudes = magnitudes_fn(self.num_magnitude_bins, height, width)
            if magnitudes is not None:
                magnitude = float(magnitudes[self.magnitude])
                if signed and torch.rand(()) <= 0.5:
                    magnitude *= -1
            else:
                magnitude = 0.0
            kwargs = dict(interpolation=self.interpolation, fill=self._fill)
            image = self._apply_image_or_video_transform(image, op, magnitude, **kwargs)
            if op in GEOMETRIC_OPS:
                boxes = self._apply_image_or_video_transform(boxes, op, magnitude, **kwargs)
                corners = self._apply_image_or_video_transform(corners, op, magnitude, **kwargs)
        tight = intersect_boxes(boxes.as_subclass(torch.Tensor), _corners_to_boxes(corners))  # (K, 4)
        return image, tv_tensors.wrap(clip_boxes(tight, (width, height)), like=boxes)


def _corner_points(boxes: tv_tensors.BoundingBoxes) -> tv_tensors.BoundingBoxes:
    """The 4 corners of each (K, 4) box as (4K, 4) zero-size XYXY boxes that are never clamped."""
    x0, y0, x1, y1 = boxes.as_subclass(torch.Tensor).unbind(dim=1)  # (K,) each
    xs = torch.stack([x0, x1, x1, x0], dim=1)  # (K, 4) corner x
    ys = torch.stack([y0, y0, y1, y1], dim=1)  # (K, 4) corner y
    points = torch.stack([xs, ys, xs, ys], dim=2).reshape(-1, 4)  # (4K, 4)
    return tv_tensors.BoundingBoxes(points, format="XYXY", canvas_size=boxes.canvas_size,
                                    clamping_mode=None)


def _corners_to_boxes(corners: tv_tensors.BoundingBoxes) -> torch.Tensor:
    """The (K, 4) boxes enclosing each group of 4 corner points of (4K, 4)."""
    points = corners.as_subclass(torch.Tensor).reshape(-1, 4, 4)[..., :2]  # (K, 4, 2) x, y
    return torch.cat([points.amin(dim=1), points.amax(dim=1)], dim=1)  # (K, 4)
