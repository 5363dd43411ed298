"""Decode a split once into a uint8 tensor cache; crop, flip, augment and normalise whole batches on the device.

The PIL path (:class:`kdcicam.data.dataset.WSOLDataset` + :mod:`kdcicam.data.transforms`) decodes
and resizes every image at every epoch. Its deterministic part never changes, so it is done once
here: each image is decoded, resized (and, for test frames, centre-cropped) with the *same*
functions the PIL path calls (:func:`~kdcicam.data.transforms.apply_frame_to_image` on a uint8
tensor, :meth:`~kdcicam.data.transforms.TestFrame.to_frame` for the boxes) and stored in one
``(N, 3, S, S)`` uint8 tensor:

- on the training device when it fits in ``max_bytes`` (default: half the free GPU memory);
- else in pinned host memory on CUDA (batches copied asynchronously), plain memory on CPU.

Cached pixels therefore equal the PIL path's bit for bit (``tests/test_data_cache.py`` measures
it). The random part of the train transform (random crop, horizontal flip, RandAugment) is then
applied to whole batches with tensor ops on the device by :class:`CachedBatches`, followed by
:func:`~kdcicam.data.transforms.normalize_image`. Each sample's choices are drawn on the CPU from
its own generator seeded from (seed, epoch, sample index) with the per-image pipeline's exact RNG
calls, so a batch equals, bit for bit on the CPU, what the trainer's per-image path (``EpochView`` +
``TrainTransform``) makes of the same samples, after any resume. On CUDA the draws, crops, flips and
normalisation are the same; RandAugment's resampling ops (affine, rotate) may round differently there.

What is cached, per split:

- train: the square resize ``data.train_resize`` (random crop to ``data.crop`` per batch);
- test, paper protocol: resize ``eval.test_resize`` then centre crop ``eval.test_crop`` (final);
- test, standard protocol: resize ``eval.test_crop`` (final).

``RandomResizedCrop`` (``random_resized_crop_scale``) needs the full-resolution image at every
step and is not supported here (:func:`split_train_transform` raises).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from kdcicam.core.errors import DataError
from kdcicam.core.runtime import derive_seed
from kdcicam.data.base import Sample
from kdcicam.data.dataset import load_rgb
from kdcicam.data.transforms import (
    GEOMETRIC_OPS,
    BoxRandAugment,
    TestTransform,
    TrainTransform,
    _corner_points,
    _corners_to_boxes,
    apply_frame_to_image,
    clip_boxes,
    intersect_boxes,
    normalize_image,
    to_uint8_image,
)

PLACEMENTS = ("device", "pinned", "host")
Decoded = tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]  # frame, frame boxes, orig boxes, (W, H)
DEVICE_BUDGET_FRACTION = 0.5  # default max_bytes: this share of the GPU's free memory at build time


# --------------------------------------------------------------------------- the cache

@dataclass
class ImageCache:
    """One split decoded once: uint8 frames, labels and boxes (padded to the split's most boxes).

    ``images`` lives where :func:`build_cache` placed it (``placement``); everything else is on the CPU.
    """

    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) long
    boxes: torch.Tensor  # (N, K, 4) float32 xyxy in the cached S x S frame, rows >= num_boxes are 0
    orig_boxes: torch.Tensor  # (N, K, 4) float32 xyxy in original pixels, same padding
    num_boxes: torch.Tensor  # (N,) long, K_i <= K
    orig_sizes: torch.Tensor  # (N, 2) long, (W, H) of each original image
    image_ids: tuple[str, ...]
    placement: str  # "device" | "pinned" | "host"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def side(self) -> int:
        """S, the side of every cached frame."""
        return int(self.images.shape[-1])

    @property
    def nbytes(self) -> int:
        """Bytes held by the image tensor."""
        return self.images.numel()


def estimate_bytes(num_images: int, side: int) -> int:
    """Bytes of a ``(num_images, 3, side, side)`` uint8 cache (CUB train at 256: 5,994 x 196,608 = 1.18 GB)."""
    return num_images * 3 * side * side


def choose_placement(nbytes: int, device: torch.device, max_bytes: int | None = None) -> str:
    """Where a cache of ``nbytes`` goes: ``"device"`` if CUDA and it fits ``max_bytes``, else ``"pinned"``
    on CUDA, ``"host"`` on CPU.

    Args:
        nbytes: Size of the image tensor.
        device: The training device.
        max_bytes: Budget on the device; None = :data:`DEVICE_BUDGET_FRACTION` of its free memory.

    Returns:
        One of :data:`PLACEMENTS`.
    """
    if device.type != "cuda":
        return "host"
    if max_bytes is None:
        free, _total = torch.cuda.mem_get_info(device)
        max_bytes = int(free * DEVICE_BUDGET_FRACTION)
    return "device" if nbytes <= max_bytes else "pinned"


def _decode(sample: Sample, geometry: TestTransform) -> Decoded:
    """One sample through the deterministic geometry: (frame (3, S, S) uint8, boxes in it, orig boxes, (W, H))."""
    img = load_rgb(sample.path)
    if sample.size is not None and img.size != tuple(sample.size):
        raise DataError(f"{sample.path}: image is {img.width}x{img.height} but the index says "
                        f"{sample.size[0]}x{sample.size[1]} (its boxes would be misplaced)")
    frame = geometry.frame(img.size)
    image = apply_frame_to_image(to_uint8_image(img), frame).as_subclass(torch.Tensor)  # (3, S, S) uint8
    orig = torch.tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4)  # (K_i, 4)
    return image, frame.to_frame(orig), orig, img.size


def build_cache(
    samples: Sequence[Sample],
    geometry: TestTransform,
    device: torch.device,
    *,
    max_bytes: int | None = None,
    workers: int = 1,
) -> ImageCache:
    """Decode every sample once through ``geometry`` (square resize, optional centre crop).

    Args:
        samples: The split, e.g. ``index.train``.
        geometry: ``TestTransform(resize=data.train_resize)`` for training (see
            :func:`split_train_transform`), or the protocol's test transform for evaluation.
        device: The training device (decides the placement).
        max_bytes: Device budget for the images (see :func:`choose_placement`).
        workers: Decoding threads (PIL and the resize release the GIL).

    Returns:
        The :class:`ImageCache`.

    Raises:
        DataError: An image is missing, unreadable or not the size the index says.
    """
    side = geometry.out_size[0]
    n = len(samples)
    placement = choose_placement(estimate_bytes(n, side), device, max_bytes)
    images = torch.empty((n, 3, side, side), dtype=torch.uint8, pin_memory=placement == "pinned")  # (N, 3, S, S)
    kmax = max((len(s.boxes) for s in samples), default=0)
    boxes = torch.zeros(n, kmax, 4)  # (N, K, 4)
    orig_boxes = torch.zeros(n, kmax, 4)  # (N, K, 4)
    num_boxes = torch.zeros(n, dtype=torch.long)
    orig_sizes = torch.zeros(n, 2, dtype=torch.long)

    def one(i: int) -> None:
        image, frame_boxes, orig, size = _decode(samples[i], geometry)
        images[i] = image
        k = orig.shape[0]
        boxes[i, :k] = frame_boxes
        orig_boxes[i, :k] = orig
        num_boxes[i] = k
        orig_sizes[i] = torch.tensor(size)

    if workers > 1 and n > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, range(n)))  # list(): re-raise the first error
    else:
        for i in range(n):
            one(i)
    if placement == "device":
        images = images.to(device)
    return ImageCache(images=images, labels=torch.tensor([s.label for s in samples], dtype=torch.long),
                      boxes=boxes, orig_boxes=orig_boxes, num_boxes=num_boxes, orig_sizes=orig_sizes,
                      image_ids=tuple(s.image_id for s in samples), placement=placement)


# --------------------------------------------------------------------------- batch augmentation

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


# --------------------------------------------------------------------------- batches

class CachedBatches:
    """Batches of a cached split in a given order: the trainer's / evaluator's loader without PIL.

    Yields the keys of :func:`kdcicam.data.dataset.collate_wsol`: ``"image"`` (B, 3, C, C) float32
    normalised on ``device``; ``"label"``, ``"index"`` (B,) long on the CPU; ``"boxes"`` (list of
    (K_b, 4) in the output frame), ``"orig_boxes"``, ``"orig_size"`` (W, H), ``"image_id"``.

    Sample ``i`` of epoch ``epoch`` is augmented from ``augment_seed(seed, epoch, i)`` alone: the same
    (seed, epoch, order) gives the same batches on every pass, from any starting slice of the order (a
    resumed epoch), and the same images as the trainer's per-image path.
    """

    def __init__(
        self,
        cache: ImageCache,
        order: Sequence[int],
        batch_size: int,
        device: torch.device,
        *,
        augment: BatchAugment | None = None,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        channels_last: bool = False,
    ) -> None:
        """Args:
            cache: The split.
            order: Sample indices in visiting order (the trainer's ``epoch_order``; ``range(N)`` to evaluate).
            batch_size: B.
            device: Where images are produced.
            augment: The random train augmentation; None = the cached frames as they are (evaluation).
            seed: The run seed.
            epoch: The epoch (see :meth:`set_epoch`).
            drop_last: Drop a last, smaller batch.
            channels_last: Return images in channels-last memory format.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cache = cache
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.epoch = epoch
        self.order = self._check_order(order)

    def _check_order(self, order: Sequence[int]) -> torch.Tensor:
        t = torch.as_tensor(list(order), dtype=torch.long)  # (N',)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= len(self.cache)):
            raise ValueError(f"order holds indices outside [0, {len(self.cache)})")
        return t

    def set_epoch(self, epoch: int, order: Sequence[int] | None = None) -> None:
        """Switch to another epoch (and its order): the next iteration draws that epoch's augmentation."""
        self.epoch = epoch
        if order is not None:
            self.order = self._check_order(order)

    def __len__(self) -> int:
        n = int(self.order.numel())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        for step in range(len(self)):
            yield self.batch(step)

    def batch(self, step: int) -> dict:
        """Batch ``step`` of the current order (the same every time it is asked for)."""
        idx = self.order[step * self.batch_size:(step + 1) * self.batch_size]  # (B,) CPU
        cache = self.cache
        images = self._gather(idx)  # (B, 3, S, S) uint8 on self.device
        counts = cache.num_boxes[idx]  # (B,)
        boxes = cache.boxes[idx]  # (B, K, 4)
        if self.augment is not None:
            draws = draw_for_samples(idx.tolist(), cache.side, self.augment, self.seed, self.epoch)
            images = crop_flip_images(images, draws.top, draws.left, draws.flip, self.augment.crop)  # (B, 3, C, C)
            boxes = crop_flip_boxes(boxes, draws.top, draws.left, draws.flip, self.augment.crop)  # (B, K, 4)
            if self.augment.randaugment is not None:
                images, boxes = randaugment_batch(images, boxes, draws.ops, draws.negate, self.augment.randaugment)
        images = normalize_image(images)  # (B, 3, C, C) float32
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return {
            "image": images,
            "label": cache.labels[idx],  # (B,)
            "index": idx,  # (B,)
            "boxes": [boxes[i, :k] for i, k in enumerate(counts.tolist())],
            "orig_boxes": [cache.orig_boxes[j, :k] for j, k in zip(idx.tolist(), counts.tolist())],
            "orig_size": [tuple(s) for s in cache.orig_sizes[idx].tolist()],
            "image_id": [cache.image_ids[j] for j in idx.tolist()],
        }

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        """The batch's uint8 frames on ``self.device`` (an async copy from pinned memory when host-cached)."""
        images = self.cache.images
        if self.cache.placement == "pinned" and self.device.type == "cuda":
            # A fresh pinned buffer per batch: the caching host allocator keeps it alive until the copy ends.
            buf = torch.empty((idx.numel(), *images.shape[1:]), dtype=images.dtype, pin_memory=True)
            torch.index_select(images, 0, idx, out=buf)
            return buf.to(self.device, non_blocking=True)
        return images.index_select(0, idx.to(images.device)).to(self.device)  # (B, 3, S, S); no copy if already there


def test_batches(cache: ImageCache, batch_size: int, device: torch.device) -> CachedBatches:
    """Every image of a cached test frame, in index order, unaugmented (the evaluator's loader)."""
    return CachedBatches(cache, range(len(cache)), batch_size, device)


test_batches.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


# --------------------------------------------------------------------------- the trainer's and evaluator's view

@dataclass
class CachedTrainSet:
    """A training split as the trainer reads it from a cache: the frames plus the per-batch augmentation."""

    cache: ImageCache
    augment: BatchAugment

    def __len__(self) -> int:
        return len(self.cache)


HOST_BUDGET_BYTES = 8 * 2**30  # FrameStore: frames kept in host memory before the oldest are dropped


class FrameStore:
    """Decoded frames of every (split, geometry) a process has asked for, built on first use, then reused.

    One store serves every run of an invocation, so a table's test split is decoded once per test
    geometry, not once per epoch, checkpoint, θ policy and run. Keys are the samples' paths and the
    geometry. On CUDA, frames go to the device while ``device_budget`` lasts (default: a quarter of
    the free memory when the store is made), else to pinned memory; host-side frames beyond
    ``host_budget`` bytes evict the least recently used.
    """

    def __init__(self, device: torch.device, *, device_budget: int | None = None,
                 host_budget: int = HOST_BUDGET_BYTES, workers: int = 2) -> None:
        self.device = torch.device(device)
        if device_budget is None:
            device_budget = int(torch.cuda.mem_get_info(self.device)[0] // 4) if self.device.type == "cuda" else 0
        self.device_left = device_budget
        self.host_budget = host_budget
        self.workers = workers
        self._frames: dict[tuple, ImageCache] = {}  # insertion order = recency (moved to the end on use)

    def get(self, samples: Sequence[Sample], geometry: TestTransform) -> ImageCache:
        """The frames of ``samples`` through ``geometry`` (decoded now if this store has not seen them)."""
        key = (tuple(str(s.path) for s in samples), geometry)
        cache = self._frames.pop(key, None)
        if cache is None:
            cache = build_cache(samples, geometry, self.device, max_bytes=self.device_left, workers=self.workers)
            if cache.placement == "device":
                self.device_left -= cache.nbytes
        self._frames[key] = cache
        self._evict()
        return cache

    def _evict(self) -> None:
        host = [k for k, c in self._frames.items() if c.placement != "device"]
        total = sum(self._frames[k].nbytes for k in host)
        for key in host[:-1]:  # never the one just asked for (the last)
            if total <= self.host_budget:
                break
            total -= self._frames.pop(key).nbytes

    def __len__(self) -> int:
        return len(self._frames)


def train_view(samples: Sequence[Sample], transform: TrainTransform, frames: FrameStore) -> CachedTrainSet | None:
    """The cached training split of ``transform``, or None where the cache cannot reproduce it
    (a geometry other than resize -> random crop -> flip, e.g. RandomResizedCrop)."""
    try:
        geometry, augment = split_train_transform(transform)
    except ValueError:
        return None
    return CachedTrainSet(frames.get(samples, geometry), augment)
