"""The torch Dataset over index samples: RGB image + label + boxes moved along with the transform."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from kdcicam.core.errors import DataError
from kdcicam.data.base import Sample
from kdcicam.data.image_files import file_problem, pixels_problem
from kdcicam.data.train_augment import EpsilonTransform

# transform(img, boxes (K, 4) xyxy in img's pixels) -> (image (3, H, W), boxes (K, 4) in its frame)
Transform = Callable[[Image.Image, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def load_rgb(path: Path | str) -> Image.Image:
    """Decode an image fully and convert it to RGB.

    Any mode is accepted (CUB holds a few grayscale, CMYK and palette images); palette images with
    transparency go through RGBA so PIL maps the palette correctly. No EXIF rotation is applied:
    the boxes refer to the stored pixel grid.

    Raises:
        DataError: The file is missing, unreadable or truncated (the message names it).
    """
    problem = file_problem(path)
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # pixels_problem is the limit
            img = Image.open(path)
        with img:
            problem = pixels_problem(*img.size)
            if problem is not None:
                raise DataError(f"{path}: {problem}")
            img.load()
            if img.mode == "P" and "transparency" in img.info:
                return img.convert("RGBA").convert("RGB")
            return img.convert("RGB")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: image file does not exist") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def _to_tensor(img: Image.Image, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Default transform: uint8 HWC -> float CHW in [0, 1], boxes unchanged."""
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(img).float() / 255.0, boxes  # (3, H, W), (K, 4)


class WSOLDataset(Dataset):
    """Samples of one split as dicts ready for training and localization evaluation.

    Item ``i`` is ``{"image": (3, H, W) float, "label": int, "boxes": (K, 4) float in the
    transformed frame, "orig_boxes": (K, 4) float in original pixels, "orig_size": (W, H),
    "index": i, "image_id": str}``; ``K`` may be 0 (train images without boxes).
    """

    def __init__(self, samples: Sequence[Sample], transform: Transform | None = None) -> None:
        """Args:
            samples: The split, e.g. ``index.train``.
            transform: ``transform(img, boxes) -> (image, boxes)``; ``None`` = to a [0, 1] tensor.
        """
        self.samples = tuple(samples)
        self.transform = transform or _to_tensor

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        sample = self.samples[i]
        img = load_rgb(sample.path)
        if sample.size is not None and img.size != tuple(sample.size):
            raise DataError(f"{sample.path}: image is {img.width}x{img.height} but the index says "
                            f"{sample.size[0]}x{sample.size[1]} (its boxes would be misplaced)")
        orig_boxes = torch.tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4)  # (K, 4)
        extra = {}
        if isinstance(self.transform, EpsilonTransform):  # ε of Eq. 16 drawn with the augmentation
            extra["epsilon"] = self.transform.draw()
            image, boxes = self.transform.apply(extra["epsilon"], img, orig_boxes.clone())
        else:
            image, boxes = self.transform(img, orig_boxes.clone())  # (3, H, W), (K, 4)
        if image.dim() != 3 or image.shape[0] != 3 or boxes.shape != orig_boxes.shape:
            raise ValueError(f"transform returned image {tuple(image.shape)} and boxes {tuple(boxes.shape)}; "
                             f"expected (3, H, W) and {tuple(orig_boxes.shape)}")
        return {
            "image": image,
            "label": sample.label,
            "boxes": boxes,
            "orig_boxes": orig_boxes,
            "orig_size": img.size,
            "index": i,
            "image_id": sample.image_id,
            **extra,
        }


def collate_wsol(batch: list[dict]) -> dict:
    """Stack images and labels of :class:`WSOLDataset` items; keep per-image boxes as lists.

    Returns:
        ``{"image": (B, 3, H, W), "label": (B,) long, "index": (B,) long, "boxes": [(K_b, 4)...],
        "orig_boxes": [(K_b, 4)...], "orig_size": [(W, H)...], "image_id": [str...]}``, plus
        ``"epsilon": (B,) long`` when the items carry an ε (:class:`EpsilonTransform`).
    """
    extra = {}
    if "epsilon" in batch[0]:  # per-sample ε drawn by an EpsilonTransform
        extra["epsilon"] = torch.tensor([item["epsilon"] for item in batch], dtype=torch.long)  # (B,)
    return {
        **extra,
        "image": torch.stack([item["image"] for item in batch]),  # (B, 3, H, W)
        "label": torch.tensor([item["label"] for item in batch], dtype=torch.long),  # (B,)
        "index": torch.tensor([item["index"] for item in batch], dtype=torch.long),  # (B,)
        "boxes": [item["boxes"] for item in batch],
        "orig_boxes": [item["orig_boxes"] for item in batch],
        "orig_size": [item["orig_size"] for item in batch],
        "image_id": [item["image_id"] for item in batch],
    }
