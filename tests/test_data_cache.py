"""The uint8 tensor cache and its batched augmentation against the per-image PIL path."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

import kdcicam.data.cache as C
from kdcicam.core.errors import DataError
from kdcicam.data.base import Sample
from kdcicam.data.box_geometry import clip_boxes
from kdcicam.data.box_randaugment import BoxRandAugment
from kdcicam.data.dataset import WSOLDataset
from kdcicam.data.pixel_steps import normalize_image
from kdcicam.data.transforms import (
    TestTransform,
    test_transform_paper,
    test_transform_standard,
    train_transform,
)
from kdcicam.training.streams import EpochView

# (W, H), mode, boxes: non-square sizes, a grayscale file, an image with two boxes and one without any.
SPECS = [
    ((50, 37), "RGB", ((5.0, 4.0, 30.0, 20.0),)),
    ((41, 60), "L", ((0.0, 10.5, 41.0, 60.0),)),
    ((64, 64), "RGB", ((10.0, 10.0, 20.0, 30.0), (30.0, 2.0, 63.0, 40.0))),
    ((90, 45), "RGB", ()),
    ((33, 71), "RGB", ((3.0, 3.0, 9.0, 9.0),)),
]


@pytest.fixture
def samples(tmp_path) -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i, (size, mode, boxes) in enumerate(SPECS):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        img = PIL.Image.fromarray(pixels).convert(mode)
        path = tmp_path / f"im{i}.png"  # lossless: the cache and the PIL path decode the same file
        img.save(path)
        out.append(Sample(image_id=f"im{i}", path=path, label=i % 3, boxes=boxes, size=size))
    return out


def _draws(ops, negate) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(ops, dtype=torch.long), torch.tensor(negate, dtype=torch.bool)


# --------------------------------------------------------------------------- cached frames = PIL path

@pytest.mark.parametrize("transform", [test_transform_paper(72, 64), test_transform_standard(64)],
                         ids=["paper", "standard"])
def test_cached_test_frames_equal_the_pil_path(samples, transform):
    # Both call apply_frame_to_image on the same uint8 tensor: measured max |diff| = 0, so the bound is exact.
    cache = C.build_cache(samples, transform, torch.device("cpu"))
    pil = WSOLDataset(samples, transform)
    batches = list(C.test_batches(cache, batch_size=2, device=torch.device("cpu")))
    assert [len(b["image_id"]) for b in batches] == [2, 2, 1]
    i = 0
    for batch in batches:
        for j in range(len(batch["image_id"])):
            item = pil[i]
            assert torch.equal(batch["image"][j], item["image"])
            assert torch.equal(batch["boxes"][j], item["boxes"])
            assert torch.equal(batch["orig_boxes"][j], item["orig_boxes"])
            assert batch["orig_size"][j] == item["orig_size"]
            assert (batch["image_id"][j], int(batch["label"][j]), int(batch["index"][j])) == \
                   (item["image_id"], item["label"], i)
            i += 1
    assert cache.placement == "host" and cache.images.dtype == torch.uint8 and cache.side == 64


def test_cache_holds_the_train_resize_and_threads_change_nothing(samples):
    geometry, augment = C.split_train_transform(train_transform(72, 64, randaugment=False))
    assert geometry == TestTransform(resize=72) and augment.crop == 64 and augment.randaugment is None
    one = C.build_cache(samples, geometry, torch.device("cpu"))
    two = C.build_cache(samples, geometry, torch.device("cpu"), workers=2)
    assert one.images.shape == (5, 3, 72, 72)
    assert torch.equal(one.images, two.images) and torch.equal(one.boxes, two.boxes)
    # image 0 is 50 x 37 -> 72 x 72: box (5, 4, 30, 20) scales by (72/50, 72/37) = (1.44, 1.9459...)
    expected = torch.tensor([5 * 1.44, 4 * 72 / 37, 30 * 1.44, 20 * 72 / 37])
    assert torch.allclose(one.boxes[0, 0], expected) and int(one.num_boxes[0]) == 1
    assert one.num_boxes.tolist() == [1, 1, 2, 0, 1] and one.boxes.shape == (5, 2, 4)
    assert torch.equal(one.boxes[3], torch.zeros(2, 4))  # no boxes: all padding


def test_per_image_train_output_is_one_of_the_batch_crops(samples):
    # The v2 pipeline's output for any seed equals the batched crop/flip at one (top, left, flip): 9 x 9 x 2.
    transform = train_transform(72, 64, randaugment=False)
    geometry, augment = C.split_train_transform(transform)
    cache = C.build_cache(samples, geometry, torch.device("cpu"))
    img = PIL.Image.open(samples[2].path)
    for seed in range(3):
        torch.manual_seed(seed)
        image, boxes = transform(img, torch.tensor(samples[2].boxes))
        found = []
        for top in range(9):
            for left in range(9):
                for flip in (False, True):
                    t, lt, f = torch.tensor([top]), torch.tensor([left]), torch.tensor([flip])
                    out = normalize_image(C.crop_flip_images(cache.images[2:3], t, lt, f, 64))[0]
                    if torch.equal(out, image):
                        found.append((top, left, flip))
                        assert torch.equal(C.crop_flip_boxes(cache.boxes[2:3], t, lt, f, 64)[0], boxes)
        assert len(found) == 1  # random pixels: exactly one crop matches


def test_crop_flip_against_torchvision_functional(samples):
    cache = C.build_cache(samples, TestTransform(resize=40), torch.device("cpu"))
    top, left, flip = torch.tensor([0, 3, 8, 5, 1]), torch.tensor([8, 0, 2, 5, 7]), torch.tensor([1, 0, 1, 0, 1]).bool()
    out = C.crop_flip_images(cache.images, top, left, flip, 32)  # (5, 3, 32, 32)
    out_boxes = C.crop_flip_boxes(cache.boxes, top, left, flip, 32)
    for i in range(5):
        ref = F.crop(cache.images[i], int(top[i]), int(left[i]), 32, 32)
        bb = F.crop(tv_tensors.BoundingBoxes(cache.boxes[i], format="XYXY", canvas_size=(40, 40)),
                    int(top[i]), int(left[i]), 32, 32)
        if flip[i]:
            ref, bb = F.horizontal_flip(ref), F.horizontal_flip(bb)
        assert torch.equal(out[i], ref)
        assert torch.allclose(out_boxes[i], clip_boxes(bb.as_subclass(torch.Tensor), (32, 32)))


def test_crop_flip_by_hand():
    image = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4)  # rows [0..3], [4..7], [8..11], [12..15]
    top, left = torch.tensor([1]), torch.tensor([2])
    plain = C.crop_flip_images(image, top, left, torch.tensor([False]), 2)
    flipped = C.crop_flip_images(image, top, left, torch.tensor([True]), 2)
    assert plain[0, 0].tolist() == [[6, 7], [10, 11]] and flipped[0, 0].tolist() == [[7, 6], [11, 10]]
    boxes = torch.tensor([[[2.0, 1.0, 4.0, 3.0], [0.0, 0.0, 3.0, 2.0]]])  # (1, 2, 4) in the 4 x 4 frame
    # shift by (2, 1): (0, 0, 2, 2) and (-2, -1, 1, 1) -> clipped (0, 0, 1, 1); mirrored in C = 2: x -> 2 - x
    assert C.crop_flip_boxes(boxes, top, left, torch.tensor([False]), 2).tolist() == [[[0, 0, 2, 2], [0, 0, 1, 1]]]
    assert C.crop_flip_boxes(boxes, top, left, torch.tensor([True]), 2).tolist() == [[[0, 0, 2, 2], [1, 0, 2, 1]]]


# --------------------------------------------------------------------------- randomness

def test_draws_have_the_per_image_distributions():
    # 4,000 draws, S - C = 8: offsets uniform on {0..8} (v2.RandomCrop's inclusive range), ~444 each, sd ~20;
    # flips Bernoulli(0.5), sd 0.008; 14 RandAugment ops over 8,000 rounds, ~571 each, sd ~23.
    augment = C.BatchAugment(crop=64, randaugment=BoxRandAugment(num_ops=2, magnitude=9))
    d = C.draw_augment(4000, 72, augment, torch.Generator().manual_seed(0))
    for offsets in (d.top, d.left):
        counts = torch.bincount(offsets, minlength=9)
        assert counts.numel() == 9 and int(offsets.min()) == 0 and int(offsets.max()) == 8
        assert ((counts - 444).abs() < 100).all()
    assert abs(d.flip.float().mean().item() - 0.5) < 0.04
    assert d.ops.shape == (2, 4000) and ((torch.bincount(d.ops.flatten(), minlength=14) - 571).abs() < 120).all()
    signed = (d.ops >= 1) & (d.ops <= 9)  # ShearX .. Sharpness (ops 1-9) draw a sign; the other 5 never do
    assert abs(d.negate[signed].float().mean().item() - 0.5) < 0.04 and not d.negate[~signed].any()
    no_flip = C.draw_augment(10, 72, C.BatchAugment(crop=64, flip=False), torch.Generator().manual_seed(0))
    assert not no_flip.flip.any() and no_flip.ops.shape == (0, 10)
    with pytest.raises(ValueError, match="larger than the cached frame"):
        C.draw_augment(1, 60, augment, torch.Generator())


def test_batches_equal_the_trainers_per_image_path(samples):
    # The trainer's EpochView seeds torch's RNG from (seed, epoch, index) per item; the cache draws the
    # same calls from a generator with that seed: identical images and boxes, RandAugment included.
    transform = train_transform(72, 64, randaugment=True, ops=2, magnitude=9)
    geometry, augment = C.split_train_transform(transform)
    cache = C.build_cache(samples, geometry, torch.device("cpu"))
    order = [4, 0, 3, 1, 2]
    for seed, epoch in ((0, 0), (3, 7)):
        view = EpochView(WSOLDataset(samples, transform), order, seed=seed, epoch=epoch)
        batches = list(C.CachedBatches(cache, order, 2, torch.device("cpu"), augment=augment, seed=seed, epoch=epoch))
        got = [(b["image"][j], b["boxes"][j]) for b in batches for j in range(len(b["image_id"]))]
        for k in range(5):
            item = view[k]
            assert torch.equal(got[k][0], item["image"])
            assert torch.allclose(got[k][1], item["boxes"], atol=1e-4)


def test_batches_repeat_per_seed_and_epoch_and_differ_otherwise(samples):
    geometry, augment = C.split_train_transform(train_transform(72, 64, randaugment=True, ops=2, magnitude=9))
    cache = C.build_cache(samples, geometry, torch.device("cpu"))
    order = [4, 0, 3, 1, 2]

    def images(seed, epoch, loader=None, part=order):
        loader = loader or C.CachedBatches(cache, part, 2, torch.device("cpu"), augment=augment, seed=seed,
                                           epoch=epoch)
        return torch.cat([b["image"] for b in loader])

    first = images(0, 1)
    assert torch.equal(first, images(0, 1))
    assert torch.equal(images(0, 1, part=order[2:]), first[2:])  # an epoch resumed at step 1 repeats exactly
    assert not torch.equal(first, images(0, 2)) and not torch.equal(first, images(1, 1))
    loader = C.CachedBatches(cache, order, 2, torch.device("cpu"), augment=augment, seed=0, epoch=5)
    loader.set_epoch(1)
    assert torch.equal(images(0, 1, loader), first)
    assert torch.equal(loader.batch(1)["image"], first[2:4])  # a batch asked for alone is the same batch
    seeds = {C.augment_seed(0, 1, 0), C.augment_seed(0, 1, 1), C.augment_seed(0, 2, 1), C.augment_seed(1, 1, 1)}
    assert len(seeds) == 4


def test_batch_keys_lengths_and_order(samples):
    geometry, augment = C.split_train_transform(train_transform(72, 64, randaugment=False))
    cache = C.build_cache(samples, geometry, torch.device("cpu"))
    loader = C.CachedBatches(cache, [3, 1, 4], 2, torch.device("cpu"), augment=augment, channels_last=True)
    assert len(loader) == 2
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert batch["index"].tolist() == [3, 1] and batch["label"].tolist() == [0, 1]
    assert batch["image_id"] == ["im3", "im1"] and batch["orig_size"] == [(90, 45), (41, 60)]
    assert batch["boxes"][0].shape == (0, 4) and batch["boxes"][1].shape == (1, 4)
    assert len(C.CachedBatches(cache, range(5), 2, torch.device("cpu"), drop_last=True)) == 2
    assert len(C.CachedBatches(cache, [], 2, torch.device("cpu"))) == 0
    with pytest.raises(ValueError, match="outside"):
        C.CachedBatches(cache, [5], 2, torch.device("cpu"))


# --------------------------------------------------------------------------- RandAugment on batches

def _replay(seed: int, ra: BoxRandAugment, side: int) -> tuple[list[int], list[bool]]:
    """The op / sign draws BoxRandAugment.forward makes after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    space = list(ra._AUGMENTATION_SPACE.values())
    ops, negs = [], []
    for _ in range(ra.num_ops):
        op = int(torch.randint(len(space), ()))
        magnitudes_fn, signed = space[op]
        neg = False
        if magnitudes_fn(ra.num_magnitude_bins, side, side) is not None and signed:
            neg = bool(torch.rand(()) <= 0.5)
        ops.append(op)
        negs.append(neg)
    return ops, negs


