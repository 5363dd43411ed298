"""Per-sample ε drawn with the augmentation (``data.epsilon_augment``, the released student's dataset):
each ε's transform, the ε reaching the batch and the loss, and the trainer using the batch's ε."""

from __future__ import annotations

import dataclasses

import torch
from PIL import Image

from kdcicam.core.config import DataConfig
from kdcicam.data.base import Sample
from kdcicam.data.dataset import WSOLDataset, collate_wsol
from kdcicam.data.train_augment import EpsilonTransform, train_transform_for
from kdcicam.data.transforms import TrainTransform

DATA = DataConfig(train_resize=36, crop=32, randaugment=True, randaugment_ops=3, randaugment_magnitude=10,
                  random_resized_crop_scale=(0.2, 1.0), epsilon_augment=True, loc_crop_scale=(0.1, 1.0))


def _first_step(t: TrainTransform):
    return t.geometry.transforms[0]


def test_each_epsilon_gets_the_released_augmentation():
    t = train_transform_for(DATA, (0, 1, 2))
    assert isinstance(t, EpsilonTransform) and t.choices == (0, 1, 2)
    stu, cls, loc = (t.transforms[e] for e in (0, 1, 2))
    assert tuple(_first_step(stu).scale) == (0.2, 1.0) and stu.randaugment is not None  # ε = 0: RandAugment
    assert tuple(_first_step(cls).scale) == (0.2, 1.0) and cls.randaugment is None  # ε = 1: none
    assert tuple(_first_step(loc).scale) == (0.1, 1.0) and loc.randaugment is None  # ε = 2: loc crop
    with_loc_ra = train_transform_for(dataclasses.replace(DATA, randaugment_loc=True), (0, 2))
    assert with_loc_ra.choices == (0, 2) and with_loc_ra.transforms[2].randaugment is not None


def test_without_the_flag_or_a_per_sample_draw_it_is_one_transform():
    assert isinstance(train_transform_for(dataclasses.replace(DATA, epsilon_augment=False), (0, 1, 2)), TrainTransform)
    assert isinstance(train_transform_for(DATA, ()), TrainTransform)  # plain student / per-step ε
    assert isinstance(train_transform_for(DATA, (0,)), TrainTransform)


def test_the_dataset_draws_epsilon_and_the_batch_carries_it(tmp_path):
    samples = []
    for k in range(40):
        path = tmp_path / f"{k}.png"
        Image.new("RGB", (48, 40), (k, 100, 100)).save(path)
        samples.append(Sample(image_id=path.name, path=path, label=k % 2, boxes=((4.0, 4.0, 30.0, 30.0),),
                              size=(48, 40)))
    torch.manual_seed(0)
    items = [WSOLDataset(samples, train_transform_for(DATA, (0, 1, 2)))[i] for i in range(len(samples))]
    assert {it["epsilon"] for it in items} == {0, 1, 2}
    batch = collate_wsol(items[:5])
    assert batch["epsilon"].tolist() == [it["epsilon"] for it in items[:5]]
    plain = WSOLDataset(samples, train_transform_for(DATA, ()))[0]
    assert "epsilon" not in plain and "epsilon" not in collate_wsol([plain])
