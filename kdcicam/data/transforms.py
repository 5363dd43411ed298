"""Image transforms that keep the ground-truth boxes aligned with the pixels.

Every transform is a callable ``transform(img, boxes) -> (image, boxes)``:

- ``img``: an RGB ``PIL.Image.Image`` (other modes are converted to RGB);
- ``boxes``: a float Tensor ``(K, 4)``, ``(x0, y0, x1, y1)`` in continuous pixel coordinates of the
  original image (``K`` may be 0);
- returns the ImageNet-normalised float32 image ``(3, H, W)`` and the boxes ``(K, 4)`` float32 mapped
  into the output frame and clipped to it. A box that leaves the frame becomes zero-area; rows are
  never dropped, so indices stay aligned with the input.

Geometry and pixels are kept apart: the test transforms' geometry is a :class:`TestFrame` (pure
box maps, invertible for the evaluator), and every pixel step runs on a uint8 ``(3, H, W)`` tensor,
with the float conversion and normalisation last (:func:`normalize_image`), so a batched uint8 GPU
path can later reuse the same geometry. Sizes in this module are ``(width, height)`` like PIL;
torchvision's ``canvas_size`` is ``(height, width)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from kdcicam.core.errors import ConfigError

Size = tuple[int, int]  # (width, height) in pixels

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# RandAugment's ops that move pixels; the others (colour, contrast, solarize...) leave boxes alone.
GEOMETRIC_OPS: frozenset[str] = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})


# --------------------------------------------------------------------------- pure box geometry

def _check_boxes(boxes: torch.Tensor) -> torch.Tensor:
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
    boxes = _check_boxes(boxes)
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
    boxes = _check_boxes(boxes)
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
    boxes = _check_boxes(boxes)
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
    boxes = _check_boxes(boxes)
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
    a, b = _check_boxes(a), _check_boxes(b)
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


# --------------------------------------------------------------------------- pixel steps

def to_uint8_image(img: PIL.Image.Image) -> tv_tensors.Image:
    """A PIL image as a uint8 (3, H, W) tensor (converted to RGB first if it is not)."""
    if img.mode != "RGB":
        img = img.convert("RGB")  # CUB / ILSVRC hold a few grayscale and CMYK files
    return F.to_image(img)  # (3, H, W) uint8


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """A uint8 (3, H, W) image as float32 in [0, 1], normalised with ImageNet mean/std.

    Args:
        image: (3, H, W) uint8 image (any leading batch dims work too).

    Returns:
        (3, H, W) float32 plain tensor, ``(x / 255 - mean) / std`` per channel.
    """
    image = F.to_dtype(image, torch.float32, scale=True)  # (3, H, W) in [0, 1]
    image = F.normalize(image, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    return image.as_subclass(torch.Tensor)


def apply_frame_to_image(image: torch.Tensor, frame: TestFrame) -> torch.Tensor:
    """Resize and crop a uint8 (3, H, W) image as ``frame`` says (bilinear, antialiased)."""
    width, height = frame.resize_size
    image = F.resize(image, [height, width], antialias=True)  # (3, Hr, Wr)
    left, top = frame.crop_offset
    crop_w, crop_h = frame.crop_size
    return F.crop(image, top, left, crop_h, crop_w)  # (3, Hc, Wc)


def _as_bounding_boxes(boxes: torch.Tensor, size: Size) -> tv_tensors.BoundingBoxes:
    """Wrap (K, 4) xyxy boxes of an image of ``size`` (W, H) for torchvision.transforms.v2."""
    boxes = _check_boxes(boxes).to(torch.float32)
    return tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(size[1], size[0]))


# --------------------------------------------------------------------------- test transforms

@dataclass(frozen=True)
class TestTransform:
    """Deterministic test transform: square resize, then an optional centre crop.

    ``crop=None`` keeps the whole resized image (the standard CAM / wsolevaluation protocol).
    """

    __test__ = False  # not a pytest test class despite its name

    resize: int  # side of the square resize
    crop: int | None = None  # side of the centre crop; None = no crop

    @property
    def out_size(self) -> Size:
        """(W, H) of the output image."""
        side = self.resize if self.crop is None else self.crop
        return (side, side)

    def frame(self, orig_size: Size) -> TestFrame:
        """The geometry applied to an original image of ``orig_size`` (W, H)."""
        resize_size = (self.resize, self.resize)
        if self.crop is None:
            return TestFrame(orig_size, resize_size, (0, 0), resize_size)
        offset = center_crop_offset(self.resize, self.crop)  # same on both axes: square
        return TestFrame(orig_size, resize_size, (offset, offset), (self.crop, self.crop))

    def __call__(self, img: PIL.Image.Image, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform one image and its original-coordinate boxes (see the module docstring)."""
        frame = self.frame(img.size)
        image = apply_frame_to_image(to_uint8_image(img), frame)  # (3, C, C) uint8
        out_boxes = frame.to_frame(_check_boxes(boxes).to(torch.float32))  # (K, 4)
        return normalize_image(image), out_boxes


