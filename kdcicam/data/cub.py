"""CUB-200-2011 layout (also the embedded synthetic benchmark's layout).

Expected files under ``root``::

    images.txt               <image_id> <relpath>            relpath below images/
    image_class_labels.txt   <image_id> <class_id>
    train_test_split.txt     <image_id> <1=train | 0=test>
    bounding_boxes.txt       <image_id> <x> <y> <w> <h>      floats; several lines = several boxes
    classes.txt              <class_id> <name>
    images/<relpath>         the images
    generator.json           optional: written by ``kdcicam data synth`` (the index is "synthetic")

Ids and class ids are 1-based; labels are the 0-based rank of the class id in classes.txt (class
id - 1 for CUB). A box ``x y w h`` becomes the continuous ``(x, y, x + w, y + h)``. The image id is
the relpath, the sample path ``root/images/relpath``.
"""

from __future__ import annotations

import json
from pathlib import Path

from kdcicam.data._io import (
    Defects,
    PathGuard,
    ScanResult,
    box_problem,
    fingerprint,
    index_or_raise,
    parse_rows,
    probe_image,
    read_text,
)
from kdcicam.data.base import Box, DatasetIndex, Sample

INDEX_FILES = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
    "classes.txt",
)
GENERATOR_FILE = "generator.json"

_SPECS: dict[str, tuple[str, tuple[type, ...]]] = {
    "images.txt": ("<image_id> <relpath>", (int, str)),
    "image_class_labels.txt": ("<image_id> <class_id>", (int, int)),
    "train_test_split.txt": ("<image_id> <is_train>", (int, int)),
    "bounding_boxes.txt": ("<image_id> <x> <y> <width> <height>", (int, float, float, float, float)),
    "classes.txt": ("<class_id> <name>", (int, str)),
}


def load_cub(root: Path | str, read_headers: bool = True) -> DatasetIndex:
    """Load and validate a CUB-layout dataset.

    Args:
        root: The dataset folder (holding ``images.txt``...).
        read_headers: Read every image header (size, not pixels) to fill ``Sample.size`` and check
            each box lies inside its image; else only check that the files exist.

    Returns:
        The index (name "synthetic" when ``generator.json`` exists, else "cub"), no val split.

    Raises:
        DataError: The first defect found (file and line), with a count of the others.
    """
    return index_or_raise(scan_cub(root, read_headers=read_headers))


def scan_cub(root: Path | str, read_headers: bool = True, decode: bool = False) -> ScanResult:
    """Validate a CUB-layout folder, collecting every defect.

    Args:
        root: The dataset folder.
        read_headers: See :func:`load_cub`.
        decode: Also decode every image's pixels (finds truncated files; implies header reads).

    Returns:
        The index (``None`` if any defect), the defect lines, and the PIL mode of every image read.
    """
    root = Path(root)
    defects = Defects()
    if not root.is_dir():
        defects.add(root, "not a folder" if root.exists() else "no such folder")
        return ScanResult(None, defects.lines)
    raw: dict[str, bytes] = {}
    rows: dict[str, list[tuple[int, list]] | None] = {}
    skipped: dict[str, set] = {name: set() for name in INDEX_FILES}  # ids of malformed lines
    for name in INDEX_FILES:
        read = read_text(root / name, defects)
        if read is None:
            rows[name] = None
            continue
        raw[name], content = read
        spec, types = _SPECS[name]
        rows[name] = parse_rows(root / name, content, defects, spec, types, skipped=skipped[name])

    classes = _unique(root / "classes.txt", rows["classes.txt"], defects, "class id")
    images = _unique(root / "images.txt", rows["images.txt"], defects, "image id")
    labels = _unique(root / "image_class_labels.txt", rows["image_class_labels.txt"], defects, "image id")
    flags = _unique(root / "train_test_split.txt", rows["train_test_split.txt"], defects, "image id")
    boxes = _boxes(root / "bounding_boxes.txt", rows["bounding_boxes.txt"], defects)
    _check_relpaths_unique(root / "images.txt", images, defects)
    _check_ids_agree(root, images, labels, flags, boxes, skipped, defects)
    if classes is not None and labels is not None:
        for image_id, (class_id, line) in labels.items():
            if class_id not in classes:
                defects.add(root / "image_class_labels.txt",
                            f"class id {class_id} of image id {image_id} is not in classes.txt", line)
    if flags is not None:
        for image_id, (flag, line) in flags.items():
            if flag not in (0, 1):
                defects.add(root / "train_test_split.txt",
                            f"is_train must be 1 (train) or 0 (test), got {flag}", line)

    meta = _generator_meta(root, raw, defects)
    sizes, modes = _check_images(root, images, boxes, defects, read_headers or decode, decode)
    if classes is not None and labels is not None:
        used = {class_id for class_id, _ in labels.values()}
        for class_id, (name, line) in classes.items():
            if class_id not in used:
                defects.add(root / "classes.txt", f"class {class_id} {name!r} has no images", line)
    if defects or None in (classes, images, labels, flags, boxes):
        return ScanResult(None, defects.lines, modes)

    rank = {class_id: label for label, class_id in enumerate(sorted(classes))}
    images_dir = root.absolute() / "images"
    train: list[Sample] = []
    test: list[Sample] = []
    for image_id, (rel, _) in sorted(images.items(), key=lambda item: item[1][1]):  # file order
        sample = Sample(
            image_id=rel,
            path=images_dir / rel,
            label=rank[labels[image_id][0]],
            boxes=tuple(box for box, _ in boxes[image_id]),
            size=sizes.get(image_id),
        )
        (train if flags[image_id][0] == 1 else test).append(sample)
    parts = [(name, raw[name]) for name in INDEX_FILES]
    if GENERATOR_FILE in raw:
        parts.append((GENERATOR_FILE, raw[GENERATOR_FILE]))
    index = DatasetIndex(
        name="synthetic" if meta is not None else "cub",
        root=root.absolute(),
        classes=tuple(classes[class_id][0] for class_id in sorted(classes)),
        train=tuple(train),
        test=tuple(test),
        fingerprint=fingerprint(parts),
        meta=meta or {},
    )
    return ScanResult(index, [], modes)


