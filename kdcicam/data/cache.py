"""Decode a split once into a uint8 tensor cache; crop, flip, augment and normalise whole batches on the device.

The PIL path (:class:`kdcicam.data.dataset.WSOLDataset` + :mod:`kdcicam.data.transforms`) decodes
and resizes every image at every epoch. Its deterministic part never changes, so it is done once
here: each image is decoded, resized (and, for test frames, centre-cropped) with the *same*
functions the PIL path calls (:func:`~kdcicam.data.pixel_steps.apply_frame_to_image` on a uint8
tensor, :meth:`~kdcicam.data.box_geometry.TestFrame.to_frame` for the boxes) and stored in one
``(N, 3, S, S)`` uint8 tensor:

- on the training device when it fits in ``max_bytes`` (default: half the free GPU memory);
- else in pinned host memory on CUDA (batches copied asynchronously), plain memory on CPU.

Cached pixels therefore equal the PIL path's bit for bit (``tests/test_data_cache.py`` measures
it). The random part of the train transform (random crop, horizontal flip, RandAugment) is then
applied to whole batches with tensor ops on the device by :class:`CachedBatches`, followed by
:func:`~kdcicam.data.pixel_steps.normalize_image`. Each sample's choices are drawn on the CPU from
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

The code is in four modules, gathered here: :mod:`kdcicam.data.frame_cache` (decode a split once),
:mod:`kdcicam.data.batch_augment` (the per-batch random augmentation), :mod:`kdcicam.data.cached_batches`
(the loader) and :mod:`kdcicam.data.frame_store` (frames shared between runs, the trainer's view).
"""

from __future__ import annotations

from kdcicam.data.batch_augment import (
    AugmentDraws,
    BatchAugment,
    augment_seed,
    crop_flip_boxes,
    crop_flip_images,
    draw_augment,
    draw_for_samples,
    randaugment_batch,
    split_train_transform,
)
from kdcicam.data.cached_batches import CachedBatches, test_batches
from kdcicam.data.frame_cache import (
    DEVICE_BUDGET_FRACTION,
    PLACEMENTS,
    ImageCache,
    build_cache,
    choose_placement,
    estimate_bytes,
)
from kdcicam.data.frame_store import HOST_BUDGET_BYTES, CachedTrainSet, FrameStore, train_view

__all__ = [
    "DEVICE_BUDGET_FRACTION", "HOST_BUDGET_BYTES", "PLACEMENTS", "AugmentDraws", "BatchAugment", "CachedBatches",
    "CachedTrainSet", "FrameStore", "ImageCache", "augment_seed", "build_cache", "choose_placement", "crop_flip_boxes",
    "crop_flip_images", "draw_augment", "draw_for_samples", "estimate_bytes", "randaugment_batch",
    "split_train_transform", "test_batches", "train_view",
]