def test_randaugment_batch_equals_box_randaugment_per_image():
    # 40 seeds x 2 ops cover every op of the 14 (and both signs); each image sits in a batch with others.
    ra = BoxRandAugment(num_ops=2, magnitude=9)
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=gen)
    boxes = torch.tensor([[[4.0, 6.0, 20.0, 28.0]], [[0.0, 0.0, 32.0, 32.0]], [[10.0, 1.0, 31.0, 12.0]]])
    seen = set()
    for seed in range(40):
        draws = [_replay(seed + 100 * b, ra, 32) for b in range(3)]
        ops, negate = _draws([[d[0][r] for d in draws] for r in range(2)], [[d[1][r] for d in draws] for r in range(2)])
        seen.update(ops.flatten().tolist())
        out, out_boxes = C.randaugment_batch(images, boxes, ops, negate, ra)
        for b in range(3):
            torch.manual_seed(seed + 100 * b)
            ref, ref_boxes = ra(tv_tensors.Image(images[b]),
                                tv_tensors.BoundingBoxes(boxes[b], format="XYXY", canvas_size=(32, 32)))
            assert torch.equal(out[b], ref.as_subclass(torch.Tensor))
            assert torch.allclose(out_boxes[b], ref_boxes.as_subclass(torch.Tensor), atol=1e-4)
    assert seen == set(range(14))


