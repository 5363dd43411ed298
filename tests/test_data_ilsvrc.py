"""ILSVRC CLS-LOC loader: synset order, train folders, val VOC XML (inclusive -> continuous boxes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from kdcicam.core.errors import DataError
from kdcicam.data.ilsvrc import load_ilsvrc, scan_ilsvrc

# Mapping order is not alphabetical on purpose: the label is the line, not the sorted position.
MAPPING = "n02000002 goldfish, Carassius auratus\nn01000001 tench, Tinca tinca\n"
GOLD, TENCH = "n02000002", "n01000001"


def voc(objects: list[tuple[str, int, int, int, int]], width: int = 20, height: int = 16) -> str:
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1 in objects
    )
    return (f"<annotation><folder>val</folder><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{body}</annotation>")


def make_ilsvrc(root: Path, images: str = ".", xml: str = "val_annotations") -> Path:
    """2 synsets x 2 train images, 2 val images with XML; ``images``/``xml``: where they go."""
    base = root / images
    root.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text(MAPPING)
    for synset in (GOLD, TENCH):
        (base / "train" / synset).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (20, 16)).save(base / "train" / synset / f"{synset}_{k}.JPEG")
    (base / "val").mkdir(parents=True)
    (root / xml).mkdir(parents=True)
    for k, objects in enumerate([[(TENCH, 1, 2, 10, 12), (TENCH, 0, 0, 19, 15)], [(GOLD, 3, 3, 4, 4)]], start=1):
        stem = f"ILSVRC2012_val_{k:08d}"
        Image.new("RGB", (20, 16)).save(base / "val" / f"{stem}.JPEG")
        (root / xml / f"{stem}.xml").write_text(voc(objects))
    return root


def defects_of(root: Path) -> list[str]:
    defects = scan_ilsvrc(root).defects
    with pytest.raises(DataError):
        load_ilsvrc(root)
    return defects


def test_load_flat_layout(tmp_path):
    index = load_ilsvrc(make_ilsvrc(tmp_path))
    assert index.name == "ilsvrc" and index.classes == (GOLD, TENCH)
    assert index.meta["descriptions"] == ["goldfish, Carassius auratus", "tench, Tinca tinca"]
    assert [(s.image_id, s.label) for s in index.train] == [
        (f"train/{TENCH}/{TENCH}_0.JPEG", 1), (f"train/{TENCH}/{TENCH}_1.JPEG", 1),  # folders sorted by name
        (f"train/{GOLD}/{GOLD}_0.JPEG", 0), (f"train/{GOLD}/{GOLD}_1.JPEG", 0),
    ]
    assert all(s.boxes == () and s.size == (20, 16) for s in index.train)  # no solution csv; headers read
    first, second = index.test  # ILSVRC val = this project's test split
    assert first.image_id == "val/ILSVRC2012_val_00000001.JPEG" and first.label == 1
    # VOC inclusive pixels -> continuous: (xmin, ymin, xmax + 1, ymax + 1)
    assert first.boxes == ((1.0, 2.0, 11.0, 13.0), (0.0, 0.0, 20.0, 16.0))
    assert second.boxes == ((3.0, 3.0, 5.0, 5.0),) and second.label == 0  # a 1-pixel-wide box (4 - 3 + 1 = 2)
    assert first.size == (20, 16) and first.path == tmp_path.absolute() / first.image_id
    assert index.val == () and len(index.fingerprint) == 16


@pytest.mark.parametrize(("images", "xml"), [
    ("ILSVRC/Data/CLS-LOC", "ILSVRC/Annotations/CLS-LOC/val"),  # unpacked Kaggle archive
    (".", "Annotations/CLS-LOC/val"),
])
def test_kaggle_layouts(tmp_path, images, xml):
    index = load_ilsvrc(make_ilsvrc(tmp_path, images=images, xml=xml))
    prefix = "" if images == "." else f"{images}/"
    assert index.test[0].image_id == f"{prefix}val/ILSVRC2012_val_00000001.JPEG"
    assert index.test[0].boxes[0] == (1.0, 2.0, 11.0, 13.0) and len(index.train) == 4


def test_val_sorted_into_synset_folders(tmp_path):
    make_ilsvrc(tmp_path)
    for k, synset in ((1, TENCH), (2, GOLD)):
        (tmp_path / "val" / synset).mkdir()
        name = f"ILSVRC2012_val_{k:08d}.JPEG"
        (tmp_path / "val" / name).rename(tmp_path / "val" / synset / name)
    index = load_ilsvrc(tmp_path)
    assert [(s.image_id, s.label) for s in index.test] == [
        (f"val/{TENCH}/ILSVRC2012_val_00000001.JPEG", 1), (f"val/{GOLD}/ILSVRC2012_val_00000002.JPEG", 0)]
    (tmp_path / "val" / GOLD / "ILSVRC2012_val_00000002.JPEG").rename(
        tmp_path / "val" / TENCH / "ILSVRC2012_val_00000002.JPEG")
    assert defects_of(tmp_path) == [f"{tmp_path}/val_annotations/ILSVRC2012_val_00000002.xml: annotated class "
                                    f"differs from the folder {TENCH} of val/{TENCH}/ILSVRC2012_val_00000002.JPEG"]


def test_train_solution_boxes(tmp_path):
    make_ilsvrc(tmp_path)
    (tmp_path / "LOC_train_solution.csv").write_text(
        f"ImageId,PredictionString\n{TENCH}_1,{TENCH} 1 1 5 5 {TENCH} 2 3 8 9 \n{GOLD}_0,{GOLD} 0 0 19 15\n")
    index = load_ilsvrc(tmp_path)
    boxes = {s.image_id: s.boxes for s in index.train}
    assert boxes[f"train/{TENCH}/{TENCH}_1.JPEG"] == ((1.0, 1.0, 6.0, 6.0), (2.0, 3.0, 9.0, 10.0))  # +1 on x/y max
    assert boxes[f"train/{GOLD}/{GOLD}_0.JPEG"] == ((0.0, 0.0, 20.0, 16.0),)
    assert boxes[f"train/{TENCH}/{TENCH}_0.JPEG"] == ()
    before = load_ilsvrc(make_ilsvrc(tmp_path / "other")).fingerprint
    assert index.fingerprint != before  # the csv is part of the fingerprint


def test_fingerprint_tracks_train_listing_and_xml(tmp_path):
    first = load_ilsvrc(make_ilsvrc(tmp_path)).fingerprint
    assert load_ilsvrc(tmp_path).fingerprint == first
    Image.new("RGB", (20, 16)).save(tmp_path / "train" / GOLD / f"{GOLD}_9.JPEG")
    second = load_ilsvrc(tmp_path).fingerprint
    assert second != first
    (tmp_path / "val_annotations" / "ILSVRC2012_val_00000002.xml").write_text(voc([(GOLD, 3, 3, 5, 4)]))
    assert load_ilsvrc(tmp_path).fingerprint != second


def test_read_headers_fills_train_sizes_and_checks_xml_size(tmp_path):
    make_ilsvrc(tmp_path)
    assert all(s.size is None for s in load_ilsvrc(tmp_path, read_headers=False).train)
    (tmp_path / "val_annotations" / "ILSVRC2012_val_00000002.xml").write_text(voc([(GOLD, 3, 3, 4, 4)], width=30))
    assert load_ilsvrc(tmp_path, read_headers=False).test[1].size == (30, 16)  # headers not read: XML trusted
    defects = scan_ilsvrc(tmp_path).defects  # headers read by default
    assert defects == [f"{tmp_path}/val/ILSVRC2012_val_00000002.JPEG: annotated size 30x16 differs from the file's 20x16"]


def _rewrite_xml(root: Path, k: int, text: str) -> Path:
    path = root / "val_annotations" / f"ILSVRC2012_val_{k:08d}.xml"
    path.write_text(text)
    return path


def test_mixed_synsets_in_one_image(tmp_path):
    path = _rewrite_xml(make_ilsvrc(tmp_path), 1, voc([(TENCH, 1, 1, 5, 5), (GOLD, 2, 2, 6, 6)]))
    assert defects_of(tmp_path) == [f"{path}: object 2: synset '{GOLD}' differs from the image's class {TENCH} (object 1)"]


def test_val_box_outside_image(tmp_path):
    # xmax 20 -> x1 = 21 is within the 1 px tolerance of width 20; xmax 21 -> x1 = 22 is not
    _rewrite_xml(make_ilsvrc(tmp_path), 1, voc([(TENCH, 0, 0, 20, 15)]))
    assert scan_ilsvrc(tmp_path).defects == []
    path = _rewrite_xml(tmp_path, 1, voc([(TENCH, 0, 0, 21, 15)]))
    assert defects_of(tmp_path) == [f"{path}: object 1: box (0, 0, 22, 16) lies outside its 20x16 image"]


@pytest.mark.parametrize(("text", "expected"), [
    ("<annotation><size>", "malformed XML"),
    (voc([]), "no <object> annotated"),
    (voc([(TENCH, 1, 1, 5, 5)]).replace("<width>20</width>", ""), "missing or invalid <size>"),
    (voc([("n09999999", 1, 1, 5, 5)]), "object 1: synset 'n09999999' is not in LOC_synset_mapping.txt"),
    (voc([(TENCH, 1, 1, 5, 5)]).replace("<xmin>1</xmin>", "<xmin>a</xmin>"), "object 1: <bndbox> needs integer"),
    (voc([(TENCH, 6, 1, 4, 5)]), "object 1: degenerate box (6, 1, 5, 6)"),
])
def test_bad_xml(tmp_path, text, expected):
    path = _rewrite_xml(make_ilsvrc(tmp_path), 1, text)
    defects = defects_of(tmp_path)
    assert len(defects) == 1 and defects[0].startswith(f"{path}") and expected in defects[0]


def test_missing_annotation_and_orphan_annotation(tmp_path):
    make_ilsvrc(tmp_path)
    (tmp_path / "val_annotations" / "ILSVRC2012_val_00000002.xml").rename(
        tmp_path / "val_annotations" / "ILSVRC2012_val_00000003.xml")
    assert defects_of(tmp_path) == [
        f"{tmp_path}/val_annotations/ILSVRC2012_val_00000002.xml: missing annotation of val image "
        "val/ILSVRC2012_val_00000002.JPEG",
        f"{tmp_path}/val_annotations/ILSVRC2012_val_00000003.xml: annotation without an image in {tmp_path}/val",
    ]


def test_missing_mapping_and_annotation_folder(tmp_path):
    make_ilsvrc(tmp_path)
    (tmp_path / "LOC_synset_mapping.txt").unlink()
    assert defects_of(tmp_path) == [f"{tmp_path}/LOC_synset_mapping.txt: missing file"]
    make_ilsvrc(tmp_path / "b")
    (tmp_path / "b" / "val_annotations").rename(tmp_path / "b" / "xml")
    assert "no val annotation folder found (looked for val_annotations" in defects_of(tmp_path / "b")[0]


@pytest.mark.parametrize(("mapping", "expected"), [
    (MAPPING + "n03000003 carp\n", "LOC_synset_mapping.txt:3: class n03000003 has no images"),
    (MAPPING + "carp\n", "LOC_synset_mapping.txt:3: expected 'nXXXXXXXX <description>', got 'carp'"),
    (MAPPING + f"{GOLD} again\n", f"LOC_synset_mapping.txt:3: duplicate synset {GOLD} (first on line 1)"),
])
def test_bad_mapping(tmp_path, mapping, expected):
    make_ilsvrc(tmp_path)
    (tmp_path / "LOC_synset_mapping.txt").write_text(mapping)
    assert defects_of(tmp_path) == [f"{tmp_path}/{expected}"]


def test_train_folder_not_in_mapping(tmp_path):
    make_ilsvrc(tmp_path)
    (tmp_path / "train" / "n07777777").mkdir()
    assert defects_of(tmp_path) == [f"{tmp_path}/train/n07777777: folder 'n07777777' is not a synset of "
                                    "LOC_synset_mapping.txt"]


@pytest.mark.parametrize(("csv", "expected"), [
    (f"ImageId,PredictionString\n{TENCH}_7,{TENCH} 1 1 5 5\n", f"csv:2: no train image for ImageId '{TENCH}_7'"),
    (f"ImageId,PredictionString\n{TENCH}_0,{GOLD} 1 1 5 5\n", f"csv:2: box of synset {GOLD} on an image of class {TENCH}"),
    (f"ImageId,PredictionString\n{TENCH}_0,{TENCH} 1 1 5\n", "csv:2: expected 'ImageId,<synset> <xmin>"),
    (f"ImageId,PredictionString\n{TENCH}_0,{TENCH} 1 1 5 x\n", "csv:2: box coordinates are not integers: '1 1 5 x'"),
    (f"ImageId,PredictionString\n{TENCH}_0,{TENCH} 5 1 3 4\n", f"csv:2: {TENCH}_0: degenerate box (5, 1, 4, 5)"),
])
def test_bad_train_solution(tmp_path, csv, expected):
    make_ilsvrc(tmp_path)
    (tmp_path / "LOC_train_solution.csv").write_text(csv)
    defects = defects_of(tmp_path)
    assert len(defects) == 1 and defects[0].startswith(f"{tmp_path}/LOC_train_solution.") and expected in defects[0]


def test_symlinked_val_image_outside_root(tmp_path):
    root = make_ilsvrc(tmp_path / "ils")
    outside = tmp_path / "elsewhere.JPEG"
    Image.new("RGB", (20, 16)).save(outside)
    link = root / "val" / "ILSVRC2012_val_00000002.JPEG"
    link.unlink()
    os.symlink(outside, link)
    defects = scan_ilsvrc(root).defects
    assert any(d.startswith(f"{link}: image path 'val/ILSVRC2012_val_00000002.JPEG' resolves outside") for d in defects)


def test_missing_image_folders(tmp_path):
    (tmp_path / "LOC_synset_mapping.txt").write_text(MAPPING)
    (tmp_path / "val_annotations").mkdir()
    assert defects_of(tmp_path) == [f"{tmp_path}: no image folders found (looked for train, Data/CLS-LOC/train, "
                                    "ILSVRC/Data/CLS-LOC/train and the matching val)"]
