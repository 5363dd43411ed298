"""The random part of the train transform (random crop, horizontal flip, RandAugment) applied to whole
uint8 batches of cached frames with tensor ops: each sample's choices are drawn on the CPU with the
per-image pipeline's exact RNG calls (see :mod:`kdcicam.data.cache`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from kdcicam.core.runtime import derive_seed
from kdcicam.data.box_geometry import clip_boxes, intersect_boxes
from kdcicam.data.box_randaugment import GEOMETRIC_OPS, BoxRandAugment, _corner_points, _corners_to_boxes
from kdcicam.data.transforms import TestTransform, TrainTransform


@dataclass(frozen=True)
class BatchAugment:
    """The random part of the train transform, applied to whole uint8 batches of cached S x S frames."""

    crop: int  # C: side of the random crop (the network's input)
    flip: bool = True  # horizontal flip with p = 0.5 (v2.RandomHorizontalFlip)
    randaugment: BoxRandAugment | None = None  # op table, N, M, interpolation, fill; None = off


@dataclass(frozen=True)
class AugmentDraws:
    """Every random choice of one batch (CPU tensors), drawn by :func:`draw_augment`."""

    top: torch.Tensor  # (B,) long, crop's top row in the S x S frame
    left: torch.Tensor  # (B,) long, crop's left column
    flip: torch.Tensor  # (B,) bool
    ops: torch.Tensor  # (N_ops, B) long, index into the RandAugment op table
    negate: torch.Tensor  # (N_ops, B) bool, the sign draw of signed ops


def split_train_transform(transform: TrainTransform) -> tuple[TestTransform, BatchAugment]:
    """Split the PIL train transform into its cached part and its per-batch random part.

    ``train_transform(resize, crop, ...)`` is ``Resize((R, R)) -> RandomCrop(C) -> RandomHorizontalFlip(0.5)
    -> [BoxRandAugment]``: the resize is cached (``TestTransform(resize=R)``), the rest is a
    :class:`BatchAugment` with the same parameters.

    Raises:
        ValueError: The transform's geometry is not that pipeline (e.g. RandomResizedCrop).
    """
    steps = list(transform.geometry.transforms) if isinstance(transform.geometry, v2.Compose) else []
    kinds = [type(s) for s in steps]
    if kinds != [v2.Resize, v2.RandomCrop, v2.RandomHorizontalFlip]:
        raise ValueError(f"the cached path supports Resize -> RandomCrop -> RandomHorizontalFlip only, "
                         f"got {[k.__name__ for k in kinds]}")
    resize, crop, flip = steps
    if (tuple(resize.size) != (resize.size[0],) * 2 or crop.size[0] != crop.size[1] or crop.padding is not None
            or flip.p != 0.5):
        raise ValueError(f"the cached path needs a square resize, a square unpadded crop and p = 0.5, got "
                         f"{resize.size}, {crop.size} (padding {crop.padding}), p = {flip.p}")
    return TestTransform(resize=int(resize.size[0])), BatchAugment(crop=int(crop.size[0]), flip=True,
                                                                   randaugment=transform.randaugment)


def augment_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s augmentation in ``epoch``: the trainer's ``EpochView`` stream."""
    return derive_seed(seed, "augment", epoch, index)


