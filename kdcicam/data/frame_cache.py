"""A split decoded once into one ``(N, 3, S, S)`` uint8 tensor (:class:`ImageCache`), on the device when it
fits, else in pinned (CUDA) or plain (CPU) host memory. Each image goes through the same deterministic
geometry functions as the PIL path, so cached pixels equal its pixels bit for bit (see :mod:`kdcicam.data.cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from kdcicam.core.errors import DataError
from kdcicam.data.base import Sample
from kdcicam.data.dataset import load_rgb
from kdcicam.data.pixel_steps import apply_frame_to_image, to_uint8_image
from kdcicam.data.transforms import TestTransform

PLACEMENTS = ("device", "pinned", "host")
Decoded = tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]  # frame, frame boxes, orig boxes, (W, H)
DEVICE_BUDGET_FRACTION = 0.5  # default max_bytes: this share of the GPU's free memory at build time


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
