"""The decoded frames a process shares between its runs (:class:`FrameStore`), and the cached view of a
training split (:func:`train_view`) the trainer reads (see :mod:`kdcicam.data.cache`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kdcicam.data.base import Sample
from kdcicam.data.batch_augment import BatchAugment, split_train_transform
from kdcicam.data.frame_cache import ImageCache, build_cache
from kdcicam.data.transforms import TestTransform, TrainTransform


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