def draw_augment(batch_size: int, side: int, augment: BatchAugment, generator: torch.Generator) -> AugmentDraws:
    """Draw the crops, flips and RandAugment ops of ``batch_size`` images, one image after another.

    Each image makes exactly the RNG calls of the per-image v2 pipeline, in its order, so a generator
    seeded like torch's global RNG gives the same choices as ``TrainTransform``: ``v2.RandomCrop``
    (``randint(0, S - C + 1)`` for top, then left, skipped when S = C), ``v2.RandomHorizontalFlip``
    (flip iff ``rand(1) < 0.5``), then per RandAugment round an op ``randint(len(ops))`` and, for a
    signed op with a magnitude, a sign ``rand() <= 0.5`` (:class:`BoxRandAugment`).

    Args:
        batch_size: B.
        side: S, the cached frame's side.
        augment: The augmentation.
        generator: A CPU generator.

    Returns:
        The :class:`AugmentDraws`.
    """
    crop = augment.crop
    if side < crop:
        raise ValueError(f"crop {crop} is larger than the cached frame {side}")
    ra = augment.randaugment
    rounds = ra.num_ops if ra is not None else 0
    space = list(ra._AUGMENTATION_SPACE.values()) if ra is not None else []
    signed = [sign and fn(ra.num_magnitude_bins, crop, crop) is not None for fn, sign in space]  # draws a sign
    top, left, flip = [], [], []
    ops = [[0] * batch_size for _ in range(rounds)]
    negate = [[False] * batch_size for _ in range(rounds)]
    for b in range(batch_size):
        top.append(int(torch.randint(0, side - crop + 1, size=(), generator=generator)) if side > crop else 0)
        left.append(int(torch.randint(0, side - crop + 1, size=(), generator=generator)) if side > crop else 0)
        flip.append(bool(torch.rand(1, generator=generator) < 0.5) if augment.flip else False)
        for r in range(rounds):
            ops[r][b] = int(torch.randint(len(space), (), generator=generator))
            negate[r][b] = bool(torch.rand((), generator=generator) <= 0.5) if signed[ops[r][b]] else False
    return AugmentDraws(top=torch.tensor(top, dtype=torch.long), left=torch.tensor(left, dtype=torch.long),
                        flip=torch.tensor(flip, dtype=torch.bool),
                        ops=torch.tensor(ops, dtype=torch.long).reshape(rounds, batch_size),
                        negate=torch.tensor(negate, dtype=torch.bool).reshape(rounds, batch_size))


def draw_for_samples(indices: Sequence[int], side: int, augment: BatchAugment, seed: int, epoch: int) -> AugmentDraws:
    """The draws of each sample from its own generator, seeded :func:`augment_seed` (seed, epoch, index).

    The choices of a sample depend neither on its batch nor on its position in the epoch, and equal those
    the trainer's per-image path (``EpochView`` + ``TrainTransform``) makes for it.
    """
    draws = [draw_augment(1, side, augment, torch.Generator().manual_seed(augment_seed(seed, epoch, int(i))))
             for i in indices]
    if not draws:
        return draw_augment(0, side, augment, torch.Generator())
    return AugmentDraws(top=torch.cat([d.top for d in draws]), left=torch.cat([d.left for d in draws]),
                        flip=torch.cat([d.flip for d in draws]), ops=torch.cat([d.ops for d in draws], dim=1),
                        negate=torch.cat([d.negate for d in draws], dim=1))


