"""Box-aligned transforms: hand-computed box geometry, pixel/box alignment, train randomness."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

import kdcicam.data.box_geometry as G
import kdcicam.data.box_randaugment as RA
import kdcicam.data.transforms as T
from kdcicam.core.errors import ConfigError

# (1 - mean) / std per channel: a white pixel after normalisation.
WHITE = ((1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225)  # (2.2489, 2.4286, 2.6400)


def _boxes(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def _rect_image(size, box, value=255, channel=None) -> PIL.Image.Image:
    """A black RGB image of ``size`` (W, H) with the integer ``box`` filled with ``value``."""
    a = np.zeros((size[1], size[0], 3), np.uint8)
    x0, y0, x1, y1 = box
    if channel is None:
        a[y0:y1, x0:x1] = value
    else:
        a[y0:y1, x0:x1, channel] = value
    return PIL.Image.fromarray(a)


def _bright_box(plane: torch.Tensor) -> torch.Tensor | None:
    """Continuous xyxy box of the pixels above the midpoint of ``plane``'s range (None if flat)."""
    lo, hi = plane.min(), plane.max()
    if hi - lo < 1e-3:
        return None
    ys, xs = torch.nonzero(plane > (lo + hi) / 2, as_tuple=True)
    return _boxes(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)[0]  # pixel i spans [i, i+1)


# --------------------------------------------------------------------------- pure helpers

def test_resize_boxes_scales_x_and_y_separately():
    # (100, 50) -> (50, 100): sx = 0.5, sy = 2 -> (10*.5, 20*2, 30*.5, 40*2) = (5, 40, 15, 80)
    out = G.resize_boxes(_boxes((10, 20, 30, 40)), (100, 50), (50, 100))
    assert torch.allclose(out, _boxes((5, 40, 15, 80)))


def test_crop_boxes_translates_without_clipping():
    # (10-5, 20-30, 30-5, 40-30) = (5, -10, 25, 10)
    assert torch.allclose(G.crop_boxes(_boxes((10, 20, 30, 40)), 5, 30), _boxes((5, -10, 25, 10)))


def test_clip_boxes_partial_outside_and_empty():
    size = (20, 15)
    boxes = _boxes((5, -10, 25, 10), (30, 1, 40, 2), (2, 3, 4, 5))
    # partial -> (5, 0, 20, 10); fully right of the frame -> collapses on x = 20; inside unchanged
    expected = _boxes((5, 0, 20, 10), (20, 1, 20, 2), (2, 3, 4, 5))
    assert torch.equal(G.clip_boxes(boxes, size), expected)
    assert G.clip_boxes(torch.zeros(0, 4), size).shape == (0, 4)


def test_hflip_boxes_hand_value_involution_and_torchvision():
    boxes = _boxes((10, 20, 30, 40), (0, 0, 100, 5))
    # width 100: x -> 100 - x, so (10, _, 30, _) -> (70, _, 90, _); the full-width box stays
    expected = _boxes((70, 20, 90, 40), (0, 0, 100, 5))
    assert torch.equal(G.hflip_boxes(boxes, 100), expected)
    assert torch.equal(G.hflip_boxes(G.hflip_boxes(boxes, 100), 100), boxes)
    tv = F.horizontal_flip(tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(50, 100)))
    assert torch.equal(tv.as_subclass(torch.Tensor), expected)


def test_intersect_boxes_overlap_and_disjoint():
    a = _boxes((0, 0, 10, 10), (0, 0, 1, 1))
    b = _boxes((5, 5, 20, 20), (5, 5, 6, 6))
    # overlap (5, 5, 10, 10); disjoint -> zero-area at max of the corners (5, 5, 5, 5)
    assert torch.equal(G.intersect_boxes(a, b), _boxes((5, 5, 10, 10), (5, 5, 5, 5)))


def test_box_checks_shape_and_int_dtype():
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        G.clip_boxes(torch.tensor([1.0, 2.0, 3.0, 4.0]), (10, 10))
    with pytest.raises(ValueError):
        G.resize_boxes(torch.zeros(2, 5), (10, 10), (5, 5))
    out = G.crop_boxes(torch.tensor([[3, 4, 5, 6]]), 1, 1)  # int input is promoted to float
    assert out.dtype == torch.float32 and out.tolist() == [[2.0, 3.0, 4.0, 5.0]]