def test_transform_paper(resize: int, crop: int) -> TestTransform:
    """The KD-CI-CAM test protocol (§4.2): resize to a square ``resize``², centre crop ``crop``.

    Boxes are resized, shifted by the crop offset and clipped to the crop (reference-notes: the
    published numbers score IoU in crop coordinates). E.g. 344 / 224 for VGG16 on CUB.

    Args:
        resize: Side of the square resize (344 CUB, 288 ILSVRC, 500 InceptionV3).
        crop: Side of the centre crop (224, 299 for InceptionV3); at most ``resize``.

    Returns:
        A :class:`TestTransform`; its ``frame(orig_size)`` gives the geometry for the evaluator.
    """
    _check_side("eval.test_resize", resize)
    _check_side("eval.test_crop", crop)
    if crop > resize:
        raise ConfigError(f"eval.test_crop = {crop}: must not exceed eval.test_resize = {resize}")
    return TestTransform(resize=resize, crop=crop)


test_transform_paper.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def test_transform_standard(size: int) -> TestTransform:
    """The standard CAM / wsolevaluation protocol: resize the whole image to ``size``², no crop.

    Boxes are scaled into the ``size`` frame; ``frame(orig_size).to_original`` maps predictions
    back to the original image, where the standard protocol scores them.

    Args:
        size: Side of the square input (224 VGG16, 299 InceptionV3).

    Returns:
        A :class:`TestTransform` with ``crop=None``.
    """
    _check_side("eval.test_crop", size)
    return TestTransform(resize=size, crop=None)


test_transform_standard.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _check_side(key: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} = {value!r}: must be a positive integer (pixels)")


# --------------------------------------------------------------------------- train transform

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


class TrainTransform:
    """Random training transform: a v2 geometry pipeline, optional RandAugment, normalisation.

    The stages are attributes so a later uint8 / GPU path can reuse them: ``geometry`` (v2
    transforms over a uint8 image and its BoundingBoxes), ``randaugment`` (or None) and the final
    :func:`normalize_image`. Randomness comes from torch's global RNG.
    """

    def __init__(self, geometry: v2.Transform, randaugment: BoxRandAugment | None, out_size: Size) -> None:
        self.geometry = geometry
        self.randaugment = randaugment
        self.out_size = out_size

    def __call__(self, img: PIL.Image.Image, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform one image and its original-coordinate boxes (see the module docstring)."""
        image = to_uint8_image(img)  # (3, H, W) uint8
        bboxes = _as_bounding_boxes(boxes, img.size)  # (K, 4) in the original frame
        image, bboxes = self.geometry(image, bboxes)  # (3, C, C), boxes in the crop frame
        if self.randaugment is not None:
            image, bboxes = self.randaugment(image, bboxes)
        out_boxes = clip_boxes(bboxes.as_subclass(torch.Tensor), self.out_size)  # (K, 4)
        return normalize_image(image), out_boxes

    def __repr__(self) -> str:
        return f"TrainTransform(geometry={self.geometry!r}, randaugment={self.randaugment!r})"


def train_transform(
    resize: int,
    crop: int,
    randaugment: bool,
    ops: int = 2,
    magnitude: int = 9,
    random_resized_crop_scale: tuple[float, float] | None = None,
) -> TrainTransform:
    """The training transform, boxes following every geometric step.

    Square resize to ``resize``², random ``crop``² crop, horizontal flip (p = 0.5), then
    RandAugment(``ops``, ``magnitude``) when enabled (§4.2: "We augment the training images with
    RandAugment"). With ``random_resized_crop_scale`` set, ``RandomResizedCrop(crop, scale)``
    replaces resize + crop (the authors' code: RandomResizedCrop(224, scale=(0.2, 1))).

    Args:
        resize: Side of the square resize (ignored with ``random_resized_crop_scale``).
        crop: Side of the output (the network's input).
        randaugment: Apply RandAugment after the flip.
        ops: RandAugment's number of ops N.
        magnitude: RandAugment's magnitude M, in [0, 30] (torchvision's 31 bins).
        random_resized_crop_scale: (min, max) area fraction for RandomResizedCrop, or None.

    Returns:
        A :class:`TrainTransform`.
    """
    _check_side("data.crop", crop)
    if random_resized_crop_scale is None:
        _check_side("data.train_resize", resize)
        if crop > resize:
            raise ConfigError(f"data.crop = {crop}: must not exceed data.train_resize = {resize}")
        steps: list[v2.Transform] = [v2.Resize((resize, resize), antialias=True), v2.RandomCrop(crop)]
    else:
        lo, hi = random_resized_crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"random_resized_crop_scale = {random_resized_crop_scale!r}: "
                              "must satisfy 0 < min <= max <= 1")
        steps = [v2.RandomResizedCrop(crop, scale=(lo, hi), antialias=True)]
    steps.append(v2.RandomHorizontalFlip(p=0.5))
    augment = None
    if randaugment:
        if not isinstance(ops, int) or ops < 0:
            raise ConfigError(f"data.randaugment_ops = {ops!r}: must be an integer >= 0")
        if not isinstance(magnitude, int) or not 0 <= magnitude <= 30:
            raise ConfigError(f"data.randaugment_magnitude = {magnitude!r}: must be an integer in [0, 30]")
        augment = BoxRandAugment(num_ops=ops, magnitude=magnitude)
    return TrainTransform(v2.Compose(steps), augment, (crop, crop))
