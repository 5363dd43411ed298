"""CUB-200-2011 layout loader, the torch Dataset over its samples, and load_rgb."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from kdcicam.core.errors import DataError
from kdcicam.data.cub import load_cub, scan_cub
from kdcicam.data.dataset import WSOLDataset, collate_wsol, load_rgb

# Two classes, four 20x16 images; image 3 has two boxes. CUB boxes are "x y w h".
FILES = {
    "images.txt": "1 001.a/a1.jpg\n2 001.a/a2.jpg\n3 002.b/b1.jpg\n4 002.b/b2.jpg\n",
    "image_class_labels.txt": "1 1\n2 1\n3 2\n4 2\n",
    "train_test_split.txt": "1 1\n2 0\n3 1\n4 0\n",
    "bounding_boxes.txt": "1 2.0 3.0 10.0 8.0\n2 0 0 20 16\n3 1 1 5 5\n3 6 6 4 4\n4 0.5 0 19.5 16\n",
    "classes.txt": "1 001.a\n2 002.b\n",
}


def make_cub(root: Path, **overrides: str | None) -> Path:
    """Write the tiny CUB dataset; ``overrides`` replace (or, with None, delete) index files."""
    for rel in ("001.a/a1.jpg", "001.a/a2.jpg", "002.b/b1.jpg", "002.b/b2.jpg"):
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 16), (200, 10, 10)).save(root / "images" / rel)
    for name, text in {**FILES, **overrides}.items():
        if text is not None:
            (root / name).write_text(text)
    return root


def error_of(root: Path) -> str:
    with pytest.raises(DataError) as info:
        load_cub(root)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_load_cub_boxes_labels_splits_sizes(tmp_path):
    index = load_cub(make_cub(tmp_path))
    assert index.name == "cub" and index.classes == ("001.a", "002.b")
    assert [s.image_id for s in index.train] == ["001.a/a1.jpg", "002.b/b1.jpg"]  # is_train = 1
    assert [s.image_id for s in index.test] == ["001.a/a2.jpg", "002.b/b2.jpg"]
    a1, b1 = index.train
    assert a1.label == 0 and b1.label == 1  # class ids 1, 2 -> labels 0, 1
    assert a1.boxes == ((2.0, 3.0, 12.0, 11.0),)  # x y w h = 2 3 10 8 -> (2, 3, 2+10, 3+8)
    assert b1.boxes == ((1.0, 1.0, 6.0, 6.0), (6.0, 6.0, 10.0, 10.0))  # two lines, two boxes
    assert index.test[1].boxes == ((0.5, 0.0, 20.0, 16.0),)  # 0.5 + 19.5 = 20: touches the border
    assert a1.size == (20, 16) and a1.path == tmp_path.absolute() / "images" / "001.a" / "a1.jpg"
    assert index.val == () and len(index.fingerprint) == 16


def test_fingerprint_is_stable_and_tracks_index_bytes(tmp_path):
    first = load_cub(make_cub(tmp_path)).fingerprint
    assert load_cub(tmp_path).fingerprint == first
    (tmp_path / "bounding_boxes.txt").write_text(FILES["bounding_boxes.txt"].replace("2.0 3.0", "2.0 4.0"))
    assert load_cub(tmp_path).fingerprint != first


def test_generator_json_marks_the_synthetic_benchmark(tmp_path):
    make_cub(tmp_path, **{"generator.json": '{"seed": 3, "classes": 2}'})
    index = load_cub(tmp_path)
    assert index.name == "synthetic" and index.meta == {"seed": 3, "classes": 2}
    plain = load_cub(make_cub(tmp_path / "plain"))
    assert index.fingerprint != plain.fingerprint  # generator.json is hashed too


def test_invalid_generator_json_names_file_and_line(tmp_path):
    message = error_of(make_cub(tmp_path, **{"generator.json": '{\n"seed": }'}))
    assert "generator.json:2: invalid JSON" in message


def test_without_header_reads_sizes_are_unknown(tmp_path):
    index = load_cub(make_cub(tmp_path), read_headers=False)
    assert all(s.size is None for s in index.train + index.test)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"train_test_split.txt": None}, "train_test_split.txt: missing file"),
        ({"image_class_labels.txt": "1 1\n2\n3 2\n4 2\n"}, "image_class_labels.txt:2: expected 2 columns"),
        ({"image_class_labels.txt": "1 1\n2 1 7\n3 2\n4 2\n"}, "image_class_labels.txt:2: expected 2 columns"),
        ({"image_class_labels.txt": "1 1\n2 one\n3 2\n4 2\n"}, "image_class_labels.txt:2: class_id is not an integer"),
        ({"bounding_boxes.txt": "1 2 3 10 eight\n2 0 0 20 16\n3 1 1 5 5\n4 0 0 19 16\n"},
         "bounding_boxes.txt:1: height is not a finite number: 'eight'"),
        ({"images.txt": FILES["images.txt"] + "3 002.b/b2.jpg\n"}, "images.txt:5: duplicate image id 3 (first on line 3)"),
        ({"images.txt": FILES["images.txt"].replace("4 002.b/b2.jpg", "4 001.a/a1.jpg")},
         "images.txt:4: image '001.a/a1.jpg' listed twice (first on line 1)"),
        ({"image_class_labels.txt": FILES["image_class_labels.txt"] + "9 1\n"},
         "image_class_labels.txt:5: image id 9 is not in images.txt"),
        ({"train_test_split.txt": "1 1\n2 0\n3 1\n"}, "train_test_split.txt: no line for image id 4 (images.txt:4)"),
        ({"train_test_split.txt": "1 1\n2 0\n3 1\n4 2\n"}, "train_test_split.txt:4: is_train must be 1 (train) or 0"),
        ({"image_class_labels.txt": "1 1\n2 1\n3 2\n4 7\n"}, "image_class_labels.txt:4: class id 7 of image id 4 is not"),
        ({"classes.txt": "1 001.a\n2 002.b\n3 003.c\n"}, "classes.txt:3: class 3 '003.c' has no images"),
        ({"bounding_boxes.txt": "1 2 3 0 8\n2 0 0 20 16\n3 1 1 5 5\n4 0 0 19 16\n"},
         "bounding_boxes.txt:1: box width and height must be > 0, got w=0 h=8"),
        ({"bounding_boxes.txt": "1 2 3 10 -1\n2 0 0 20 16\n3 1 1 5 5\n4 0 0 19 16\n"},
         "bounding_boxes.txt:1: box width and height must be > 0, got w=10 h=-1"),
        # x1 = 5 + 17 = 22 > 20 + 1 px tolerance
        ({"bounding_boxes.txt": "1 5 3 17 8\n2 0 0 20 16\n3 1 1 5 5\n4 0 0 19 16\n"},
         "bounding_boxes.txt:1: box (5, 3, 22, 11) lies outside its 20x16 image"),
        ({"bounding_boxes.txt": "1 -1.5 3 10 8\n2 0 0 20 16\n3 1 1 5 5\n4 0 0 19 16\n"},
         "bounding_boxes.txt:1: box (-1.5, 3, 8.5, 11) lies outside"),
        ({"images.txt": FILES["images.txt"].replace("001.a/a2.jpg", "001.a/gone.jpg")},
         "images.txt:2: image file does not exist: images/001.a/gone.jpg"),
        ({"images.txt": FILES["images.txt"].replace("001.a/a2.jpg", "../x.jpg")}, "images.txt:2: image path '../x.jpg' escapes"),
        ({"images.txt": FILES["images.txt"].replace("001.a/a2.jpg", "001.a/../../x.jpg")}, "images.txt:2: image path"),
        ({"images.txt": FILES["images.txt"].replace("001.a/a2.jpg", "/etc/hostname")},
         "images.txt:2: absolute image path '/etc/hostname'"),
    ],
)
def test_each_defect_is_one_line_naming_file_and_line(tmp_path, overrides, expected):
    make_cub(tmp_path, **overrides)
    defects = scan_cub(tmp_path).defects
    assert len(defects) == 1 and expected in defects[0]  # no knock-on reports of the same fault
    assert defects[0].startswith(str(tmp_path))
    assert error_of(tmp_path) == defects[0]


def test_box_one_pixel_past_the_border_is_tolerated(tmp_path):
    # x1 = 1 + 20 = 21 = width + 1 (tolerance); y1 = 0 + 17 = 17 = height + 1
    make_cub(tmp_path, **{"bounding_boxes.txt": "1 1 0 20 17\n2 0 0 20 16\n3 1 1 5 5\n4 0 0 19 16\n"})
    assert load_cub(tmp_path).train[0].boxes == ((1.0, 0.0, 21.0, 17.0),)


def test_unreadable_image_is_a_defect(tmp_path):
    make_cub(tmp_path)
    (tmp_path / "images" / "002.b" / "b2.jpg").write_bytes(b"not an image at all")
    assert "images.txt:4: unreadable image" in error_of(tmp_path)


def test_symlink_escaping_the_root_is_a_defect(tmp_path):
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (20, 16)).save(outside)
    root = make_cub(tmp_path / "cub")
    link = root / "images" / "001.a" / "a2.jpg"
    link.unlink()
    os.symlink(outside, link)
    assert "images.txt:2: image path '001.a/a2.jpg' resolves outside the dataset root" in error_of(root)


def test_symlink_inside_the_root_is_fine(tmp_path):
    root = make_cub(tmp_path)
    link = root / "images" / "001.a" / "a2.jpg"
    link.unlink()
    os.symlink(root / "images" / "002.b" / "b2.jpg", link)
    assert load_cub(root).test[0].path == root / "images" / "001.a" / "a2.jpg"


def test_every_defect_is_collected_and_the_error_counts_them(tmp_path):
    make_cub(tmp_path, **{"image_class_labels.txt": "1 1\n2 1\n3 1\n4 7\n",
                          "bounding_boxes.txt": "1 2 3 0 8\n2 0 0 20 16\n3 1 1 5 5\n4 0 0 19 16\n"})
    defects = scan_cub(tmp_path).defects
    assert len(defects) == 3  # bad box, unknown class 7, class 2 left without images
    assert defects[0].startswith(f"{tmp_path}/bounding_boxes.txt:1:")  # sorted by file, then line
    assert "(and 2 more defects" in error_of(tmp_path)


def test_missing_folder(tmp_path):
    assert error_of(tmp_path / "nope") == f"{tmp_path / 'nope'}: no such folder"


# --- load_rgb and the torch Dataset ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA"])
def test_load_rgb_converts_any_mode(tmp_path, mode):
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    Image.new(mode, (5, 3)).save(path)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (5, 3)


def test_grayscale_image_loads_as_rgb_with_equal_channels(tmp_path):
    path = tmp_path / "g.png"
    Image.new("L", (4, 2), 77).save(path)
    item = WSOLDataset([_sample(path, ((0, 0, 4, 2),))])[0]
    assert item["image"].shape == (3, 2, 4)
    assert torch.allclose(item["image"], torch.full((3, 2, 4), 77 / 255))


def test_load_rgb_rejects_truncated_and_missing_files(tmp_path):
    path = tmp_path / "t.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(path, quality=95)
    path.write_bytes(path.read_bytes()[:-2000])  # header intact, the last pixels cut off
    with pytest.raises(DataError, match="t.jpg: unreadable image"):
        load_rgb(path)
    with pytest.raises(DataError, match="nope.jpg: image file does not exist"):
        load_rgb(tmp_path / "nope.jpg")


def _sample(path: Path, boxes: tuple, label: int = 0, size=None):
    from kdcicam.data.base import Sample

    return Sample(image_id=path.name, path=path, label=label, boxes=tuple(map(tuple, boxes)), size=size)


def _half(img: Image.Image, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in transform: resize to half size, boxes scaled alike."""
    small = img.resize((img.width // 2, img.height // 2))
    return pil_to_tensor(small).float() / 255, boxes * 0.5  # (3, h, w), (K, 4)


def test_dataset_item_and_collate(tmp_path):
    index = load_cub(make_cub(tmp_path))
    dataset = WSOLDataset(index.train, transform=_half)
    item = dataset[1]
    assert item["image"].shape == (3, 8, 10) and item["label"] == 1 and item["index"] == 1
    assert item["image_id"] == "002.b/b1.jpg" and item["orig_size"] == (20, 16)
    assert item["orig_boxes"].tolist() == [[1, 1, 6, 6], [6, 6, 10, 10]]
    assert item["boxes"].tolist() == [[0.5, 0.5, 3, 3], [3, 3, 5, 5]]  # halved
    batch = collate_wsol([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 8, 10)
    assert batch["label"].tolist() == [0, 1] and batch["index"].tolist() == [0, 1]
    assert [b.shape for b in batch["boxes"]] == [(1, 4), (2, 4)]  # per-image lists, K differs
    assert batch["orig_size"] == [(20, 16), (20, 16)] and batch["image_id"] == ["001.a/a1.jpg", "002.b/b1.jpg"]


def test_dataset_without_boxes_and_default_transform(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (3, 2), (255, 0, 0)).save(path)
    item = WSOLDataset([_sample(path, ())])[0]
    assert item["boxes"].shape == (0, 4) and item["orig_boxes"].shape == (0, 4)
    assert item["image"][:, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_dataset_rejects_an_image_whose_size_differs_from_the_index(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (3, 2)).save(path)
    with pytest.raises(DataError, match="x.png: image is 3x2 but the index says 4x2"):
        WSOLDataset([_sample(path, (), size=(4, 2))])[0]