@pytest.mark.parametrize(
    "in_len, out_len, offset",
    [(344, 224, 60), (225, 224, 0), (227, 224, 2), (229, 224, 2), (7, 4, 2), (4, 4, 0)],
    # (344-224)/2 = 60; 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (round half to even, as torchvision does)
)
def test_center_crop_offset_matches_torchvision_pixels(in_len, out_len, offset):
    assert G.center_crop_offset(in_len, out_len) == offset
    image = torch.arange(in_len * 3, dtype=torch.float32).reshape(1, 3, in_len)  # (1, H=3, W)
    cropped = F.center_crop(image, [1, out_len])
    assert torch.equal(cropped, image[:, 1:2, offset:offset + out_len])


# --------------------------------------------------------------------------- test frames

PAPER = T.test_transform_paper(344, 224)
ORIG = (400, 200)  # (W, H); sx = 344/400 = 0.86, sy = 344/200 = 1.72, crop offset (344-224)/2 = 60


def test_paper_frame_geometry():
    frame = PAPER.frame(ORIG)
    assert frame == G.TestFrame(orig_size=(400, 200), resize_size=(344, 344), crop_offset=(60, 60),
                                crop_size=(224, 224))


@pytest.mark.parametrize(
    "box, expected",
    [
        # (100*.86, 50*1.72, 300*.86, 150*1.72) = (86, 86, 258, 258); -60 -> (26, 26, 198, 198)
        ((100, 50, 300, 150), (26, 26, 198, 198)),
        # whole image: (0, 0, 344, 344) - 60 = (-60, -60, 284, 284) -> clipped (0, 0, 224, 224)
        ((0, 0, 400, 200), (0, 0, 224, 224)),
        # partly out: (8.6, 172, 103.2, 326.8) - 60 = (-51.4, 112, 43.2, 266.8) -> (0, 112, 43.2, 224)
        ((10, 100, 120, 190), (0, 112, 43.2, 224)),
        # top-left corner, fully outside: (0, 0, 43, 51.6) - 60 = (-60, -60, -17, -8.4) -> (0, 0, 0, 0)
        ((0, 0, 50, 30), (0, 0, 0, 0)),
        # right edge, fully outside: x (335.4, 344) - 60 = (275.4, 284) -> 224;
        # y (137.6, 206.4) - 60 = (77.6, 146.4) stays -> zero-area (224, 77.6, 224, 146.4)
        ((390, 80, 400, 120), (224, 77.6, 224, 146.4)),
    ],
)
def test_paper_to_frame_hand_values(box, expected):
    out = PAPER.frame(ORIG).to_frame(_boxes(box))
    assert torch.allclose(out, _boxes(expected), atol=1e-4)


def test_paper_to_frame_several_boxes_keep_rows_and_empty():
    frame = PAPER.frame(ORIG)
    boxes = _boxes((100, 50, 300, 150), (0, 0, 50, 30), (10, 100, 120, 190))
    expected = _boxes((26, 26, 198, 198), (0, 0, 0, 0), (0, 112, 43.2, 224))
    assert torch.allclose(frame.to_frame(boxes), expected, atol=1e-4)
    assert frame.to_frame(torch.zeros(0, 4)).shape == (0, 4)


def test_paper_to_original_hand_value_and_round_trip():
    frame = PAPER.frame(ORIG)
    # whole crop (0, 0, 224, 224) + 60 = (60, 60, 284, 284); x / 0.86, y / 1.72
    # = (69.7674, 34.8837, 330.2326, 165.1163)
    out = G.boxes_to_original(_boxes((0, 0, 224, 224)), frame)
    assert torch.allclose(out, _boxes((60 / 0.86, 60 / 1.72, 284 / 0.86, 284 / 1.72)), atol=1e-4)
    # boxes that map inside the crop come back unchanged: (80, 40, 320, 160) -> (8.8, 8.8, 215.2, 215.2)
    inside = _boxes((100, 50, 300, 150), (80, 40, 320, 160), (200, 100, 201, 101))
    assert torch.allclose(frame.to_original(frame.to_frame(inside)), inside, atol=1e-4)


