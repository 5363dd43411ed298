"""The embedded benchmark generator: CUB layout, determinism, causal structure, boxes, errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdcicam.core.config import SynthConfig
from kdcicam.core.errors import ConfigError, DataError
from kdcicam.data.synthetic import LAYOUT_FILES, generate
from kdcicam.data.synthetic_geometry import mask_box
from kdcicam.data.synthetic_latents import Latents, sample_latents, split_sizes
from kdcicam.data.synthetic_render import encode_jpeg, render
from kdcicam.data.synthetic_styles import body_colour

# 3 classes x 8 images at 32 px: 24 images, per class round(8 * 0.25) = 2 test and 6 train.
SMALL = SynthConfig(classes=3, per_class=8, size=32, seed=7)


def _rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def _latents(root: Path) -> list[dict[str, str]]:
    with open(root / "latents.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "small"
    info = generate(root, SMALL)
    assert info["num_images"] == 24 and info["num_classes"] == 3
    assert (info["num_train"], info["num_test"]) == (18, 6)
    return root


# --------------------------------------------------------------------------- layout


def test_object_masks_in_wsolevaluation_layout_match_the_boxes(small):
    from kdcicam.data.cub import load_cub
    from kdcicam.data.object_masks import object_masks

    index = load_cub(small)
    root, masks = object_masks(index.test)
    assert root == small and set(masks) == {s.image_id for s in index.test}
    for sample in index.test:
        (mask,), ignore = masks[sample.image_id]
        assert ignore == "" and mask == f"masks/{sample.image_id[:-4]}.png"
        on = np.asarray(Image.open(root / mask)) > 127  # (H, W) the object
        ys, xs = np.nonzero(on)
        x0, y0, x1, y1 = sample.boxes[0]  # the GT box is tight around the object mask
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)

def test_layout_files_parse_and_agree(small):
    assert sorted(p.name for p in small.iterdir()) == sorted((*LAYOUT_FILES, "images", "masks", "regions",
                                                              "context_swap"))
    classes = _rows(small / "classes.txt")
    assert [int(r[0]) for r in classes] == [1, 2, 3]
    dirs = {int(r[0]): r[1] for r in classes}
    for d in dirs.values():  # CUB style: "001.Black_footed_Albatross"
        assert re.fullmatch(r"\d{3}\.[A-Za-z0-9_]+", d), d

    images = {int(r[0]): r[1] for r in _rows(small / "images.txt")}
    labels = {int(r[0]): int(r[1]) for r in _rows(small / "image_class_labels.txt")}
    split = {int(r[0]): int(r[1]) for r in _rows(small / "train_test_split.txt")}
    boxes = {int(r[0]): tuple(map(float, r[1:])) for r in _rows(small / "bounding_boxes.txt")}
    ids = list(range(1, 25))  # 1-based, contiguous
    for table in (images, labels, split, boxes):
        assert sorted(table) == ids
    assert all(len(b) == 4 for b in boxes.values())

    for i in ids:
        classdir, name = images[i].split("/")
        assert classdir == dirs[labels[i]]
        assert name.endswith(".jpg") and (small / "images" / images[i]).is_file()
        assert split[i] in (0, 1)
    per_class = Counter((labels[i], split[i]) for i in ids)
    assert per_class == {(c, 1): 6 for c in (1, 2, 3)} | {(c, 0): 2 for c in (1, 2, 3)}

    lat = _latents(small)
    assert [int(r["image_id"]) for r in lat] == ids
    for r in lat:
        i = int(r["image_id"])
        assert r["path"] == images[i]
        assert int(r["label"]) + 1 == labels[i]  # latents use 0-based labels, CUB files 1-based
        assert int(r["is_train"]) == split[i]
        assert int(r["preferred"]) == int(r["context"] == r["label"])
        with Image.open(small / "images" / images[i]) as im:
            assert im.format == "JPEG"
            assert im.size == (int(r["width"]), int(r["height"]))


def test_generator_json_records_config(small):
    meta = json.loads((small / "generator.json").read_text())
    assert meta["config"] == dataclasses.asdict(SMALL) | {"body_scale": [0.25, 0.6],
                                                          "body_aspect": [0.35, 0.8]}
    assert meta["version"] and meta["latents_file"] == "latents.csv"
    assert (meta["train_per_class"], meta["test_per_class"]) == (6, 2)
    assert len(meta["classes"]) == len(meta["contexts"]) == 3


def test_split_sizes_round_half_up_and_keep_one_each():
    # 10 * 0.25 = 2.5 -> 3 test; 4 * 0.1 = 0.4 -> 0 -> at least 1; 4 * 0.9 = 3.6 -> 4 -> at most 3.
    assert split_sizes(SynthConfig(per_class=10)) == (7, 3)
    assert split_sizes(SynthConfig(per_class=4, test_fraction=0.1)) == (3, 1)
    assert split_sizes(SynthConfig(per_class=4, test_fraction=0.9)) == (1, 3)


# --------------------------------------------------------------------------- determinism

def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(small, tmp_path):
    generate(tmp_path / "again", SMALL)
    assert _tree(tmp_path / "again") == _tree(small)

    generate(tmp_path / "other", dataclasses.replace(SMALL, seed=8))
    a, b = _tree(small), _tree(tmp_path / "other")
    assert a.keys() == b.keys()  # same names, different pixels
    differing = [k for k in a if k.endswith(".jpg") and a[k] != b[k]]
    copies = [k for k in differing if k.startswith("context_swap/")]
    assert len(differing) - len(copies) == 24 and len(copies) == 3 * split_sizes(SMALL)[1]  # every image


def test_written_image_is_the_rendering_of_its_latents(small):
    # Order independence: image (class, index) is a pure function of (cfg, class, index).
    rows = _latents(small)
    for r in rows[::5]:
        lat = sample_latents(SMALL, int(r["label"]), int(r["image_id"]) - 1 - 8 * int(r["label"]))
        pixels = render(SMALL, lat).pixels
        assert (small / "images" / r["path"]).read_bytes() == encode_jpeg(pixels, SMALL.jpeg_quality)


def test_image_does_not_depend_on_other_images_or_context_correlation():
    base = sample_latents(SMALL, 1, 2)
    assert sample_latents(dataclasses.replace(SMALL, per_class=12, classes=3), 1, 2) == base
    # Changing the confounding strength only changes the context and what it causes (the stripes):
    # the same object in another scene.
    contexts = set()
    for corr in (0.0, 0.5, 1.0):
        other = sample_latents(dataclasses.replace(SMALL, context_correlation=corr), 1, 2)
        contexts.add(other.context)
        assert dataclasses.replace(other, context=base.context, stripe_angle=base.stripe_angle,
                                   stripe_freq=base.stripe_freq) == base
    assert len(contexts) > 1  # the draw at corr 0 is not the preferred context for this image


# --------------------------------------------------------------------------- confounding

def _context_stats(cfg: SynthConfig) -> dict[bool, list[Latents]]:
    lats = [sample_latents(cfg, c, k) for c in range(cfg.classes) for k in range(cfg.per_class)]
    return {True: [x for x in lats if x.is_train], False: [x for x in lats if not x.is_train]}


def test_empirical_context_correlation_matches_config():
    # 4 classes x 1000: 3000 train, 1000 test. P(C = Y) = corr + (1 - corr) / 4.
    # train corr 0.9 -> 0.925, sd sqrt(.925 * .075 / 3000) = 0.0048, tolerance 0.02 (~4 sd);
    # test corr 0 -> 0.25, sd sqrt(.25 * .75 / 1000) = 0.0137, tolerance 0.055 (~4 sd).
    cfg = SynthConfig(classes=4, per_class=1000, size=32, context_correlation=0.9,
                      test_context_correlation=0.0, seed=3)
    split = _context_stats(cfg)
    assert len(split[True]) == 3000 and len(split[False]) == 1000
    p_train = np.mean([x.preferred for x in split[True]])
    p_test = np.mean([x.preferred for x in split[False]])
    assert abs(p_train - 0.925) < 0.02, p_train
    assert abs(p_test - 0.25) < 0.055, p_test
    # Test contexts are uniform (independent of the class): each near 1/4.
    freq = Counter(x.context for x in split[False])
    assert all(abs(freq[c] / 1000 - 0.25) < 0.055 for c in range(4)), freq


def test_test_context_correlation_is_honoured():
    # test corr 0.5 with 4 classes: P(C = Y) = 0.5 + 0.5 / 4 = 0.625; n = 1000 test,
    # sd sqrt(.625 * .375 / 1000) = 0.0153, tolerance 0.06. corr 1 -> always preferred.
    cfg = SynthConfig(classes=4, per_class=1000, size=32, test_context_correlation=0.5, seed=4)
    p_test = np.mean([x.preferred for x in _context_stats(cfg)[False]])
    assert abs(p_test - 0.625) < 0.06, p_test
    always = _context_stats(SynthConfig(classes=4, per_class=40, context_correlation=1.0))
    assert all(x.preferred for x in always[True])


def test_body_class_evidence_tints_the_shared_body():
    # Class 0's colour = hsv(0, 0.85, 0.9) = (0.9, 0.135, 0.135); gray = 0.55.
    # e = 0.2: R = 0.8 * 0.55 + 0.2 * 0.9 = 0.62, G = B = 0.44 + 0.2 * 0.135 = 0.467.
    np.testing.assert_allclose(body_colour(SynthConfig(body_class_evidence=0.2), 0),
                               [0.62, 0.467, 0.467], atol=1e-12)
    # e = 0: every class has the same body (no class evidence outside the part).
    flat = SynthConfig(body_class_evidence=0.0)
    for c in range(flat.classes):
        np.testing.assert_allclose(body_colour(flat, c), [0.55, 0.55, 0.55])


# --------------------------------------------------------------------------- boxes

def test_hand_worked_rasterisation_and_box():
    # 40x40 image, body a=10, b=5 at (20, 20), angle 0, part (disk, r = 0.3 * 10 = 3) at the +u end,
    # centre u = 0.85 * 10 = 8.5 -> x = 28.5.  Pixel centres are at j + 0.5.
    # Body: |x - 20| <= 10 -> columns 10..29; |y - 20| <= 5 -> rows 15..24.
    # Part: row centre y = 20.5 -> (x - 28.5)^2 <= 9 - 0.25 -> x in [25.54, 31.46] -> columns 26..30.
    # Object box: x0 = 10, x1 = 30 + 1 = 31, y0 = 15, y1 = 25.
    cfg = SynthConfig(classes=3, size=40, part_scale=0.3, noise=0.0)
    lat = dataclasses.replace(sample_latents(cfg, 0, 0), width=40, height=40, center_x=20.0,
                              center_y=20.0, semi_major=10.0, semi_minor=5.0, angle=0.0,
                              part_end=1, grayscale=False)
    r = render(cfg, lat)
    assert r.pixels.shape == (40, 40, 3) and r.pixels.dtype == np.uint8
    assert mask_box(r.body) == (10.0, 15.0, 30.0, 25.0)
    assert mask_box(r.part)[0::2] == (26.0, 31.0)
    assert mask_box(r.object) == (10.0, 15.0, 31.0, 25.0)
    # Rotating by 90 degrees swaps the roles of x and y (part now at the +y end).
    rot = render(cfg, dataclasses.replace(lat, angle=math.pi / 2))
    assert mask_box(rot.object) == (15.0, 10.0, 25.0, 31.0)


def test_mask_box_degenerate_cases():
    one = np.zeros((3, 4), bool)
    one[1, 2] = True  # a single pixel covers [2, 3) x [1, 2)
    assert mask_box(one) == (2.0, 1.0, 3.0, 2.0)
    with pytest.raises(ValueError):
        mask_box(np.zeros((3, 4), bool))


def test_boxes_inside_images_and_tight_around_object(small):
    boxes = {int(r[0]): tuple(map(float, r[1:])) for r in _rows(small / "bounding_boxes.txt")}
    for r in _latents(small):
        i, label = int(r["image_id"]), int(r["label"])
        x, y, w, h = boxes[i]
        W, H = int(r["width"]), int(r["height"])
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W and y + h <= H
        rendering = render(SMALL, sample_latents(SMALL, label, i - 1 - 8 * label))
        assert (x, y, x + w, y + h) == mask_box(rendering.object)  # tight: regenerated mask
        part = tuple(float(r[k]) for k in ("part_x0", "part_y0", "part_x1", "part_y1"))
        assert part == mask_box(rendering.part)
        assert x <= part[0] and y <= part[1] and part[2] <= x + w and part[3] <= y + h
        # The part is small relative to the whole object (the box is not the part's box).
        assert (part[2] - part[0]) * (part[3] - part[1]) < w * h


def test_object_never_touches_outside_the_image():
    # Many poses: the object is placed so that it lies wholly inside (never clipped).
    cfg = SynthConfig(classes=3, per_class=100, size=32, body_scale=(0.6, 0.7), part_scale=0.5)
    for c in range(3):
        for k in range(0, 100, 3):
            lat = sample_latents(cfg, c, k)
            r = render(cfg, lat)
            area = np.pi * lat.semi_major * lat.semi_minor  # body area, pixels
            assert abs(r.body.sum() - area) < 0.15 * area + 4  # not clipped by the border
            part_area = np.pi * (0.5 * lat.semi_major) ** 2  # equal-area disk / square / diamond
            assert abs(r.part.sum() - part_area) < 0.15 * part_area + 4


# --------------------------------------------------------------------------- nuisances

def test_grayscale_images_present_when_fraction_positive(tmp_path):
    cfg = dataclasses.replace(SMALL, grayscale_fraction=0.5)
    generate(tmp_path / "g", cfg)
    rows = _latents(tmp_path / "g")
    flags = [int(r["is_grayscale"]) for r in rows]
    assert 0 < sum(flags) < len(flags)
    for r, flag in zip(rows, flags):
        with Image.open(tmp_path / "g" / "images" / r["path"]) as im:
            assert im.mode == ("L" if flag else "RGB")


def test_no_grayscale_when_fraction_zero():
    cfg = dataclasses.replace(SMALL, per_class=50, grayscale_fraction=0.0)
    assert not any(sample_latents(cfg, c, k).grayscale for c in range(3) for k in range(50))


def test_non_square_sizes_within_jitter(small):
    # size 32, jitter 1.25: each side in [round(32 / 1.25), round(32 * 1.25)] = [26, 40].
    sizes = [(int(r["width"]), int(r["height"])) for r in _latents(small)]
    assert any(w != h for w, h in sizes)
    assert all(26 <= w <= 40 and 26 <= h <= 40 for w, h in sizes)
    square = dataclasses.replace(SMALL, side_jitter=1.0)
    assert all(sample_latents(square, 0, k).width == sample_latents(square, 0, k).height == 32
               for k in range(8))


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("field, value", [
    ("classes", 1), ("per_class", 3), ("size", 31), ("context_correlation", 1.1),
    ("context_correlation", -0.1), ("test_context_correlation", 1.5), ("test_fraction", 1.0),
    ("seed", -1), ("body_class_evidence", 1.2), ("part_scale", 0.0), ("body_scale", (0.5, 0.3)),
    ("body_aspect", (0.5, 1.2)), ("side_jitter", 0.9), ("grayscale_fraction", -0.01),
    ("noise", -1.0), ("jpeg_quality", 0),
])
def test_invalid_config_is_one_line_naming_the_option(tmp_path, field, value):
    cfg = dataclasses.replace(SMALL, **{field: value})
    with pytest.raises(ConfigError) as exc:
        generate(tmp_path / "out", cfg)
    msg = str(exc.value)
    assert field in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind


def test_non_empty_destination_needs_overwrite(tmp_path, small):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError) as exc:
        generate(out, SMALL)
    assert "not empty" in str(exc.value) and "\n" not in str(exc.value)
    # Even with overwrite, a folder this generator did not write is left alone.
    with pytest.raises(DataError, match="generator.json"):
        generate(out, SMALL, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    # A file in the way is refused too.
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        generate(tmp_path / "file", SMALL)


def test_overwrite_replaces_a_generated_benchmark(tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine without overwrite
    generate(out, SMALL)
    before = _tree(out)
    with pytest.raises(DataError):
        generate(out, dataclasses.replace(SMALL, seed=1))
    assert _tree(out) == before
    generate(out, dataclasses.replace(SMALL, seed=1, classes=2), overwrite=True)
    assert len(_rows(out / "classes.txt")) == 2
    assert len(list((out / "images").iterdir())) == 2  # no stale class folders
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # temporary folder moved into place


def test_the_cub_loader_reads_the_benchmark(small):
    # Contract with kdcicam.data.cub: the benchmark is a valid CUB folder, named "synthetic".
    from kdcicam.data.cub import load_cub
    index = load_cub(small)
    assert index.name == "synthetic" and index.num_classes == 3
    assert (len(index.train), len(index.test)) == (18, 6)
    rows = {r["path"]: r for r in _latents(small)}
    for sample in index.train + index.test:
        r = rows[str(sample.path.relative_to(small / "images"))]
        assert sample.label == int(r["label"])
        assert sample.boxes == ((float(r["x0"]), float(r["y0"]), float(r["x1"]), float(r["y1"])),)
