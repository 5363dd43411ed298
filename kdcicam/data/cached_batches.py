"""Batches of a cached split in a given order, augmented per batch on the device and normalised: the
trainer's and the evaluator's loader without PIL (see :mod:`kdcicam.data.cache`)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from kdcicam.data.batch_augment import (
    BatchAugment,
    crop_flip_boxes,
    crop_flip_images,
    draw_for_samples,
    randaugment_batch,
)
from kdcicam.data.frame_cache import ImageCache
from kdcicam.data.pixel_steps import normalize_image


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
