"""ILSVRC-2012 CLS-LOC (ImageNet-1k localization), Kaggle "imagenet-object-localization" layout.

Expected under ``root`` (images may sit in ``root``, ``root/Data/CLS-LOC`` or
``root/ILSVRC/Data/CLS-LOC``, the last being the unpacked Kaggle archive)::

    LOC_synset_mapping.txt       n01440764 tench, Tinca tinca     line order = label (0-based)
    LOC_train_solution.csv       optional train boxes:
                                 ImageId,PredictionString
                                 n01440764_10026,n01440764 xmin ymin xmax ymax [n01440764 ...]
    train/<synset>/*.JPEG        train images (the folder is the class)
    val/*.JPEG                   validation images = this project's TEST split (also accepted:
                                 val/<synset>/*.JPEG, as sorted for torchvision's ImageFolder)
    val_annotations/<stem>.xml   PASCAL-VOC XML per val image (also accepted:
                                 Annotations/CLS-LOC/val/, ILSVRC/Annotations/CLS-LOC/val/)

A VOC XML holds ``<size><width/><height/></size>`` and one or more
``<object><name>nXXXXXXXX</name><bndbox><xmin/><ymin/><xmax/><ymax/></bndbox></object>``. All
objects of an image must be of one synset, which is the label. VOC ``xmax``/``ymax`` are
*inclusive* pixel indices, so the continuous box is ``(xmin, ymin, xmax + 1, ymax + 1)``; the same
conversion applies to LOC_train_solution.csv (its boxes come from the same annotations).

Images are found with ``os.scandir``; image ids are paths relative to ``root``. By default every
image header is read (size, mode, the JPEG/PNG end marker: a file cut short is a defect), which fills
the train sizes and checks every box and every XML size against its file; ``read_headers=False``
skips that (val sizes then come from the XML, train sizes are unknown: ``None``).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from kdcicam.data._io import (
    Defects,
    PathGuard,
    ScanResult,
    box_problem,
    fingerprint,
    index_or_raise,
    is_image_name,
    parse_int,
    probe_image,
    read_text,
)
from kdcicam.data.base import Box, DatasetIndex, Sample

MAPPING_FILE = "LOC_synset_mapping.txt"
TRAIN_SOLUTION = "LOC_train_solution.csv"
IMAGE_DIRS = (".", "Data/CLS-LOC", "ILSVRC/Data/CLS-LOC")
XML_DIRS = ("val_annotations", "Annotations/CLS-LOC/val", "ILSVRC/Annotations/CLS-LOC/val")
_SYNSET = re.compile(r"n\d{8}")


def load_ilsvrc(root: Path | str, read_headers: bool = True) -> DatasetIndex:
    """Load and validate an ILSVRC CLS-LOC folder (see the module docstring for the layout).

    Args:
        root: The dataset folder holding ``LOC_synset_mapping.txt``.
        read_headers: Read every image header (about a minute for the full train set's 1.28M files on
            a local disk, see docs/bad-inputs.md) to find files cut short, fill sizes, check boxes
            against them and the XML sizes against the files.

    Returns:
        The index, name "ilsvrc": train = ``train/``, test = ``val/``, no val split.

    Raises:
        DataError: The first defect found, with a count of the others.
    """
    return index_or_raise(scan_ilsvrc(root, read_headers=read_headers))


def scan_ilsvrc(root: Path | str, read_headers: bool = True, decode: bool = False) -> ScanResult:
    """Validate an ILSVRC CLS-LOC folder, collecting every defect (see :func:`load_ilsvrc`)."""
    root = Path(root)
    defects = Defects()
    if not root.is_dir():
        defects.add(root, "not a folder" if root.exists() else "no such folder")
        return ScanResult(None, defects.lines)
    parts: list[tuple[str, bytes]] = []
    synsets, descriptions = _read_mapping(root / MAPPING_FILE, parts, defects)
    base = next((root / d for d in IMAGE_DIRS
                 if (root / d / "train").is_dir() or (root / d / "val").is_dir()), None)
    xml_dir = next((root / d for d in XML_DIRS if (root / d).is_dir()), None)
    if base is None:
        looked = ", ".join(f"{d}/train" if d != "." else "train" for d in IMAGE_DIRS)
        defects.add(root, f"no image folders found (looked for {looked} and the matching val)")
    else:
        for split in ("train", "val"):
            if not (base / split).is_dir():
                defects.add(base / split, "missing image folder")
    if xml_dir is None:
        defects.add(root, f"no val annotation folder found (looked for {', '.join(XML_DIRS)})")
    if synsets is None or base is None:
        return ScanResult(None, defects.lines)

    label_of = {synset: label for label, synset in enumerate(synsets)}
    modes: dict[str, str] = {}
    headers = read_headers or decode
    train, listing = _scan_train(root, base / "train", label_of, defects)
    parts.append(("train listing", "\n".join(listing).encode("utf-8")))
    train_boxes = _read_train_solution(root, train, parts, defects)
    test: list[Sample] = []
    if xml_dir is not None and (base / "val").is_dir():
        test = _scan_val(root, base / "val", xml_dir, label_of, parts, defects)

    samples = []
    for sample in train:
        sample_boxes = tuple(box for box, _ in train_boxes.get(sample.image_id, []))
        samples.append(_with_header(sample, sample_boxes, root, modes, defects, headers, decode))
    train = samples
    test = [_with_header(s, s.boxes, root, modes, defects, headers, decode) for s in test]
    used = {s.label for s in train} | {s.label for s in test}
    for label, synset in enumerate(synsets):
        if label not in used:
            defects.add(root / MAPPING_FILE, f"class {synset} has no images", label + 1)
    if defects:
        return ScanResult(None, defects.lines, modes)
    index = DatasetIndex(
        name="ilsvrc",
        root=root.absolute(),
        classes=tuple(synsets),
        train=tuple(train),
        test=tuple(test),
        fingerprint=fingerprint(parts),
        meta={"descriptions": descriptions, "image_dir": str(base.absolute()), "xml_dir": str(xml_dir.absolute())},
    )
    return ScanResult(index, [], modes)


def _read_mapping(path: Path, parts: list[tuple[str, bytes]],
                  defects: Defects) -> tuple[list[str] | None, list[str]]:
    """Synset ids in label order and their descriptions, from ``LOC_synset_mapping.txt``."""
    read = read_text(path, defects)
    if read is None:
        return None, []
    parts.append((MAPPING_FILE, read[0]))
    synsets: list[str] = []
    descriptions: list[str] = []
    first_line: dict[str, int] = {}
    for line, text in read[1]:
        synset, _, description = text.partition(" ")
        if not _SYNSET.fullmatch(synset):
            defects.add(path, f"expected 'nXXXXXXXX <description>', got {text!r}", line)
            continue
        if synset in first_line:
            defects.add(path, f"duplicate synset {synset} (first on line {first_line[synset]})", line)
            continue
        first_line[synset] = line
        synsets.append(synset)
        descriptions.append(description.strip())
    if not synsets and not defects:
        defects.add(path, "no synsets listed")
    return synsets, descriptions


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _scan_train(root: Path, train_dir: Path, label_of: dict[str, int],
                defects: Defects) -> tuple[list[Sample], list[str]]:
    """Train samples from ``train/<synset>/*`` (sorted), and their ids for the fingerprint."""
    samples: list[Sample] = []
    if not train_dir.is_dir():
        return samples, []
    abs_root = root.absolute()
    guard = PathGuard(root, root)
    with os.scandir(train_dir) as entries:
        class_dirs = sorted((e for e in entries if e.is_dir()), key=lambda e: e.name)
    for class_dir in class_dirs:
        rel_dir = _rel(Path(class_dir.path), root)
        if class_dir.name not in label_of:
            defects.add(class_dir.path, f"folder {class_dir.name!r} is not a synset of {MAPPING_FILE}")
            continue
        problem = guard.problem(rel_dir)
        if problem is not None:
            defects.add(class_dir.path, problem)
            continue
        with os.scandir(class_dir.path) as entries:
            files = sorted((e for e in entries if is_image_name(e.name)), key=lambda e: e.name)
        for entry in files:
            image_id = f"{rel_dir}/{entry.name}"
            if entry.is_symlink() and (problem := guard.problem(image_id)) is not None:
                defects.add(entry.path, problem)
                continue
            samples.append(Sample(image_id=image_id, path=abs_root / image_id, label=label_of[class_dir.name],
                                  boxes=()))
    return samples, [s.image_id for s in samples]


def _read_train_solution(root: Path, train: list[Sample], parts: list[tuple[str, bytes]],
                         defects: Defects) -> dict[str, list[tuple[Box, int]]]:
    """``{train image id: [(box, line)...]}`` from the optional ``LOC_train_solution.csv``."""
    path = root / TRAIN_SOLUTION
    read = read_text(path, defects, required=False)
    if read is None:
        return {}
    parts.append((TRAIN_SOLUTION, read[0]))
    by_stem = {Path(s.image_id).stem: s for s in train}
    boxes: dict[str, list[tuple[Box, int]]] = {}
    for line, text in read[1]:
        if line == 1 and text.replace(" ", "").lower().startswith("imageid,"):
            continue  # header
        stem, sep, prediction = text.partition(",")
        tokens = prediction.split()
        if not sep or not tokens or len(tokens) % 5:
            defects.add(path, "expected 'ImageId,<synset> <xmin> <ymin> <xmax> <ymax> ...' (groups of 5)",
                        line)
            continue
        sample = by_stem.get(stem.strip())
        if sample is None:
            defects.add(path, f"no train image for ImageId {stem.strip()!r}", line)
            continue
        synset = Path(sample.image_id).parent.name
        for k in range(0, len(tokens), 5):
            box = _voc_box(tokens[k + 1:k + 5])
            if tokens[k] != synset:
                defects.add(path, f"box of synset {tokens[k]} on an image of class {synset}", line)
            elif box is None:
                coords = " ".join(tokens[k + 1:k + 5])
                defects.add(path, f"box coordinates are not integers: {coords!r}", line)
            elif (problem := box_problem(box, None)) is not None:
                defects.add(path, f"{stem.strip()}: {problem}", line)
            else:
                boxes.setdefault(sample.image_id, []).append((box, line))
    return boxes


def _voc_box(values: list[str | None]) -> Box | None:
    """VOC inclusive ``xmin ymin xmax ymax`` -> continuous ``(xmin, ymin, xmax + 1, ymax + 1)``."""
    ints = [parse_int(v.strip()) if v is not None else None for v in values]
    if len(ints) != 4 or any(v is None for v in ints):
        return None
    xmin, ymin, xmax, ymax = ints
    return (float(xmin), float(ymin), float(xmax + 1), float(ymax + 1))


def _val_files(val_dir: Path) -> list[tuple[os.DirEntry, str | None]]:
    """Val images, flat (``val/*.JPEG``) or sorted into synset folders (``val/<synset>/*.JPEG``).

    Returns:
        ``[(entry, folder synset or None)...]`` sorted by file name.
    """
    found = []
    with os.scandir(val_dir) as entries:
        for entry in entries:
            if entry.is_dir() and _SYNSET.fullmatch(entry.name):
                with os.scandir(entry.path) as inner:
                    found.extend((e, entry.name) for e in inner if is_image_name(e.name))
            elif is_image_name(entry.name):
                found.append((entry, None))
    return sorted(found, key=lambda item: item[0].name)


def _scan_val(root: Path, val_dir: Path, xml_dir: Path, label_of: dict[str, int],
              parts: list[tuple[str, bytes]], defects: Defects) -> list[Sample]:
    """Test samples from the val images and their VOC XML annotations."""
    abs_root = root.absolute()
    guard = PathGuard(root, root)
    with os.scandir(xml_dir) as entries:
        xml_names = {e.name for e in entries if e.name.endswith(".xml")}
    samples = []
    stems = set()
    for entry, folder in _val_files(val_dir):
        image_id = _rel(Path(entry.path), root)
        stem = os.path.splitext(entry.name)[0]
        stems.add(stem)
        if entry.is_symlink() and (problem := guard.problem(image_id)) is not None:
            defects.add(entry.path, problem)
            continue
        xml_path = xml_dir / f"{stem}.xml"
        if f"{stem}.xml" not in xml_names:
            defects.add(xml_path, f"missing annotation of val image {image_id}")
            continue
        parsed = _parse_voc(xml_path, label_of, parts, defects)
        if parsed is None:
            continue
        label, boxes, size = parsed
        if folder is not None and label_of.get(folder) != label:
            defects.add(xml_path, f"annotated class differs from the folder {folder} of {image_id}")
            continue
        samples.append(Sample(image_id=image_id, path=abs_root / image_id, label=label, boxes=boxes,
                              size=size))
    for name in sorted(xml_names):
        if name[:-4] not in stems:
            defects.add(xml_dir / name, f"annotation without an image in {val_dir}")
    return samples


def _parse_voc(path: Path, label_of: dict[str, int], parts: list[tuple[str, bytes]],
               defects: Defects) -> tuple[int, tuple[Box, ...], tuple[int, int]] | None:
    """Label (the first object's synset), boxes and ``(W, H)`` of one VOC XML, or ``None`` if bad."""
    try:
        raw = path.read_bytes()
        tree = ET.fromstring(raw)
    except OSError as exc:
        defects.add(path, f"cannot read file: {exc.strerror or exc}")
        return None
    except ET.ParseError as exc:
        defects.add(path, f"malformed XML: {exc}", exc.position[0])
        return None
    parts.append((path.name, raw))
    width = parse_int((tree.findtext("size/width") or "").strip())
    height = parse_int((tree.findtext("size/height") or "").strip())
    if width is None or height is None or width <= 0 or height <= 0:
        defects.add(path, "missing or invalid <size><width/><height/></size>")
        return None
    objects = tree.findall("object")
    if not objects:
        defects.add(path, "no <object> annotated")
        return None
    first = (objects[0].findtext("name") or "").strip()
    if first not in label_of:
        defects.add(path, f"object 1: synset {first!r} is not in {MAPPING_FILE}")
        return None
    boxes = []
    for k, obj in enumerate(objects, start=1):
        name = (obj.findtext("name") or "").strip()
        if name != first:
            defects.add(path,
                        f"object {k}: synset {name!r} differs from the image's class {first} (object 1)")
            continue
        box = _voc_box([obj.findtext(f"bndbox/{tag}") for tag in ("xmin", "ymin", "xmax", "ymax")])
        if box is None:
            defects.add(path, f"object {k}: <bndbox> needs integer xmin, ymin, xmax, ymax")
            continue
        problem = box_problem(box, (width, height))
        if problem is not None:
            defects.add(path, f"object {k}: {problem}")
            continue
        boxes.append(box)
    return label_of[first], tuple(boxes), (width, height)


def _with_header(sample: Sample, boxes: tuple[Box, ...], root: Path, modes: dict[str, str],
                 defects: Defects, read_headers: bool, decode: bool) -> Sample:
    """The sample with ``boxes``; with headers read, its size filled and checked against the file."""
    size = sample.size
    if read_headers:
        info, reason = probe_image(sample.path, decode)
        if info is None:
            defects.add(root / sample.image_id, reason)
        else:
            modes[sample.image_id] = info[2]
            if size is not None and size != info[:2]:
                defects.add(root / sample.image_id,
                            f"annotated size {size[0]}x{size[1]} differs from the file's {info[0]}x{info[1]}")
            size = info[:2]
            for box in boxes:
                problem = box_problem(box, size)
                if problem is not None:
                    defects.add(root / sample.image_id, problem)
    return Sample(image_id=sample.image_id, path=sample.path, label=sample.label, boxes=boxes, size=size)