def crop_flip_images(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
                     size: int) -> torch.Tensor:
    """Crop each image of a batch at its own offset, mirrored left-right where ``flip``, in one gather.

    Args:
        images: (B, 3, S, S) any dtype, on any device.
        top: (B,) long crop rows (moved to ``images``' device).
        left: (B,) long crop columns.
        flip: (B,) bool.
        size: C, the crop side.

    Returns:
        (B, 3, C, C), ``out[b] == hflip(images[b, :, top:top+C, left:left+C])`` where flipped.
    """
    dev = images.device
    b, ch = images.shape[:2]
    steps = torch.arange(size, device=dev)  # (C,)
    rows = top.to(dev)[:, None] + steps  # (B, C)
    cols = left.to(dev)[:, None] + steps  # (B, C)
    cols = torch.where(flip.to(dev)[:, None], cols.flip(1), cols)  # (B, C) a flipped crop reads right to left
    bi = torch.arange(b, device=dev)[:, None, None, None]  # (B, 1, 1, 1)
    ci = torch.arange(ch, device=dev)[None, :, None, None]  # (1, 3, 1, 1)
    return images[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # (B, 3, C, C)


def crop_flip_boxes(boxes: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
                    size: int) -> torch.Tensor:
    """The boxes of :func:`crop_flip_images`: translated into each crop, clipped to it, mirrored where ``flip``.

    Args:
        boxes: (B, K, 4) xyxy in the S x S frame.
        top, left: (B,) crop offsets.
        flip: (B,) bool.
        size: C.

    Returns:
        (B, K, 4) xyxy in the C x C frame, ``x1 >= x0``, ``y1 >= y0``.
    """
    shift = torch.stack([left, top, left, top], dim=1).to(boxes)[:, None, :]  # (B, 1, 4)
    out = clip_boxes((boxes - shift).reshape(-1, 4), (size, size)).reshape(boxes.shape)  # (B, K, 4)
    mirrored = torch.stack([size - out[..., 2], out[..., 1], size - out[..., 0], out[..., 3]], dim=-1)  # (B, K, 4)
    return torch.where(flip[:, None, None], mirrored, out)


def randaugment_batch(images: torch.Tensor, boxes: torch.Tensor, ops: torch.Tensor, negate: torch.Tensor,
                      ra: BoxRandAugment) -> tuple[torch.Tensor, torch.Tensor]:
    """RandAugment with a different op per image, as :class:`BoxRandAugment` does image by image.

    Each round groups the images that drew the same (op, sign) and runs torchvision's op once on the
    group (the ops are batched: per-image statistics such as Equalize's histogram stay per image).
    Boxes follow the geometric ops exactly as in :meth:`BoxRandAugment.forward`: clipped after
    every op, and as unclipped corner points, intersected at the end.

    Args:
        images: (B, 3, C, C) uint8 on the device.
        boxes: (B, K, 4) xyxy in the C x C frame, CPU.
        ops: (N_ops, B) long op indices.
        negate: (N_ops, B) bool sign draws (used by signed ops with a magnitude).
        ra: Supplies the op table, magnitude, bins, interpolation and fill.

    Returns:
        (B, 3, C, C) uint8 and (B, K, 4) boxes clipped to the frame.
    """
    b, k = boxes.shape[:2]
    height, width = images.shape[-2:]
    space = list(ra._AUGMENTATION_SPACE.items())
    canvas = (int(height), int(width))
    flat = tv_tensors.BoundingBoxes(boxes.reshape(-1, 4), format="XYXY", canvas_size=canvas)  # (B*K, 4)
    corners = _corner_points(flat).as_subclass(torch.Tensor).reshape(b, 4 * k, 4)  # (B, 4K, 4)
    boxes = boxes.clone()
    images = images.clone()
    for r in range(ops.shape[0]):
        for op_index in ops[r].unique().tolist():
            name, (magnitudes_fn, signed) = space[op_index]
            magnitudes = magnitudes_fn(ra.num_magnitude_bins, height, width)
            for neg in (False, True):
                rows = torch.nonzero((ops[r] == op_index) & (negate[r] == neg)).squeeze(1)  # (g,) CPU
                if rows.numel() == 0:
                    continue
                magnitude = 0.0
                if magnitudes is not None:
                    magnitude = float(magnitudes[ra.magnitude]) * (-1.0 if signed and neg else 1.0)
                kwargs = dict(interpolation=ra.interpolation, fill=ra._fill)
                dev_rows = rows.to(images.device)
                group = tv_tensors.Image(images[dev_rows])  # (g, 3, C, C)
                images[dev_rows] = ra._apply_image_or_video_transform(group, name, magnitude, **kwargs).as_subclass(
                    torch.Tensor)
                if name in GEOMETRIC_OPS and k:
                    g_boxes = tv_tensors.BoundingBoxes(boxes[rows].reshape(-1, 4), format="XYXY", canvas_size=canvas)
                    g_corners = tv_tensors.BoundingBoxes(corners[rows].reshape(-1, 4), format="XYXY",
                                                         canvas_size=canvas, clamping_mode=None)
                    g_boxes = ra._apply_image_or_video_transform(g_boxes, name, magnitude, **kwargs)
                    g_corners = ra._apply_image_or_video_transform(g_corners, name, magnitude, **kwargs)
                    boxes[rows] = g_boxes.as_subclass(torch.Tensor).reshape(-1, k, 4)
                    corners[rows] = g_corners.as_subclass(torch.Tensor).reshape(-1, 4 * k, 4)
    if k:
        enclosing = _corners_to_boxes(corners.reshape(-1, 4))  # (B*K, 4)
        tight = intersect_boxes(boxes.reshape(-1, 4), enclosing)  # (B*K, 4)
        boxes = clip_boxes(tight, (int(width), int(height))).reshape(b, k, 4)
    return images, boxes