def test_standard_frame_hand_values_and_round_trip():
    std = T.test_transform_standard(224)
    frame = std.frame(ORIG)
    assert frame.crop_offset == (0, 0) and frame.crop_size == (224, 224) and std.out_size == (224, 224)
    # sx = 224/400 = 0.56, sy = 224/200 = 1.12: (100, 50, 300, 150) -> (56, 56, 168, 168)
    boxes = _boxes((100, 50, 300, 150), (0, 0, 400, 200))
    expected = _boxes((56, 56, 168, 168), (0, 0, 224, 224))
    assert torch.allclose(frame.to_frame(boxes), expected, atol=1e-4)
    assert torch.allclose(frame.to_original(expected), boxes, atol=1e-4)


@pytest.mark.parametrize("resize, crop", [(344, 224), (345, 224), (347, 224), (224, 224)])
def test_frame_agrees_with_torchvision_v2_boxes(resize, crop):
    boxes = _boxes((100, 50, 300, 150), (10, 100, 120, 190), (0, 0, 50, 30), (390, 80, 400, 120))
    bb = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(200, 400))
    tv = v2.Compose([v2.Resize((resize, resize)), v2.CenterCrop(crop)])(bb).as_subclass(torch.Tensor)
    ours = T.test_transform_paper(resize, crop).frame(ORIG).to_frame(boxes)
    assert torch.allclose(ours, tv, atol=1e-4)


# --------------------------------------------------------------------------- test transforms

def test_paper_transform_output_and_pixel_alignment():
    img = _rect_image(ORIG, (100, 50, 300, 150))
    image, boxes = PAPER(img, _boxes((100, 50, 300, 150)))
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32
    assert type(image) is torch.Tensor and type(boxes) is torch.Tensor
    assert boxes.dtype == torch.float32 and torch.allclose(boxes, _boxes((26, 26, 198, 198)))
    # the white rectangle lands on (26, 26, 198, 198) (edges exact: 86 and 258 are whole pixels)
    assert torch.allclose(_bright_box(image[0]), boxes[0], atol=1.0)
    assert image[0, 100, 100].item() == pytest.approx(WHITE[0], abs=1e-4)
    assert image[0, 5, 5].item() == pytest.approx(-0.485 / 0.229, abs=1e-4)  # black


def test_standard_transform_pixel_alignment_and_empty_boxes():
    std = T.test_transform_standard(224)
    img = _rect_image(ORIG, (100, 50, 300, 150))
    image, boxes = std(img, _boxes((100, 50, 300, 150)))
    assert image.shape == (3, 224, 224)
    assert torch.allclose(_bright_box(image[1]), _boxes((56, 56, 168, 168))[0], atol=1.0)
    _, empty = std(img, torch.zeros(0, 4))
    assert empty.shape == (0, 4) and empty.dtype == torch.float32


def test_normalisation_of_a_white_image_and_grayscale_input():
    image, _ = PAPER(PIL.Image.new("L", (50, 30), color=255), torch.zeros(0, 4))  # "L" -> RGB
    assert image.shape == (3, 224, 224)
    for c in range(3):
        assert torch.allclose(image[c], torch.full((224, 224), WHITE[c]), atol=1e-4)


def test_test_transform_rejects_bad_sizes():
    with pytest.raises(ConfigError, match="eval.test_crop"):
        T.test_transform_paper(224, 344)
    with pytest.raises(ConfigError, match="eval.test_resize"):
        T.test_transform_paper(0, 224)


# --------------------------------------------------------------------------- train transform

TRAIN_ORIG = (300, 200)
RECT = (100, 60, 220, 140)