def _unique(path: Path, rows: list[tuple[int, list]] | None, defects: Defects,
            key_name: str) -> dict[int, tuple[object, int]] | None:
    """``{key: (value, line)}`` from two-column rows; a repeated key is a defect (first line wins)."""
    if rows is None:
        return None
    table: dict[int, tuple[object, int]] = {}
    for line, (key, value) in rows:
        if key in table:
            defects.add(path, f"duplicate {key_name} {key} (first on line {table[key][1]})", line)
            continue
        table[key] = (value, line)
    return table


def _boxes(path: Path, rows: list[tuple[int, list]] | None,
           defects: Defects) -> dict[int, list[tuple[Box, int]]] | None:
    """``{image id: [(x0, y0, x1, y1), line]...}``; several lines per id are several boxes."""
    if rows is None:
        return None
    table: dict[int, list[tuple[Box, int]]] = {}
    for line, (image_id, x, y, w, h) in rows:
        entries = table.setdefault(image_id, [])  # a rejected box still counts as the id's line
        if w <= 0 or h <= 0:
            defects.add(path, f"box width and height must be > 0, got w={w:g} h={h:g}", line)
            continue
        entries.append(((x, y, x + w, y + h), line))
    return table


def _check_relpaths_unique(path: Path, images: dict | None, defects: Defects) -> None:
    if images is None:
        return
    seen: dict[str, int] = {}
    for rel, line in sorted(images.values(), key=lambda v: v[1]):
        if rel in seen:
            defects.add(path, f"image {rel!r} listed twice (first on line {seen[rel]})", line)
        seen.setdefault(rel, line)


def _check_ids_agree(root: Path, images: dict | None, labels: dict | None, flags: dict | None,
                     boxes: dict | None, skipped: dict[str, set], defects: Defects) -> None:
    """Every image id of images.txt has a label, a split flag and a box, and no file has extra ids.

    Ids of lines already reported as malformed (``skipped``) are not reported again.
    """
    if images is None:
        return
    others = (("image_class_labels.txt", labels), ("train_test_split.txt", flags),
              ("bounding_boxes.txt", boxes))
    for name, table in others:
        if table is None:
            continue
        for image_id, (_, line) in sorted(images.items(), key=lambda item: item[1][1]):
            if image_id not in table and image_id not in skipped[name]:
                defects.add(root / name, f"no line for image id {image_id} (images.txt:{line})")
        for image_id, entry in table.items():
            if image_id not in images and image_id not in skipped["images.txt"]:
                if name == "bounding_boxes.txt":  # a list of (box, line); empty if every box was bad
                    line = entry[0][1] if entry else None
                else:
                    line = entry[1]
                defects.add(root / name, f"image id {image_id} is not in images.txt", line)


def _generator_meta(root: Path, raw: dict[str, bytes], defects: Defects) -> dict | None:
    """The parsed ``generator.json`` (synthetic benchmark), or ``None`` when absent."""
    read = read_text(root / GENERATOR_FILE, defects, required=False)
    if read is None:
        return None
    raw[GENERATOR_FILE] = read[0]
    try:
        meta = json.loads(read[0].decode("utf-8-sig"))
    except json.JSONDecodeError as exc:
        defects.add(root / GENERATOR_FILE, f"invalid JSON: {exc.msg}", exc.lineno)
        return None
    if not isinstance(meta, dict):
        defects.add(root / GENERATOR_FILE, f"expected a JSON object, got {type(meta).__name__}")
        return None
    return meta


def _check_images(root: Path, images: dict | None, boxes: dict | None, defects: Defects,
                  read_headers: bool, decode: bool) -> tuple[dict[int, tuple[int, int]], dict[str, str]]:
    """Check every image path (safe, present, readable) and, with sizes, every box against it.

    Returns:
        ``{image id: (W, H)}`` and ``{relpath: PIL mode}`` for the headers read.
    """
    sizes: dict[int, tuple[int, int]] = {}
    modes: dict[str, str] = {}
    if images is None:
        return sizes, modes
    images_txt = root / "images.txt"
    images_dir = root / "images"
    guard = PathGuard(images_dir, root)
    for image_id, (rel, line) in sorted(images.items(), key=lambda item: item[1][1]):
        problem = guard.problem(rel)
        if problem is not None:
            defects.add(images_txt, problem, line)
            continue
        path = images_dir / rel
        if read_headers:
            info, reason = probe_image(path, decode)
            if info is None:
                defects.add(images_txt, f"{reason}: images/{rel}", line)
                continue
            sizes[image_id] = info[:2]
            modes[rel] = info[2]
        elif not path.is_file():
            defects.add(images_txt, f"image file does not exist: images/{rel}", line)
    if boxes is not None:
        for image_id, entries in boxes.items():
            for box, line in entries:
                problem = box_problem(box, sizes.get(image_id))
                if problem is not None:
                    defects.add(root / "bounding_boxes.txt", problem, line)
    return sizes, modes
