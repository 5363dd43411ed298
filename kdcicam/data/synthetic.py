"""The embedded confounded-context benchmark, written in the CUB-200-2011 file layout.

Causal model of one image (docs/synthetic.md has the full story):

* class ``Y`` -> the **part**: a small, saturated, class-coloured shape at one end of the object
  (the strong, "discriminative" cue of the C-L dilemma);
* ``Y`` -> the **body tint**: the large body is shared by all classes and carries only weak class
  evidence (``body_class_evidence``), so a classifier prefers the part while the box covers both;
* ``Y`` -> context ``C``: with probability ``context_correlation`` (train) or
  ``test_context_correlation`` (test) ``C`` is the class's preferred context, otherwise uniform
  over all contexts (the "entangled context" confounder);
* ``C`` -> background: a tinted colour field with oriented stripes of a context-specific
  orientation and frequency;
* nuisance -> pose, size, aspect, position, image size, lighting, noise, grayscale.

The GT box depends only on the object: it is the tight box of the object's pixels (body ∪ part).
Every image is drawn from ``SeedSequence([seed, class, index])``, so generation is deterministic
and independent of the order (and the number) of images.

This module writes the dataset, its layout files and ``generator.json``; what an image looks like is
``synthetic_styles.py``, its geometry ``synthetic_geometry.py``, its random variables
``synthetic_latents.py``, its pixels ``synthetic_render.py``, its region mask and context-swapped copy
``synthetic_mechanism.py``.
"""

from __future__ import annotations

import json
import math
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kdcicam.core.config import SynthConfig, to_dict
from kdcicam.core.errors import DataError
from kdcicam.data.mechanism_files import MECHANISM_FILE
from kdcicam.data.synthetic_geometry import PART_OFFSET, mask_box
from kdcicam.data.synthetic_latents import Latents, sample_latents, split_sizes
from kdcicam.data.synthetic_mechanism import write_mechanism
from kdcicam.data.synthetic_render import Rendering, encode_jpeg, render
from kdcicam.data.synthetic_styles import (
    BODY_GRAY,
    BODY_SHADE,
    STRIPE_AMPLITUDE,
    STRIPE_FREQS,
    class_styles,
    context_styles,
)

# bump whenever the bytes written for a given config change (1.1: masks; 1.2: part / body masks and the
# context-swapped copy of the test split, kdcicam/data/mechanism_files.py)
GENERATOR_VERSION = "1.2"

LAYOUT_FILES: tuple[str, ...] = (
    "images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt",
    "classes.txt", "generator.json", "latents.csv", "masks.txt", MECHANISM_FILE,
)

_LATENT_COLUMNS: tuple[str, ...] = (
    "image_id", "path", "label", "context", "preferred", "is_train", "is_grayscale", "width",
    "height", "x0", "y0", "x1", "y1", "body_x0", "body_y0", "body_x1", "body_y1", "part_x0",
    "part_y0", "part_x1", "part_y1", "center_x", "center_y", "semi_major", "semi_minor",
    "angle_deg", "part_shape", "part_end", "stripe_angle_deg", "stripe_freq", "stripe_phase",
    "context_brightness", "body_brightness", "part_brightness", "light_gain", "light_angle_deg",
)


def class_dirs(classes: int) -> tuple[str, ...]:
    """CUB-style class folder names, e.g. ``001.Hue000_Disk``."""
    width = max(3, len(str(classes)))
    return tuple(f"{c + 1:0{width}d}.{st.name}" for c, st in enumerate(class_styles(classes)))


def generate(out: Path, cfg: SynthConfig, overwrite: bool = False) -> dict[str, Any]:
    """Write the benchmark into ``out`` in the CUB-200-2011 layout (plus generator.json, latents.csv).

    The folder is written under a temporary sibling name and moved into place at the end, so
    ``out`` never holds a half-written dataset. With ``overwrite`` an existing folder is replaced
    only if it is empty or was written by this generator (it holds ``generator.json``).

    Args:
        out: destination folder.
        cfg: generator config; validated here.
        overwrite: replace a non-empty ``out`` written by this generator.

    Returns:
        ``{"num_images", "num_classes", "num_train", "num_test", "root", "version"}``.
    """
    cfg.validate()
    out = Path(out).resolve()  # "." or "x/" still get a named sibling for the temporary folder
    _check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.partial"  # hidden sibling, same disk
    tmp.mkdir()
    try:
        counts = _write_all(tmp, cfg)
        _check_destination(out, overwrite)
        old = None
        if out.exists():  # empty, or written by this generator (_check_destination): moved aside whole
            old = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"num_images": counts[0] + counts[1], "num_classes": cfg.classes,
            "num_train": counts[0], "num_test": counts[1], "root": str(out),
            "version": GENERATOR_VERSION}


