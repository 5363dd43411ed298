"""Image transforms that keep the ground-truth boxes aligned with the pixels.

Every transform is a callable ``transform(img, boxes) -> (image, boxes)``:

- ``img``: an RGB ``PIL.Image.Image`` (other modes are converted to RGB);
- ``boxes``: a float Tensor ``(K, 4)``, ``(x0, y0, x1, y1)`` in continuous pixel coordinates of the
  original image (``K`` may be 0);
- returns the ImageNet-normalised float32 image ``(3, H, W)`` and the boxes ``(K, 4)`` float32 mapped
  into the output frame and clipped to it. A box that leaves the frame becomes zero-area; rows are
  never dropped, so indices stay aligned with the input.

Geometry and pixels are kept apart: box geometry and the test transforms' :class:`TestFrame` are
:mod:`kdcicam.data.box_geometry` (pure box maps, invertible for the evaluator), every pixel step runs on a
uint8 ``(3, H, W)`` tensor (:mod:`kdcicam.data.pixel_steps`), with the float conversion and normalisation
last, so a batched uint8 GPU path can later reuse the same geometry; RandAugment with boxes is
:mod:`kdcicam.data.box_randaugment`. Sizes are ``(width, height)`` like PIL; torchvision's ``canvas_size``
is ``(height, width)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from kdcicam.core.errors import ConfigError
from kdcicam.data.box_geometry import Size, TestFrame, center_crop_offset, check_boxes, clip_boxes
from kdcicam.data.box_randaugment import BoxRandAugment
from kdcicam.data.pixel_steps import apply_frame_to_image, normalize_image, to_uint8_image

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
        out_boxes = frame.to_frame(check_boxes(boxes).to(torch.float32))  # (K, 4)
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

def _as_bounding_boxes(boxes: torch.Tensor, size: Size) -> tv_tensors.BoundingBoxes:
    """Wrap (K, 4) xyxy boxes of an image of ``size`` (W, H) for torchvision.transforms.v2."""
    boxes = check_boxes(boxes).to(torch.float32)
    return tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(size[1], size[0]))


class TrainTransform:
    """Random training transform: a v2 geometry pipeline, optional RandAugment, normalisation.

    The stages are attributes so a later uint8 / GPU path can reuse them: ``geometry`` (v2
    transforms over a uint8 image and its BoundingBoxes), ``randaugment`` (or None) and the final
    :func:`kdcicam.data.pixel_steps.normalize_image`. Randomness comes from torch's global RNG.
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