def test_randaugment_batch_without_boxes_and_identity():
    ra = BoxRandAugment(num_ops=1, magnitude=9)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ops, negate = _draws([[0, 0]], [[False, True]])  # op 0 = Identity: nothing changes
    out, out_boxes = C.randaugment_batch(images, torch.zeros(2, 0, 4), ops, negate, ra)
    assert torch.equal(out, images) and out_boxes.shape == (2, 0, 4)


# --------------------------------------------------------------------------- placement and errors

def test_placement_and_size():
    assert C.estimate_bytes(5994, 256) == 1_178_468_352  # 5994 * 3 * 256 * 256
    assert C.choose_placement(10**12, torch.device("cpu")) == "host"
    assert C.choose_placement(100, torch.device("cuda"), max_bytes=100) == "device"
    assert C.choose_placement(101, torch.device("cuda"), max_bytes=100) == "pinned"


def test_split_train_transform_refuses_random_resized_crop():
    with pytest.raises(ValueError, match="RandomResizedCrop"):
        C.split_train_transform(train_transform(72, 64, randaugment=False, random_resized_crop_scale=(0.2, 1.0)))


def test_build_cache_names_bad_files(samples, tmp_path):
    wrong = Sample("x", samples[0].path, 0, (), size=(51, 37))
    with pytest.raises(DataError, match=r"im0.png: image is 50x37 but the index says 51x37"):
        C.build_cache([wrong], TestTransform(resize=8), torch.device("cpu"))
    with pytest.raises(DataError, match="does not exist"):
        C.build_cache([Sample("y", tmp_path / "nope.png", 0, ())], TestTransform(resize=8), torch.device("cpu"),
                      workers=2)


