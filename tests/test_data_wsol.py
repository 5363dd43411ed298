"""wsolevaluation metadata: load hand-written files, export an index, round trip, defects."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

from kdcicam.core.errors import DataError
from kdcicam.data.base import DatasetIndex, Sample
from kdcicam.data.loader import load_dataset
from kdcicam.data.split import carve_validation
from kdcicam.data.wsol import export_wsol, image_root_of, load_wsol, scan_wsol

# The wsolevaluation format, as in its metadata/CUB/<split>/ files (paths relative to the image root).
META = {
    "train/image_ids.txt": "a/1.jpg\na/2.jpg\nb/3.jpg\n",
    "train/class_labels.txt": "a/1.jpg,0\na/2.jpg,0\nb/3.jpg,1\n",
    "train/image_sizes.txt": "a/1.jpg,20,16\na/2.jpg,20,16\nb/3.jpg,20,16\n",
    "train/localization.txt": "a/1.jpg,2,3,12,11\n",
    "val/image_ids.txt": "b/4.jpg\n",
    "val/class_labels.txt": "b/4.jpg,1\n",
    "val/image_sizes.txt": "b/4.jpg,20,16\n",
    "val/localization.txt": "b/4.jpg,0,0,20,16\n",
    "test/image_ids.txt": "a/5.jpg\nb/6.jpg\n",
    "test/class_labels.txt": "a/5.jpg,0\nb/6.jpg,1\n",
    "test/image_sizes.txt": "a/5.jpg,20,16\nb/6.jpg,20,16\n",
    "test/localization.txt": "a/5.jpg,1,1,6,6\nb/6.jpg,0,0,5,5\na/5.jpg,6,6,10,10\n",
}


def make_wsol(tmp_path: Path, **overrides: str | None) -> tuple[Path, Path]:
    """Images under ``tmp_path/images``, metadata under ``tmp_path/metadata``; returns both."""
    images, meta = tmp_path / "images", tmp_path / "metadata"
    for rel in ("a/1.jpg", "a/2.jpg", "b/3.jpg", "b/4.jpg", "a/5.jpg", "b/6.jpg"):
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 16)).save(images / rel)
    for name, text in {**META, **{k.replace("__", "/"): v for k, v in overrides.items()}}.items():
        (meta / name).parent.mkdir(parents=True, exist_ok=True)
        if text is not None:
            (meta / name).write_text(text)
    return meta, images


def test_load_handwritten_metadata(tmp_path):
    meta, images = make_wsol(tmp_path)
    index = load_wsol(meta, images)
    assert index.name == "wsol" and index.classes == ("0", "1")  # no names in the format: labels as text
    assert [s.image_id for s in index.train] == ["a/1.jpg", "a/2.jpg", "b/3.jpg"]  # image_ids.txt order
    assert index.train[0].boxes == ((2.0, 3.0, 12.0, 11.0),) and index.train[1].boxes == ()
    assert index.val[0].label == 1 and index.val[0].boxes == ((0.0, 0.0, 20.0, 16.0),)
    assert index.test[0].boxes == ((1.0, 1.0, 6.0, 6.0), (6.0, 6.0, 10.0, 10.0))  # two lines, two boxes
    assert index.test[0].size == (20, 16) and index.test[0].path == images.absolute() / "a" / "5.jpg"
    assert len(index.fingerprint) == 16


def test_load_dataset_keeps_the_metadata_val_split(tmp_path):
    make_wsol(tmp_path)  # tmp_path holds metadata/: images are relative to tmp_path itself
    (tmp_path / "a").symlink_to(tmp_path / "images" / "a")
    (tmp_path / "b").symlink_to(tmp_path / "images" / "b")
    index = load_dataset(tmp_path, val_fraction=0.5, split_seed=3)
    assert [s.image_id for s in index.val] == ["b/4.jpg"] and len(index.train) == 3


def test_round_trip_from_cub_like_index(tmp_path):
    meta, images = make_wsol(tmp_path)
    original = load_wsol(meta, images)
    merged = dataclasses.replace(original, classes=("cat", "dog"), train=original.train + original.val, val=())
    carved = carve_validation(merged, 0.5, seed=0)
    root = export_wsol(carved, tmp_path / "out")
    assert root == images.absolute()
    back = load_wsol(tmp_path / "out")  # image root and class names come from kdcicam.json
    assert back.classes == ("cat", "dog")
    assert (back.train, back.val, back.test) == (carved.train, carved.val, carved.test)
    assert (tmp_path / "out" / "test" / "localization.txt").read_text() == (
        "a/5.jpg,1,1,6,6\na/5.jpg,6,6,10,10\nb/6.jpg,0,0,5,5\n")  # integral floats written as ints
    assert (tmp_path / "out" / "test" / "class_labels.txt").read_text() == "a/5.jpg,0\nb/6.jpg,1\n"
    assert (tmp_path / "out" / "test" / "image_sizes.txt").read_text() == "a/5.jpg,20,16\nb/6.jpg,20,16\n"
    extra = json.loads((tmp_path / "out" / "kdcicam.json").read_text())
    assert extra["source"] == {"name": "wsol", "fingerprint": original.fingerprint}


def test_fingerprint_ignores_where_the_images_are(tmp_path):
    meta, images = make_wsol(tmp_path)
    index = load_wsol(meta, images)
    moved = tmp_path / "moved"
    images.rename(moved)
    assert load_wsol(meta, moved).fingerprint == index.fingerprint
    (meta / "test" / "localization.txt").write_text(META["test/localization.txt"].replace("1,1,6,6", "1,1,6,7"))
    assert load_wsol(meta, moved).fingerprint != index.fingerprint


def test_round_trip_fractional_boxes_and_unknown_sizes(tmp_path):
    image = tmp_path / "img" / "x.png"
    image.parent.mkdir()
    Image.new("L", (7, 5)).save(image)
    sample = Sample(image_id="x.png", path=image, label=0, boxes=((0.5, 1.25, 6.5, 5.0),), size=None)
    index = DatasetIndex(name="cub", root=tmp_path, classes=("only",), train=(sample,), test=(sample,))
    export_wsol(index, tmp_path / "dup")  # the same image in train and test: ids must be unique
    assert scan_wsol(tmp_path / "dup").defects == [
        f"{tmp_path}/dup/test/image_ids.txt:1: image 'x.png' is also in train/image_ids.txt:1"]
    other = tmp_path / "img" / "y.png"
    Image.new("L", (7, 5)).save(other)
    test = dataclasses.replace(sample, image_id="y.png", path=other)
    index = dataclasses.replace(index, test=(test,))
    export_wsol(index, tmp_path / "out")
    assert (tmp_path / "out" / "test" / "localization.txt").read_text() == "y.png,0.5,1.25,6.5,5\n"
    back = load_wsol(tmp_path / "out")
    assert back.test == (dataclasses.replace(test, size=(7, 5)),)  # size read from the header at export


def test_image_root_of_rejects_mixed_roots(tmp_path):
    a = Sample("x.jpg", tmp_path / "one" / "x.jpg", 0, ())
    b = Sample("y.jpg", tmp_path / "two" / "y.jpg", 0, ())
    with pytest.raises(ValueError, match="several image roots"):
        image_root_of(DatasetIndex("cub", tmp_path, ("c",), train=(a,), test=(b,)))
    with pytest.raises(ValueError, match="does not end with its image id"):
        image_root_of(DatasetIndex("cub", tmp_path, ("c",), train=(Sample("q/x.jpg", tmp_path / "x.jpg", 0, ()),),
                                   test=()))


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"test__localization.txt": None}, "test/localization.txt: missing file"),
    ({"train__class_labels.txt": None}, "train/class_labels.txt: missing file"),
    ({"test__localization.txt": "a/5.jpg,1,1,6\nb/6.jpg,0,0,5,5\n"}, "test/localization.txt:1: expected 5 columns"),
    ({"test__localization.txt": "a/5.jpg,1,1,6,6\n"}, "test/localization.txt: no box for image 'b/6.jpg' (image_ids.txt:2)"),
    ({"test__localization.txt": "a/5.jpg,1,1,6,6\nb/6.jpg,0,0,25,5\n"},
     "test/localization.txt:2: box (0, 0, 25, 5) lies outside its 20x16 image"),
    ({"test__localization.txt": "a/5.jpg,1,1,6,6\nb/6.jpg,3,0,3,5\n"}, "test/localization.txt:2: degenerate box"),
    ({"test__localization.txt": META["test/localization.txt"] + "c/7.jpg,1,1,2,2\n"},
     "test/localization.txt:4: image 'c/7.jpg' is not in image_ids.txt"),
    ({"train__class_labels.txt": "a/1.jpg,0\na/2.jpg,zero\nb/3.jpg,1\n"}, "train/class_labels.txt:2: label is not an integer"),
    ({"train__class_labels.txt": "a/1.jpg,0\nb/3.jpg,1\n"}, "train/class_labels.txt: no label for image 'a/2.jpg'"),
    ({"train__class_labels.txt": "a/1.jpg,0\na/2.jpg,-1\nb/3.jpg,1\n"}, "train/class_labels.txt:2: label must be >= 0"),
    ({"train__image_ids.txt": "a/1.jpg\na/2.jpg\nb/3.jpg\na/1.jpg\n"}, "train/image_ids.txt:4: image 'a/1.jpg' listed twice"),
    ({"val__image_ids.txt": "a/1.jpg\n", "val__class_labels.txt": "a/1.jpg,0\n", "val__image_sizes.txt": "a/1.jpg,20,16\n",
      "val__localization.txt": "a/1.jpg,0,0,4,4\n", "train__class_labels.txt": "a/1.jpg,0\na/2.jpg,0\nb/3.jpg,1\n"},
     "val/image_ids.txt:1: image 'a/1.jpg' is also in train/image_ids.txt:1"),
    ({"test__image_sizes.txt": "a/5.jpg,20,16\n"}, "test/image_sizes.txt: no size for image 'b/6.jpg'"),
    ({"test__image_ids.txt": "a/5.jpg\nb/9.jpg\n", "test__class_labels.txt": "a/5.jpg,0\nb/9.jpg,1\n",
      "test__image_sizes.txt": "a/5.jpg,20,16\nb/9.jpg,20,16\n", "test__localization.txt": "a/5.jpg,1,1,6,6\nb/9.jpg,0,0,5,5\n"},
     "test/image_ids.txt:2: image file does not exist"),
    ({"test__image_ids.txt": "a/5.jpg\n../b/6.jpg\n", "test__class_labels.txt": "a/5.jpg,0\n../b/6.jpg,1\n",
      "test__image_sizes.txt": "a/5.jpg,20,16\n../b/6.jpg,20,16\n",
      "test__localization.txt": "a/5.jpg,1,1,6,6\n../b/6.jpg,0,0,5,5\n"},
     "test/image_ids.txt:2: image path '../b/6.jpg' escapes"),
])
def test_defects(tmp_path, overrides, expected):
    meta, images = make_wsol(tmp_path, **overrides)
    defects = scan_wsol(meta, images).defects
    assert len(defects) == 1 and defects[0].startswith(str(meta)) and expected in defects[0], defects
    with pytest.raises(DataError, match="^" + str(meta)):
        load_wsol(meta, images)


def test_missing_split_and_unknown_image_root(tmp_path):
    meta, images = make_wsol(tmp_path, **{k.replace("/", "__"): None for k in META if k.startswith("test/")})
    (meta / "test").rmdir()
    assert scan_wsol(meta, images).defects == [f"{meta}/test: missing split folder"]
    assert scan_wsol(meta).defects == [f"{meta}: image root unknown: pass it (--image-root) or write kdcicam.json"]


def test_read_headers_checks_listed_sizes(tmp_path):
    meta, images = make_wsol(tmp_path, **{"test__image_sizes.txt": "a/5.jpg,21,16\nb/6.jpg,20,16\n"})
    assert scan_wsol(meta, images, read_headers=False).defects == []  # sizes trusted without header reads
    assert scan_wsol(meta, images).defects == [  # headers read by default
        f"{meta}/test/image_sizes.txt: size 21x16 of 'a/5.jpg' differs from the file's 20x16"]


def test_class_gap_is_a_defect(tmp_path):
    # labels 0 and 2 are used, label 1 by no image: without kdcicam.json the classes are 0..2
    meta, images = make_wsol(tmp_path, **{"train__class_labels.txt": "a/1.jpg,0\na/2.jpg,0\nb/3.jpg,2\n",
                                          "val__class_labels.txt": "b/4.jpg,2\n",
                                          "test__class_labels.txt": "a/5.jpg,0\nb/6.jpg,2\n"})
    assert scan_wsol(meta, images).defects == [f"{meta}: class 1 ('1') has no images in any split"]
