"""Pixel steps of the transforms: a PIL image as a uint8 ``(3, H, W)`` tensor, a test frame's resize and crop
of it, and the float conversion and ImageNet normalisation that come last (so a batched uint8 path can reuse
the same steps)."""

from __future__ import annotations

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from kdcicam.data.box_geometry import TestFrame

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


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
