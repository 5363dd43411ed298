"""The training transform a run's data config asks for.

One place turns :class:`~kdcicam.core.config.DataConfig` into the transform the training split
is read with, so every setting of the config reaches it: the crop geometry (square resize +
random crop, or ``RandomResizedCrop`` at ``random_resized_crop_scale``), the flip and RandAugment.
"""

from __future__ import annotations

from kdcicam.core.config import DataConfig
from kdcicam.data.transforms import TrainTransform, train_transform


def train_transform_for(data: DataConfig) -> TrainTransform:
    """The training transform of ``data`` (see :func:`kdcicam.data.transforms.train_transform`).

    Args:
        data: the run's data config.

    Returns:
        The transform applied to every training image of the run.
    """
    scale = data.random_resized_crop_scale
    return train_transform(data.train_resize, data.crop, data.randaugment, data.randaugment_ops,
                           data.randaugment_magnitude,
                           random_resized_crop_scale=(scale[0], scale[1]) if scale else None)
