"""Pure box geometry: ground-truth boxes resized, cropped, clipped, mirrored and intersected as the pixels are,
and a test transform's geometry (:class:`TestFrame`), invertible so predicted boxes map back.

Boxes are float tensors ``(K, 4)``, ``(x0, y0, x1, y1)`` in continuous pixel coordinates (``K`` may be 0).
Sizes are ``(width, height)`` like PIL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Size = tuple[int, int]  # (width, height) in pixels


def check_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Return ``boxes`` as a floating (K, 4) tensor, or raise ValueError on a wrong shape."""
    if not isinstance(boxes, torch.Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a (K, 4) tensor in xyxy, got {shape}")
    return boxes if boxes.is_floating_point() else boxes.float()


def resize_boxes(boxes: torch.Tensor, in_size: Size, out_size: Size) -> torch.Tensor:
    """Scale boxes from an image of ``in_size`` to the same image resized to ``out_size``.

    Continuous coordinates scale exactly (pixel edges map to pixel edges, as in torchvision's
    resize with ``align_corners=False``).

    Args:
        boxes: (K, 4) xyxy boxes in the ``in_size`` frame.
        in_size: (width, height) before the resize.
        out_size: (width, height) after the resize.

    Returns:
        (K, 4) boxes in the ``out_size`` frame, same dtype.
    """
    boxes = check_boxes(boxes)
    sx = out_size[0] / in_size[0]
    sy = out_size[1] / in_size[1]
    scale = boxes.new_tensor([sx, sy, sx, sy])  # (4,)
    return boxes * scale  # (K, 4)


def crop_boxes(boxes: torch.Tensor, left: float, top: float) -> torch.Tensor:
    """Translate boxes into the frame of a crop whose top-left corner is ``(left, top)``.

    No clipping (see :func:`clip_boxes`); negative offsets translate the other way.

    Args:
        boxes: (K, 4) xyxy boxes.
        left: x of the crop's left edge in the current frame.
        top: y of the crop's top edge in the current frame.

    Returns:
        (K, 4) boxes relative to the crop's corner.
    """
    boxes = check_boxes(boxes)
    shift = boxes.new_tensor([left, top, left, top])  # (4,)
    return boxes - shift  # (K, 4)


def clip_boxes(boxes: torch.Tensor, size: Size) -> torch.Tensor:
    """Clip boxes to the frame ``[0, width] x [0, height]``.

    A box entirely outside becomes zero-area (it collapses onto the nearest edge); a box whose
    corners are out of order after an intersection is collapsed to ``x1 = x0`` / ``y1 = y0``.

    Args:
        boxes: (K, 4) xyxy boxes.
        size: (width, height) of the frame.

    Returns:
        (K, 4) boxes inside the frame, ``x1 >= x0`` and ``y1 >= y0``.
    """
    boxes = check_boxes(boxes)
    x0 = boxes[:, 0].clamp(0, size[0])  # (K,)
    y0 = boxes[:, 1].clamp(0, size[1])
    x1 = torch.maximum(boxes[:, 2].clamp(0, size[0]), x0)
    y1 = torch.maximum(boxes[:, 3].clamp(0, size[1]), y0)
    return torch.stack([x0, y0, x1, y1], dim=1)  # (K, 4)


def hflip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Mirror boxes left-right in a frame of the given width: ``x -> width - x``.

    Args:
        boxes: (K, 4) xyxy boxes.
        width: Width of the frame.

    Returns:
        (K, 4) mirrored boxes (``x0``/``x1`` swapped so that ``x1 >= x0`` still holds).
    """
    boxes = check_boxes(boxes)
    x0 = width - boxes[:, 2]  # (K,)
    x1 = width - boxes[:, 0]
    return torch.stack([x0, boxes[:, 1], x1, boxes[:, 3]], dim=1)  # (K, 4)


def intersect_boxes(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise intersection of two box sets; an empty intersection becomes zero-area.

    Args:
        a: (K, 4) xyxy boxes.
        b: (K, 4) xyxy boxes.

    Returns:
        (K, 4) boxes, ``x1 >= x0`` and ``y1 >= y0``.
    """
    a, b = check_boxes(a), check_boxes(b)
    lo = torch.maximum(a[:, :2], b[:, :2])  # (K, 2)
    hi = torch.maximum(torch.minimum(a[:, 2:], b[:, 2:]), lo)  # (K, 2)
    return torch.cat([lo, hi], dim=1)  # (K, 4)


def center_crop_offset(in_len: int, out_len: int) -> int:
    """Offset of a centre crop along one axis, torchvision's convention.

    ``int(round((in_len - out_len) / 2.0))`` with Python's round-half-to-even, exactly as
    ``torchvision.transforms.v2.functional.center_crop`` computes its anchor (so 344 -> 224 gives
    60, 225 -> 224 gives 0, 227 -> 224 gives 2).

    Args:
        in_len: Length of the axis before the crop.
        out_len: Length of the crop (<= in_len).

    Returns:
        The crop's start index along the axis.
    """
    return int(round((in_len - out_len) / 2.0))


@dataclass(frozen=True)
class TestFrame:
    """The geometry of a test transform for one original image size: resize, then crop.

    A box in the original image maps to the frame by scaling by ``resize_size / orig_size``,
    subtracting ``crop_offset`` and clipping to ``crop_size``; :meth:`to_original` undoes the first
    two steps (it cannot undo clipping), which is how the evaluator maps predicted boxes back.
    """

    __test__ = False  # not a pytest test class despite its name

    orig_size: Size  # (W, H) of the original image
    resize_size: Size  # (W, H) after the resize
    crop_offset: Size  # (left, top) of the crop in the resized image
    crop_size: Size  # (W, H) of the crop = the network's input

    def to_frame(self, boxes: torch.Tensor) -> torch.Tensor:
        """Map (K, 4) original-image boxes into the crop frame, clipped to it."""
        boxes = resize_boxes(boxes, self.orig_size, self.resize_size)  # (K, 4) resized frame
        boxes = crop_boxes(boxes, *self.crop_offset)  # (K, 4) crop frame, unclipped
        return clip_boxes(boxes, self.crop_size)

    def to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """Map (K, 4) crop-frame boxes back to the original image, clipped to it."""
        left, top = self.crop_offset
        boxes = crop_boxes(boxes, -left, -top)  # (K, 4) resized frame
        boxes = resize_boxes(boxes, self.resize_size, self.orig_size)  # (K, 4) original frame
        return clip_boxes(boxes, self.orig_size)


def boxes_to_original(boxes: torch.Tensor, frame: TestFrame) -> torch.Tensor:
    """Map boxes predicted in a test frame back to original image coordinates.

    Args:
        boxes: (K, 4) xyxy boxes in the frame's crop coordinates.
        frame: The geometry the test transform applied to the image.

    Returns:
        (K, 4) boxes in original pixel coordinates, clipped to the original image.
    """
    return frame.to_original(boxes)