def test_empty_split():
    cache = C.build_cache([], TestTransform(resize=8), torch.device("cpu"))
    assert len(cache) == 0 and cache.boxes.shape == (0, 0, 4)
    assert list(C.test_batches(cache, 4, torch.device("cpu"))) == []


def test_frame_store_decodes_once_per_split_and_geometry_and_drops_the_oldest(samples):
    per_frame = 3 * 16 * 16  # bytes of one 16 x 16 uint8 frame
    small = 3 * 8 * 8  # one 8 x 8 frame
    store = C.FrameStore(torch.device("cpu"), host_budget=2 * len(samples) * per_frame + small)  # two + a small one
    a = store.get(samples, TestTransform(16))
    assert store.get(list(samples), TestTransform(16)) is a  # same paths, same geometry: the same frames
    b = store.get(samples, TestTransform(20, 16))
    assert b is not a and len(store) == 2
    store.get(samples[:1], TestTransform(16, 8))  # fits beside the two
    assert len(store) == 3
    store.get(samples, TestTransform(24, 16))  # a third full cache: the least recently used (a) goes
    assert len(store) == 3 and store.get(samples, TestTransform(20, 16)) is b
    assert store.get(samples, TestTransform(16)) is not a  # decoded again


def test_train_view_only_for_the_pipelines_the_cache_reproduces(samples):
    store = C.FrameStore(torch.device("cpu"))
    view = C.train_view(samples, train_transform(20, 16, randaugment=False), store)
    assert view is not None and view.cache.side == 20 and view.augment.crop == 16 and len(view) == len(samples)
    assert C.train_view(samples, train_transform(20, 16, False, random_resized_crop_scale=(0.2, 1.0)), store) is None