def test_train_without_randaugment_hand_values_and_flip_both_ways():
    # resize == crop: the only randomness is the flip. 300x200 -> 256x256: sx = 256/300, sy = 1.28;
    # RECT -> (85.333, 76.8, 187.733, 179.2); flipped: x -> 256 - x = (68.267, 76.8, 170.667, 179.2)
    t = T.train_transform(256, 256, randaugment=False)
    plain = _boxes((100 * 256 / 300, 76.8, 220 * 256 / 300, 179.2))
    flipped = _boxes((256 - 220 * 256 / 300, 76.8, 256 - 100 * 256 / 300, 179.2))
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        image, boxes = t(_rect_image(TRAIN_ORIG, RECT), _boxes(RECT))
        assert image.shape == (3, 256, 256) and boxes.shape == (1, 4)
        is_flipped = torch.allclose(boxes, flipped, atol=1e-3)
        assert is_flipped or torch.allclose(boxes, plain, atol=1e-3)
        seen.add(is_flipped)
        assert torch.allclose(_bright_box(image[0]), boxes[0], atol=2.0)
    assert seen == {True, False}  # p = 0.5 over 8 seeds: both outcomes occur


@pytest.mark.parametrize("scale", [None, (0.2, 1.0)])
def test_train_geometry_keeps_two_boxes_aligned(scale):
    # Two rectangles in different channels (R and G) so each row is checked against its own one.
    a = np.zeros((TRAIN_ORIG[1], TRAIN_ORIG[0], 3), np.uint8)
    a[60:140, 100:220, 0] = 255
    a[10:50, 30:90, 1] = 255
    img = PIL.Image.fromarray(a)
    boxes_in = _boxes(RECT, (30, 10, 90, 50))
    t = T.train_transform(256, 224, randaugment=False, random_resized_crop_scale=scale)
    for seed in range(6):
        torch.manual_seed(seed)
        image, boxes = t(img, boxes_in)
        assert image.shape == (3, 224, 224) and boxes.shape == (2, 4)
        for row, channel in ((0, 0), (1, 1)):
            bright = _bright_box(image[channel])
            if bright is None:  # the crop missed this rectangle: its box must be zero-area
                assert (boxes[row, 2] - boxes[row, 0]) * (boxes[row, 3] - boxes[row, 1]) == 0
            else:
                assert torch.allclose(bright, boxes[row], atol=2.0), (seed, row)


class _GeometricOnly(RA.BoxRandAugment):
    """RandAugment restricted to its geometric ops, to test box tracking without colour changes."""

    _AUGMENTATION_SPACE = {k: v for k, v in RA.BoxRandAugment._AUGMENTATION_SPACE.items()
                           if k in RA.GEOMETRIC_OPS}


class _RotateShear(RA.BoxRandAugment):
    _AUGMENTATION_SPACE = {k: v for k, v in RA.BoxRandAugment._AUGMENTATION_SPACE.items()
                           if k in ("Rotate", "ShearX", "ShearY")}


class _TranslateOnly(RA.BoxRandAugment):
    _AUGMENTATION_SPACE = {k: v for k, v in RA.BoxRandAugment._AUGMENTATION_SPACE.items()
                           if k in ("TranslateX", "TranslateY")}


def _run_augment(augment, image0, box, seed):
    """One seeded BoxRandAugment call on a uint8 image and one box; (bright-pixel box, out box)."""
    size = (image0.shape[-1], image0.shape[-2])
    boxes0 = tv_tensors.BoundingBoxes(_boxes(box), format="XYXY", canvas_size=(size[1], size[0]))
    torch.manual_seed(seed)
    image, boxes = augment(image0, boxes0)
    return _bright_box(image[0].float()), boxes.as_subclass(torch.Tensor)[0]


@pytest.mark.parametrize("cls, ops, magnitude, box", [
    # Rotations/shears chained (2 ops, <= 9 deg / shear 0.09, shifts <= 30 px) on a central 48 px
    # square that never leaves the canvas: corner tracking keeps the box tight (re-boxing after each
    # rotation would grow it by several px).
    (_GeometricOnly, 2, 9, (88, 88, 136, 136)),
    # Only rotations (<= 15 deg) and shears (<= 0.15), 2 ops: e.g. +15 then -15 deg gives back the
    # 48 px square, while re-boxing would give 48 * (cos 15 + sin 15)^2 = 64.6 px (8 px per side).
    (_RotateShear, 2, 15, (88, 88, 136, 136)),
    # Translations of up to 150/331 * 224 = 101 px (M = 30) push a rectangle near the right edge
    # partly off the canvas and back: the lost part is black, and the per-op clipped box knows it.
    (_TranslateOnly, 2, 30, (120, 70, 200, 150)),
])
def test_box_randaugment_geometric_ops_track_the_pixels(cls, ops, magnitude, box):
    image0 = F.to_image(_rect_image((224, 224), box))
    for seed in range(12):
        bright, out = _run_augment(cls(num_ops=ops, magnitude=magnitude), image0, box, seed)
        if bright is None:  # pushed entirely off the canvas
            assert (out[2] - out[0]) * (out[3] - out[1]) == 0, seed
        else:
            assert torch.allclose(bright, out, atol=2.0), seed