def _check_destination(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise DataError(f"{out}: folder is not empty (use --force to replace a generated benchmark)")
    if not (out / "generator.json").is_file():
        raise DataError(f"{out}: not empty and holds no generator.json; "
                        "refusing to replace a folder this generator did not write")


def _write_all(root: Path, cfg: SynthConfig) -> tuple[int, int]:
    """Render every image and write all layout files into ``root``; return (n_train, n_test)."""
    dirs = class_dirs(cfg.classes)
    styles = class_styles(cfg.classes)
    digits = max(4, len(str(cfg.per_class)))
    images, labels, split, boxes, latent_rows, masks, mechanism = [], [], [], [], [], [], []
    for label in range(cfg.classes):
        (root / "images" / dirs[label]).mkdir(parents=True)
        for index in range(cfg.per_class):
            image_id = label * cfg.per_class + index + 1  # CUB ids are 1-based
            rel = f"{dirs[label]}/{styles[label].name}_{index + 1:0{digits}d}.jpg"
            lat = sample_latents(cfg, label, index)
            rendering = render(cfg, lat)
            (root / "images" / rel).write_bytes(encode_jpeg(rendering.pixels, cfg.jpeg_quality))
            mask_rel = f"masks/{rel[:-len('.jpg')]}.png"  # the object mask, wsolevaluation's PNG layout
            (root / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rendering.object.astype(np.uint8) * 255).save(root / mask_rel)
            masks.append(f"{rel},{mask_rel},")
            mechanism.append(write_mechanism(root, cfg, lat, rendering, rel))
            box = mask_box(rendering.object)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {label + 1}")
            split.append(f"{image_id} {int(lat.is_train)}")
            boxes.append(f"{image_id} {box[0]:.1f} {box[1]:.1f} {box[2] - box[0]:.1f} "
                         f"{box[3] - box[1]:.1f}")
            latent_rows.append(_latent_row(image_id, rel, lat, rendering, styles[label].shape))

    _write_lines(root / "images.txt", images)
    _write_lines(root / "image_class_labels.txt", labels)
    _write_lines(root / "train_test_split.txt", split)
    _write_lines(root / "bounding_boxes.txt", boxes)
    _write_lines(root / "classes.txt", [f"{c + 1} {d}" for c, d in enumerate(dirs)])
    _write_lines(root / "latents.csv", [",".join(_LATENT_COLUMNS)] + latent_rows)
    _write_lines(root / "masks.txt", masks)  # <image_id>,<mask>,<ignore> (data/object_masks.py)
    _write_lines(root / MECHANISM_FILE, mechanism)  # data/mechanism_files.py
    n_train, n_test = split_sizes(cfg)
    meta = _generator_meta(cfg, dirs, n_train, n_test)
    (root / "generator.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return n_train * cfg.classes, n_test * cfg.classes


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def _latent_row(image_id: int, rel: str, lat: Latents, rendering: Rendering, shape: str) -> str:
    x0, y0, x1, y1 = mask_box(rendering.object)
    bx0, by0, bx1, by1 = mask_box(rendering.body)
    px0, py0, px1, py1 = mask_box(rendering.part)
    values: list[Any] = [
        image_id, rel, lat.label, lat.context, int(lat.preferred), int(lat.is_train),
        int(lat.grayscale), lat.width, lat.height, x0, y0, x1, y1, bx0, by0, bx1, by1,
        px0, py0, px1, py1, lat.center_x, lat.center_y, lat.semi_major, lat.semi_minor,
        math.degrees(lat.angle), shape, lat.part_end, math.degrees(lat.stripe_angle),
        lat.stripe_freq, lat.stripe_phase, lat.context_brightness, lat.body_brightness,
        lat.part_brightness, lat.light_gain, math.degrees(lat.light_angle),
    ]
    return ",".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in values)


def _generator_meta(cfg: SynthConfig, dirs: tuple[str, ...], n_train: int,
                    n_test: int) -> dict[str, Any]:
    """Everything needed to interpret (and regenerate) the folder; no timestamps (byte-determinism)."""
    return {
        "generator": "kdcicam.data.synthetic",
        "version": GENERATOR_VERSION,
        "config": to_dict(cfg),
        "num_classes": cfg.classes,
        "num_images": cfg.classes * cfg.per_class,
        "train_per_class": n_train,
        "test_per_class": n_test,
        "split_rule": "per class, image indices >= train_per_class are test images",
        "context_rule": ("with probability corr the context is the class's preferred one "
                         "(context c for class c), otherwise uniform over all contexts; "
                         "P(preferred) = corr + (1 - corr) / num_classes"),
        "box_convention": ("bounding_boxes.txt: x y w h; pixel (row i, col j) covers "
                           "[j, j+1) x [i, i+1); box = tight box of the object's pixels "
                           "(body ∪ part)"),
        "grayscale_images": "single-channel (mode L) JPEGs; see latents.csv is_grayscale",
        "latents_file": "latents.csv",
        "mechanism_file": (f"{MECHANISM_FILE}: <image_id>,<region mask>,<preferred>,<context-swapped copy>,"
                           "<its context>; region masks 0 background, 128 body, 255 part; copies of test images "
                           "only, never in images.txt"),
        "context_swap_rule": ("the copy's context is uniform over the contexts that are neither the class's "
                              "nor the image's own, from child stream 5 of SeedSequence([seed, class, index])"),
        "latents_columns": list(_LATENT_COLUMNS),
        "classes": [{"dir": d, "part_rgb": [round(x, 4) for x in st.rgb], "part_shape": st.shape}
                    for d, st in zip(dirs, class_styles(cfg.classes))],
        "contexts": [{"tint_rgb": [round(x, 4) for x in st.rgb],
                      "stripe_angle_deg": round(math.degrees(st.angle), 4),
                      "stripe_freq": st.freq}
                     for st in context_styles(cfg.classes)],
        "constants": {"body_gray": BODY_GRAY, "body_shade": BODY_SHADE,
                      "part_offset": PART_OFFSET, "stripe_amplitude": STRIPE_AMPLITUDE,
                      "stripe_freqs": list(STRIPE_FREQS)},
    }
