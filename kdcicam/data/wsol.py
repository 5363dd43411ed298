"""wsolevaluation metadata (clovaai/wsolevaluation): read it, and export any index into it.

Layout of a metadata folder, one sub-folder per split (``train``, ``test``; ``val`` optional)::

    <split>/image_ids.txt      <path>                        one image per line, in order
    <split>/class_labels.txt   <path>,<label>                0-based integer label
    <split>/image_sizes.txt    <path>,<w>,<h>                required for test
    <split>/localization.txt   <path>,<x0>,<y0>,<x1>,<y1>    several lines = several boxes;
                                                             required for test (every test
                                                             image needs a box)
    kdcicam.json               optional, written by :func:`export_wsol`: class names, image root

``<path>`` is relative to the image root and is the sample's image id. Boxes are already
``x0,y0,x1,y1`` (wsolevaluation's CUB files hold ``x, y, x + w, y + h`` of bounding_boxes.txt).
The wsolevaluation reader parses coordinates with ``int()``; the exporter writes integral values
as integers (all of CUB's and ILSVRC's are) and any fractional one as a decimal.
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
    format_number,
    index_or_raise,
    parse_rows,
    probe_image,
    read_image_info,
    read_text,
)
from kdcicam.data.base import Box, DatasetIndex, Sample

SPLITS = ("train", "val", "test")
META_FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt")
EXTRA_FILE = "kdcicam.json"


def load_wsol(metadata_dir: Path | str, image_root: Path | str | None = None,
              read_headers: bool = True) -> DatasetIndex:
    """Load and validate wsolevaluation metadata.

    Args:
        metadata_dir: Folder holding ``train/``, ``test/`` (and optionally ``val/``).
        image_root: Folder the image paths are relative to; default: ``image_root`` of
            ``kdcicam.json``.
        read_headers: Read every image header (finds files cut short, checks ``image_sizes.txt``,
            fills sizes the metadata lacks); ``False``: only check that each image file exists.

    Returns:
        The index, name "wsol", with the metadata's val split when it has one.

    Raises:
        DataError: The first defect found (file and line), with a count of the others.
    """
    return index_or_raise(scan_wsol(metadata_dir, image_root, read_headers=read_headers))


def scan_wsol(metadata_dir: Path | str, image_root: Path | str | None = None,
              read_headers: bool = True, decode: bool = False) -> ScanResult:
    """Validate a wsolevaluation metadata folder, collecting every defect (see :func:`load_wsol`)."""
    meta_dir = Path(metadata_dir)
    defects = Defects()
    if not meta_dir.is_dir():
        defects.add(meta_dir, "not a folder" if meta_dir.exists() else "no such folder")
        return ScanResult(None, defects.lines)
    raw: list[tuple[str, bytes]] = []  # fingerprinted: metadata files, class names (not paths)
    extra = _read_extra(meta_dir, defects)
    if "classes" in extra:
        raw.append(("classes", json.dumps(extra["classes"]).encode("utf-8")))
    if image_root is None and extra.get("image_root"):
        image_root = Path(extra["image_root"])
        if not image_root.is_absolute():
            image_root = meta_dir / image_root
    if image_root is None:
        defects.add(meta_dir, f"image root unknown: pass it (--image-root) or write {EXTRA_FILE}")
        return ScanResult(None, defects.lines)
    image_root = Path(image_root)
    if not image_root.is_dir():
        defects.add(image_root, "image root: no such folder")
        return ScanResult(None, defects.lines)

    guard = PathGuard(image_root, image_root)
    seen: dict[str, str] = {}  # image id -> "split/image_ids.txt:line" (ids are unique across splits)
    splits: dict[str, list[tuple[str, int, tuple[Box, ...], tuple[int, int] | None]]] = {}
    modes: dict[str, str] = {}
    for split in SPLITS:
        split_dir = meta_dir / split
        if not split_dir.is_dir():
            if split != "val":
                defects.add(split_dir, "missing split folder")
            continue
        splits[split] = _scan_split(split_dir, guard, raw, seen, modes, defects,
                                    read_headers or decode, decode)

    classes = extra.get("classes")
    labels = {label for rows in splits.values() for _, label, _, _ in rows}
    if classes is None:
        classes = [str(k) for k in range(max(labels) + 1)] if labels else []
    for label in sorted(labels):
        if label >= len(classes):
            defects.add(meta_dir / EXTRA_FILE, f"label {label} has no class name ({len(classes)} classes)")
    for label in range(len(classes)):
        if label not in labels:
            defects.add(meta_dir, f"class {label} ({classes[label]!r}) has no images in any split")
    if defects:
        return ScanResult(None, defects.lines, modes)
    images = image_root.absolute()
    built = {
        split: tuple(Sample(image_id=image_id, path=images / image_id, label=label, boxes=boxes,
                            size=size) for image_id, label, boxes, size in rows)
        for split, rows in splits.items()
    }
    index = DatasetIndex(
        name="wsol",
        root=meta_dir.absolute(),
        classes=tuple(str(name) for name in classes),
        train=built.get("train", ()),
        val=built.get("val", ()),
        test=built.get("test", ()),
        fingerprint=fingerprint(raw),
        meta={"image_root": str(images), **({"source": extra["source"]} if "source" in extra else {})},
    )
    return ScanResult(index, [], modes)


def _read_extra(meta_dir: Path, defects: Defects) -> dict:
    """The optional ``kdcicam.json`` (class names, image root, source), ``{}`` when absent/invalid."""
    path = meta_dir / EXTRA_FILE
    read = read_text(path, defects, required=False)
    if read is None:
        return {}
    try:
        extra = json.loads(read[0].decode("utf-8-sig"))
    except json.JSONDecodeError as exc:
        defects.add(path, f"invalid JSON: {exc.msg}", exc.lineno)
        return {}
    if not isinstance(extra, dict):
        defects.add(path, f"expected a JSON object, got {type(extra).__name__}")
        return {}
    classes = extra.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        defects.add(path, "'classes' must be a list of strings")
        extra.pop("classes")
    if not isinstance(extra.get("image_root", ""), str):
        defects.add(path, "'image_root' must be a string")
        extra.pop("image_root")
    return extra


def _scan_split(split_dir: Path, guard: PathGuard, raw: list[tuple[str, bytes]], seen: dict[str, str],
                modes: dict[str, str], defects: Defects, read_headers: bool,
                decode: bool) -> list[tuple[str, int, tuple[Box, ...], tuple[int, int] | None]]:
    """Parse and check one split folder; returns ``[(image id, label, boxes, size)...]`` in order."""
    split = split_dir.name
    needs_boxes = split == "test"  # evaluation split: every image needs its size and a box
    tables: dict[str, list[tuple[int, str]] | None] = {}
    for name in META_FILES:
        read = read_text(split_dir / name, defects,
                         required=name in ("image_ids.txt", "class_labels.txt") or needs_boxes)
        tables[name] = None if read is None else read[1]
        if read is not None:
            raw.append((f"{split}/{name}", read[0]))
    ids_path = split_dir / "image_ids.txt"
    order: dict[str, int] = {}
    for line, image_id in tables["image_ids.txt"] or []:
        if image_id in order:
            defects.add(ids_path, f"image {image_id!r} listed twice (first on line {order[image_id]})", line)
        else:
            if image_id in seen:  # still indexed below, so its other lines raise no knock-on reports
                defects.add(ids_path, f"image {image_id!r} is also in {seen[image_id]}", line)
            order[image_id] = line
            seen.setdefault(image_id, f"{split}/image_ids.txt:{line}")

    skipped: set = set()  # ids of malformed lines, not to be reported again as missing
    labels = _keyed(split_dir / "class_labels.txt", tables["class_labels.txt"], order, defects,
                    "path,label", (str, int), skipped)
    sizes = _keyed(split_dir / "image_sizes.txt", tables["image_sizes.txt"], order, defects,
                   "path,w,h", (str, int, int), skipped)
    boxes: dict[str, list[tuple[Box, int]]] = {}
    loc_path = split_dir / "localization.txt"
    if tables["localization.txt"] is not None:
        for line, (image_id, *coords) in parse_rows(loc_path, tables["localization.txt"], defects,
                                                    "path,x0,y0,x1,y1", (str, float, float, float, float),
                                                    sep=",", skipped=skipped):
            if image_id not in order:
                defects.add(loc_path, f"image {image_id!r} is not in image_ids.txt", line)
            else:
                boxes.setdefault(image_id, []).append((tuple(coords), line))

    out = []
    for image_id, line in order.items():
        label = labels.get(image_id)
        if label is None and tables["class_labels.txt"] is not None and image_id not in skipped:
            defects.add(split_dir / "class_labels.txt",
                        f"no label for image {image_id!r} (image_ids.txt:{line})")
        if label is not None and label[0][0] < 0:
            defects.add(split_dir / "class_labels.txt", f"label must be >= 0, got {label[0][0]}", label[1])
        size = None
        if image_id in sizes:
            (w, h), size_line = sizes[image_id]
            if w <= 0 or h <= 0:
                defects.add(split_dir / "image_sizes.txt", f"width and height must be > 0, got {w}x{h}",
                            size_line)
            size = (w, h)
        elif tables["image_sizes.txt"] is not None and image_id not in skipped:
            defects.add(split_dir / "image_sizes.txt",
                        f"no size for image {image_id!r} (image_ids.txt:{line})")
        if needs_boxes and image_id not in boxes and tables["localization.txt"] is not None \
                and image_id not in skipped:
            defects.add(loc_path, f"no box for image {image_id!r} (image_ids.txt:{line})")
        size = _check_file(image_id, guard, size, ids_path, line, split_dir, modes, defects,
                           read_headers, decode)
        for box, box_line in boxes.get(image_id, []):
            problem = box_problem(box, size)
            if problem is not None:
                defects.add(loc_path, problem, box_line)
        if label is not None:
            out.append((image_id, label[0][0], tuple(box for box, _ in boxes.get(image_id, [])), size))
    return out


def _keyed(path: Path, content: list[tuple[int, str]] | None, order: dict[str, int], defects: Defects,
           spec: str, types: tuple[type, ...], skipped: set) -> dict[str, tuple[list, int]]:
    """``{image id: ([values...], line)}`` of a ``path,...`` file; unknown or repeated ids are defects."""
    table: dict[str, tuple[list, int]] = {}
    if content is None:
        return table
    for line, (image_id, *values) in parse_rows(path, content, defects, spec, types, sep=",",
                                                skipped=skipped):
        if image_id not in order:
            defects.add(path, f"image {image_id!r} is not in image_ids.txt", line)
        elif image_id in table:
            defects.add(path, f"image {image_id!r} listed twice (first on line {table[image_id][1]})", line)
        else:
            table[image_id] = (values, line)
    return table


def _check_file(image_id: str, guard: PathGuard, size: tuple[int, int] | None, ids_path: Path, line: int,
                split_dir: Path, modes: dict[str, str], defects: Defects, read_headers: bool,
                decode: bool) -> tuple[int, int] | None:
    """Check one image path (safe, present, readable, size as listed); returns its best-known size."""
    problem = guard.problem(image_id)
    if problem is not None:
        defects.add(ids_path, problem, line)
        return size
    path = guard.base / image_id
    if not read_headers:
        if not path.is_file():
            defects.add(ids_path, f"image file does not exist: {path}", line)
        return size
    info, reason = probe_image(path, decode)
    if info is None:
        defects.add(ids_path, f"{reason}: {path}", line)
        return size
    modes[image_id] = info[2]
    if size is not None and size != info[:2]:
        defects.add(split_dir / "image_sizes.txt",
                    f"size {size[0]}x{size[1]} of {image_id!r} differs from the file's {info[0]}x{info[1]}")
    return info[:2]


def image_root_of(index: DatasetIndex) -> Path:
    """The folder every sample's image id is relative to (``path == root / image_id``).

    Raises:
        ValueError: Samples disagree (the index cannot be written as wsolevaluation metadata).
    """
    roots = set()
    for sample in (*index.train, *index.val, *index.test):
        rel = Path(sample.image_id).parts
        parts = Path(sample.path).parts
        if len(parts) <= len(rel) or parts[-len(rel):] != rel:
            raise ValueError(f"sample path {sample.path} does not end with its image id {sample.image_id!r}")
        roots.add(Path(*parts[:-len(rel)]))
    if len(roots) > 1:
        raise ValueError(f"samples lie under several image roots: {sorted(map(str, roots))[:3]}")
    return roots.pop() if roots else Path(index.root)


def export_wsol(index: DatasetIndex, out_dir: Path | str) -> Path:
    """Write an index as wsolevaluation metadata (``train/``, ``val/``, ``test/`` + ``kdcicam.json``).

    Sizes unknown to the index are read from the image headers. :func:`load_wsol` on ``out_dir``
    gives back the same classes and samples.

    Args:
        index: The dataset (val split included as ``val/``; an empty val writes empty files).
        out_dir: Destination folder (created; existing metadata files are overwritten).

    Returns:
        The image root the written paths are relative to (the evaluator's data root).
    """
    out_dir = Path(out_dir)
    image_root = image_root_of(index)
    for split in SPLITS:
        split_dir = out_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        ids, labels, sizes, locs = [], [], [], []
        for sample in index.split(split):
            width, height = sample.size or read_image_info(sample.path)[:2]
            ids.append(sample.image_id)
            labels.append(f"{sample.image_id},{sample.label}")
            sizes.append(f"{sample.image_id},{width},{height}")
            locs.extend(f"{sample.image_id}," + ",".join(format_number(v) for v in box)
                        for box in sample.boxes)
        for name, lines in zip(META_FILES, (ids, labels, sizes, locs)):
            (split_dir / name).write_text("".join(f"{text}\n" for text in lines), encoding="utf-8")
    extra = {
        "classes": list(index.classes),
        "image_root": str(image_root),
        "source": {"name": index.name, "fingerprint": index.fingerprint},
    }
    (out_dir / EXTRA_FILE).write_text(json.dumps(extra, indent=2) + "\n", encoding="utf-8")
    return image_root