def test_box_randaugment_box_always_contains_the_object():
    # Shear/rotate after part of the object went off the canvas: an axis-aligned box cannot follow
    # the clipped polygon exactly, so the box may be loose (seed 5: ShearY, TranslateX +51 px,
    # ShearY gives y1 = 213.6 for pixels ending at 210), but it must always contain the object.
    box = (120, 70, 200, 150)
    image0 = F.to_image(_rect_image((224, 224), box))
    for seed in range(12):
        bright, out = _run_augment(_GeometricOnly(num_ops=3, magnitude=15), image0, box, seed)
        if bright is not None:
            assert bool((bright[:2] >= out[:2] - 1).all() and (bright[2:] <= out[2:] + 1).all()), seed


def test_box_randaugment_image_equals_torchvision_randaugment():
    # Same op draws and RNG calls as v2.RandAugment: for one seed the images are identical.
    image0 = F.to_image(_rect_image((96, 64), (20, 10, 70, 50)))
    boxes0 = tv_tensors.BoundingBoxes(_boxes((20, 10, 70, 50)), format="XYXY", canvas_size=(64, 96))
    for seed in range(10):
        torch.manual_seed(seed)
        ours, _ = RA.BoxRandAugment(num_ops=2, magnitude=9)(image0, boxes0)
        torch.manual_seed(seed)
        theirs = v2.RandAugment(num_ops=2, magnitude=9)(image0)
        assert torch.equal(ours, theirs), seed
    assert RA.GEOMETRIC_OPS <= set(v2.RandAugment._AUGMENTATION_SPACE)


def test_train_with_full_randaugment_keeps_the_box_on_the_object():
    # Full op space (N = 2, M = 9). The rectangle is grey 100, not white: Solarize at M = 9 inverts
    # pixels >= 255 * 0.7 = 178.5, which would turn a white object black; 100 (<= 127 after
    # Brightness x1.27) survives every photometric op as brighter than the black background, so
    # "above the midpoint of the range" still finds the object and only geometry is measured.
    t = T.train_transform(256, 224, randaugment=True, ops=2, magnitude=9)
    img = _rect_image(TRAIN_ORIG, RECT, value=100)
    for seed in range(12):
        torch.manual_seed(seed)
        image, boxes = t(img, _boxes(RECT))
        assert image.shape == (3, 224, 224) and image.dtype == torch.float32
        assert torch.allclose(_bright_box(image[0]), boxes[0], atol=2.0), seed


def test_train_empty_boxes_and_white_normalisation():
    t = T.train_transform(64, 48, randaugment=True)
    torch.manual_seed(0)
    image, boxes = t(PIL.Image.new("RGB", (80, 60)), torch.zeros(0, 4))
    assert image.shape == (3, 48, 48) and boxes.shape == (0, 4) and boxes.dtype == torch.float32
    white, _ = T.train_transform(64, 48, randaugment=False)(PIL.Image.new("RGB", (80, 60), "white"),
                                                             torch.zeros(0, 4))
    assert torch.allclose(white[2], torch.full((48, 48), WHITE[2]), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(resize=200, crop=224, randaugment=False), "data.crop"),
        (dict(resize=256, crop=224, randaugment=True, magnitude=31), "data.randaugment_magnitude"),
        (dict(resize=256, crop=224, randaugment=True, ops=-1), "data.randaugment_ops"),
        (dict(resize=256, crop=224, randaugment=False, random_resized_crop_scale=(0.0, 1.0)),
         "random_resized_crop_scale"),
    ],
)
def test_train_transform_rejects_bad_settings(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        T.train_transform(**kwargs)
