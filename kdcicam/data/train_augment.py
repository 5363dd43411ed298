"""The training transform a run's data config asks for.

One place turns :class:`~kdcicam.core.config.DataConfig` into the transform the training split
is read with, so every setting of the config reaches it: the crop geometry (square resize +
random crop, or ``RandomResizedCrop`` at ``random_resized_crop_scale``), the flip and RandAugment.

With ``epsilon_augment`` (a distilled student drawing ε per sample), the transform is an
:class:`EpsilonTransform`: each image draws its ε of Eq. 16 uniformly from the recipe's choices and
gets the augmentation of that ε, as the released student's dataset does: ε = 0 (no distillation)
the student's crop and RandAugment, ε = 1 (cls teacher) the student's crop without RandAugment,
ε = 2 (loc teacher) ``loc_crop_scale`` and RandAugment only with ``randaugment_loc``. The dataset
hands the drawn ε to the loss with the batch.
"""

from __future__ import annotations

import torch
from PIL import Image

from kdcicam.core.config import DataConfig
from kdcicam.data.transforms import TrainTransform, train_transform


class EpsilonTransform:
    """Draw a sample's ε, then apply that ε's :class:`TrainTransform`."""

    geometry = None  # no single geometry: the decoded-frame cache cannot serve it (per-image path)

    def __init__(self, transforms: dict[int, TrainTransform]) -> None:
        self.transforms = dict(transforms)
        self.choices = tuple(sorted(transforms))

    def draw(self) -> int:
        """ε uniformly from the choices (torch's global RNG, like every random transform)."""
        return self.choices[int(torch.randint(len(self.choices), (1,)))]

    def apply(self, epsilon: int, img: Image.Image, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The transform of ``epsilon`` on one image and its original-coordinate boxes."""
        return self.transforms[epsilon](img, boxes)

    def __repr__(self) -> str:
        return f"EpsilonTransform({self.transforms!r})"


def _transform(data: DataConfig, scale: tuple[float, ...], randaugment: bool) -> TrainTransform:
    return train_transform(data.train_resize, data.crop, randaugment, data.randaugment_ops,
                           data.randaugment_magnitude,
                           random_resized_crop_scale=(scale[0], scale[1]) if scale else None)


def train_transform_for(data: DataConfig, epsilon_choices: tuple[int, ...] = ()) -> TrainTransform | EpsilonTransform:
    """The training transform of ``data`` (see :func:`kdcicam.data.transforms.train_transform`).

    Args:
        data: the run's data config.
        epsilon_choices: the ε values a distilled recipe draws per sample (``Recipe.epsilon_choices``);
            with ``data.epsilon_augment`` and more than one choice, an :class:`EpsilonTransform`.

    Returns:
        The transform applied to every training image of the run.
    """
    student = _transform(data, data.random_resized_crop_scale, data.randaugment)
    if not data.epsilon_augment or len(epsilon_choices) < 2:
        return student
    per_epsilon = {0: student,
                   1: _transform(data, data.random_resized_crop_scale, False),  # cls teacher's samples
                   2: _transform(data, data.loc_crop_scale or data.random_resized_crop_scale,
                                 data.randaugment and data.randaugment_loc)}  # loc teacher's samples
    return EpsilonTransform({eps: per_epsilon[eps] for eps in epsilon_choices})
