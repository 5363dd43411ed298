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
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import io
import json
import math
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kdcicam.core.config import SynthConfig, to_dict
from kdcicam.core.errors import DataError
from kdcicam.data.base import Box
from kdcicam.data.mechanism_files import (
    CONTEXT_SWAP_DIR,
    MECHANISM_FILE,
    REGIONS_DIR,
    mechanism_line,
    region_labels,
)

# bump whenever the bytes written for a given config change (1.1: masks; 1.2: part / body masks and the
# context-swapped copy of the test split, kdcicam/data/mechanism_files.py)
GENERATOR_VERSION = "1.2"

PART_SHAPES: tuple[str, ...] = ("disk", "square", "diamond")  # class c's part shape: c % 3
LAYOUT_FILES: tuple[str, ...] = (
    "images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt",
    "classes.txt", "generator.json", "latents.csv", "masks.txt", MECHANISM_FILE,
)

# Fixed appearance constants. They define what the benchmark looks like; none is a knob, and none
# was chosen to favour a method (docs/synthetic.md).
_BODY_GRAY = 0.55  # the body's shared neutral colour (all classes), before the class tint
_BODY_SHADE = 0.3  # body darkens by this fraction from its centre to its rim (a 3-D look)
_PART_OFFSET = 0.85  # part centre on the long axis, as a fraction of the semi-major axis
_CLASS_SAT, _CLASS_VAL = 0.85, 0.9  # class colours: hue c / classes, saturated
_CONTEXT_SAT, _CONTEXT_VAL = 0.4, 0.6  # context tints: muted
_GOLDEN = 0.6180339887498949  # context tint hues: golden-ratio sequence (well spread for any K)
_STRIPE_FREQS = (3.0, 4.5, 6.5)  # cycles per nominal side; context c uses c % 3
_STRIPE_AMPLITUDE = 0.3  # stripes modulate the tint by ±30 %
_PLACEMENT_MARGIN = 0.5  # pixels kept free between the object's analytic box and the border

_LATENT_COLUMNS: tuple[str, ...] = (
    "image_id", "path", "label", "context", "preferred", "is_train", "is_grayscale", "width",
    "height", "x0", "y0", "x1", "y1", "body_x0", "body_y0", "body_x1", "body_y1", "part_x0",
    "part_y0", "part_x1", "part_y1", "center_x", "center_y", "semi_major", "semi_minor",
    "angle_deg", "part_shape", "part_end", "stripe_angle_deg", "stripe_freq", "stripe_phase",
    "context_brightness", "body_brightness", "part_brightness", "light_gain", "light_angle_deg",
)


# --------------------------------------------------------------------------- styles

@dataclass(frozen=True)
class ClassStyle:
    """What class ``c`` looks like: its name, part colour and part shape."""

    name: str  # e.g. "Hue036_Square"
    rgb: tuple[float, float, float]  # part colour in [0, 1]
    shape: str  # one of PART_SHAPES


@dataclass(frozen=True)
class ContextStyle:
    """What context ``c`` looks like (class ``c``'s preferred background)."""

    rgb: tuple[float, float, float]  # tint of the colour field in [0, 1]
    angle: float  # stripe orientation in radians, in [0, pi)
    freq: float  # stripe frequency in cycles per nominal image side


@functools.lru_cache(maxsize=8)  # pure and immutable: memoised, called once per image
def class_styles(classes: int) -> tuple[ClassStyle, ...]:
    """Part colour (hue ``c / classes``) and shape (``c % 3``) of every class.

    Args:
        classes: number of classes K.

    Returns:
        K styles; index = 0-based label.
    """
    styles = []
    for c in range(classes):
        hue = c / classes
        shape = PART_SHAPES[c % len(PART_SHAPES)]
        rgb = colorsys.hsv_to_rgb(hue, _CLASS_SAT, _CLASS_VAL)
        styles.append(ClassStyle(f"Hue{round(360 * hue):03d}_{shape.capitalize()}", rgb, shape))
    return tuple(styles)


@functools.lru_cache(maxsize=8)
def context_styles(classes: int) -> tuple[ContextStyle, ...]:
    """Tint, stripe orientation (``pi c / K``) and frequency of every context.

    Args:
        classes: number of classes K (= number of contexts).

    Returns:
        K styles; context ``c`` is class ``c``'s preferred one.
    """
    styles = []
    for c in range(classes):
        rgb = colorsys.hsv_to_rgb((0.137 + c * _GOLDEN) % 1.0, _CONTEXT_SAT, _CONTEXT_VAL)
        styles.append(ContextStyle(rgb, math.pi * c / classes, _STRIPE_FREQS[c % len(_STRIPE_FREQS)]))
    return tuple(styles)


def body_colour(cfg: SynthConfig, label: int) -> np.ndarray:
    """The body colour of class ``label`` before brightness jitter and shading.

    ``(1 - e) * gray + e * class_rgb`` with ``e = cfg.body_class_evidence``: at ``e = 0`` every
    class has the same body (no class evidence outside the part).

    Args:
        cfg: generator config.
        label: 0-based class.

    Returns:
        (3,) float64 RGB in [0, 1].
    """
    part = np.asarray(class_styles(cfg.classes)[label].rgb)  # (3,)
    e = cfg.body_class_evidence
    return (1.0 - e) * _BODY_GRAY + e * part  # (3,)


# --------------------------------------------------------------------------- validation

def split_sizes(cfg: SynthConfig) -> tuple[int, int]:
    """Train and test images per class: ``per_class * test_fraction`` test (half rounds up), >= 1 each.

    Args:
        cfg: generator config.

    Returns:
        ``(n_train, n_test)`` per class; the last ``n_test`` indices of each class are test.
    """
    n_test = min(max(math.floor(cfg.per_class * cfg.test_fraction + 0.5), 1), cfg.per_class - 1)
    return cfg.per_class - n_test, n_test


# --------------------------------------------------------------------------- latents

@dataclass(frozen=True)
class Latents:
    """Every random variable of one image (the causal variables analyses can condition on)."""

    label: int  # Y, 0-based class
    index: int  # 0-based index of the image within its class
    is_train: bool
    context: int  # C, 0-based; C == Y means the class's preferred context
    grayscale: bool  # written as a single-channel JPEG
    width: int
    height: int
    center_x: float  # body centre, pixels
    center_y: float
    semi_major: float  # body semi-axes a >= b, pixels
    semi_minor: float
    angle: float  # body long-axis orientation, radians
    part_end: int  # +1 or -1: which end of the long axis carries the part
    stripe_angle: float  # radians (context's orientation + jitter)
    stripe_freq: float  # cycles per nominal side (context's frequency * jitter)
    stripe_phase: float  # radians
    context_brightness: float
    body_brightness: float
    part_brightness: float
    light_gain: float  # strength of the linear illumination gradient
    light_angle: float  # its direction, radians
    noise_seed: int  # seeds the pixel-noise generator

    @property
    def preferred(self) -> bool:
        """Whether the image shows its class's preferred context."""
        return self.context == self.label


def sample_latents(cfg: SynthConfig, label: int, index: int) -> Latents:
    """Draw the latent variables of image ``index`` of class ``label``.

    Each factor has its own child stream of ``SeedSequence([seed, label, index])``, so changing the
    context correlation changes only contexts (poses, sizes and noise stay the same), and an image
    does not depend on how many other images are generated.

    Args:
        cfg: generator config (validated).
        label: 0-based class.
        index: 0-based index within the class (the last ``n_test`` indices are test images).

    Returns:
        The image's latents.
    """
    n_train, _ = split_sizes(cfg)
    is_train = index < n_train
    ctx_rng, size_rng, obj_rng, bg_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([cfg.seed, label, index]).spawn(5))

    # Y -> C: preferred context with probability corr, else uniform over all K contexts.
    corr = cfg.context_correlation if is_train else cfg.test_context_correlation
    keep, other = ctx_rng.random(), int(ctx_rng.integers(cfg.classes))  # always both: fixed stream
    context = label if keep < corr else other

    jitter = math.log(cfg.side_jitter)
    width, height = (int(round(cfg.size * math.exp(s))) for s in size_rng.uniform(-jitter, jitter, 2))
    grayscale = bool(size_rng.random() < cfg.grayscale_fraction)

    short_side = min(width, height)
    a = 0.5 * short_side * obj_rng.uniform(*cfg.body_scale)
    b = a * obj_rng.uniform(*cfg.body_aspect)
    angle = obj_rng.uniform(0.0, math.pi)
    part_end = 1 if obj_rng.random() < 0.5 else -1
    shape = class_styles(cfg.classes)[label].shape
    x_lo, x_hi, y_lo, y_hi = _object_extent(a, b, angle, part_end, cfg.part_scale * a, shape)
    m = _PLACEMENT_MARGIN
    center_x = _uniform_or_mid(obj_rng, m - x_lo, width - m - x_hi)
    center_y = _uniform_or_mid(obj_rng, m - y_lo, height - m - y_hi)
    body_brightness = obj_rng.uniform(0.85, 1.15)
    part_brightness = obj_rng.uniform(0.9, 1.1)

    style = context_styles(cfg.classes)[context]
    spacing = math.pi / cfg.classes  # orientation jitter stays well below the gap between contexts
    stripe_angle = style.angle + bg_rng.uniform(-0.25, 0.25) * spacing
    stripe_freq = style.freq * bg_rng.uniform(0.93, 1.07)
    stripe_phase = bg_rng.uniform(0.0, 2 * math.pi)
    context_brightness = bg_rng.uniform(0.9, 1.1)
    light_gain = bg_rng.uniform(0.0, 0.2)
    light_angle = bg_rng.uniform(0.0, 2 * math.pi)

    return Latents(
        label=label, index=index, is_train=is_train, context=context, grayscale=grayscale,
        width=width, height=height, center_x=center_x, center_y=center_y, semi_major=a,
        semi_minor=b, angle=angle, part_end=part_end, stripe_angle=stripe_angle,
        stripe_freq=stripe_freq, stripe_phase=stripe_phase, context_brightness=context_brightness,
        body_brightness=body_brightness, part_brightness=part_brightness, light_gain=light_gain,
        light_angle=light_angle, noise_seed=int(noise_rng.integers(2**63 - 1)),
    )


def _uniform_or_mid(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A uniform draw in [lo, hi]; the midpoint if the interval is empty (always one draw)."""
    u = rng.random()
    return lo + u * (hi - lo) if hi > lo else 0.5 * (lo + hi)


def swap_context(cfg: SynthConfig, label: int, index: int, context: int) -> int:
    """The context of image (``label``, ``index``)'s context-swapped copy: another class's context.

    Drawn uniformly from the contexts that are neither the class's preferred one (``label``) nor the
    image's own, from the sixth child stream of ``SeedSequence([seed, label, index])`` (the first five
    draw the image, so the images do not change). With two classes and a non-preferred context no
    such context exists, and the copy keeps its own.

    Args:
        cfg: generator config (validated).
        label: 0-based class.
        index: 0-based index within the class.
        context: the image's own 0-based context.

    Returns:
        The 0-based context the copy is drawn on; never ``label``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, label, index], spawn_key=(5,)))
    others = [c for c in range(cfg.classes) if c not in (label, context)]
    return others[int(rng.integers(len(others)))] if others else context


def with_context(cfg: SynthConfig, lat: Latents, context: int) -> Latents:
    """The latents of the same image drawn on ``context``: the same object, noise, lighting and jitter.

    The stripe orientation and frequency keep the image's jitter around the new context's values;
    phase and brightness stay, so the object's pixels are rendered identically.
    """
    styles = context_styles(cfg.classes)
    old, new = styles[lat.context], styles[context]
    return dataclasses.replace(lat, context=context, stripe_angle=lat.stripe_angle - old.angle + new.angle,
                               stripe_freq=lat.stripe_freq / old.freq * new.freq)


def _object_extent(a: float, b: float, angle: float, end: int, r: float,
                   shape: str) -> tuple[float, float, float, float]:
    """Analytic box of body ∪ part relative to the body centre: (x_lo, x_hi, y_lo, y_hi)."""
    c, s = math.cos(angle), math.sin(angle)
    ex = math.sqrt((a * c) ** 2 + (b * s) ** 2)  # rotated ellipse half-extents
    ey = math.sqrt((a * s) ** 2 + (b * c) ** 2)
    px, py = end * _PART_OFFSET * a * c, end * _PART_OFFSET * a * s  # part centre
    if shape == "disk":
        rx = ry = r
    elif shape == "square":
        rx = ry = _square_half_side(r) * (abs(c) + abs(s))
    else:
        rx = ry = _diamond_half_diagonal(r) * max(abs(c), abs(s))
    return min(-ex, px - rx), max(ex, px + rx), min(-ey, py - ry), max(ey, py + ry)


def _square_half_side(r: float) -> float:
    """Half side of the square with the area of a disk of radius r (shape is not a size cue)."""
    return r * math.sqrt(math.pi) / 2


def _diamond_half_diagonal(r: float) -> float:
    """Half diagonal of the diamond with the area of a disk of radius r."""
    return r * math.sqrt(math.pi / 2)


# --------------------------------------------------------------------------- rendering

@dataclass(frozen=True)
class Rendering:
    """One rendered image and its object masks."""

    pixels: np.ndarray  # (H, W, 3) uint8 RGB, or (H, W) uint8 for a grayscale image
    body: np.ndarray  # (H, W) bool, the whole body (including what the part covers)
    part: np.ndarray  # (H, W) bool

    @property
    def object(self) -> np.ndarray:
        """(H, W) bool: body ∪ part, the pixels the GT box is tight around."""
        return self.body | self.part


def render(cfg: SynthConfig, lat: Latents) -> Rendering:
    """Draw the image described by ``lat`` (vectorised; no per-pixel Python loop).

    A pixel (row i, column j) covers [j, j+1) x [i, i+1) and belongs to a shape when its centre
    (j + 0.5, i + 0.5) does.

    Args:
        cfg: generator config (validated).
        lat: the image's latents.

    Returns:
        Pixels and the body / part masks.
    """
    W, H = lat.width, lat.height
    X = (np.arange(W) + 0.5)[None, :]  # (1, W)
    Y = (np.arange(H) + 0.5)[:, None]  # (H, 1)

    # Object frame: u along the long axis, v across it.
    c, s = math.cos(lat.angle), math.sin(lat.angle)
    dx, dy = X - lat.center_x, Y - lat.center_y  # (1, W), (H, 1)
    u = dx * c + dy * s  # (H, W)
    v = -dx * s + dy * c  # (H, W)
    rho2 = (u / lat.semi_major) ** 2 + (v / lat.semi_minor) ** 2  # (H, W)
    body = rho2 <= 1.0  # (H, W)
    style = class_styles(cfg.classes)[lat.label]
    part = _part_mask(u - lat.part_end * _PART_OFFSET * lat.semi_major, v,
                      cfg.part_scale * lat.semi_major, style.shape)  # (H, W)

    # C -> background: tinted field with oriented stripes (frequency per nominal side).
    ctx = np.asarray(context_styles(cfg.classes)[lat.context].rgb) * lat.context_brightness  # (3,)
    t = (X * math.cos(lat.stripe_angle) + Y * math.sin(lat.stripe_angle)) \
        * (2 * math.pi * lat.stripe_freq / cfg.size) + lat.stripe_phase  # (H, W)
    img = (1.0 + _STRIPE_AMPLITUDE * np.sin(t))[..., None] * ctx  # (H, W, 3)

    # Y -> body tint (weak) and Y -> part (strong).
    shade = 1.0 - _BODY_SHADE * np.minimum(rho2, 1.0)  # (H, W)
    body_rgb = body_colour(cfg, lat.label) * lat.body_brightness  # (3,)
    img = np.where(body[..., None], shade[..., None] * body_rgb, img)  # (H, W, 3)
    part_rgb = np.asarray(style.rgb) * lat.part_brightness  # (3,)
    img = np.where(part[..., None], part_rgb, img)  # (H, W, 3)

    # Nuisance: a linear illumination gradient and pixel noise.
    light = 1.0 + lat.light_gain * ((X - W / 2) * math.cos(lat.light_angle)
                                    + (Y - H / 2) * math.sin(lat.light_angle)) / cfg.size  # (H, W)
    img = img * light[..., None]  # (H, W, 3)
    if cfg.noise > 0:
        img = img + np.random.default_rng(lat.noise_seed).normal(0.0, cfg.noise, img.shape)
    if lat.grayscale:
        img = img @ np.array([0.299, 0.587, 0.114])  # (H, W), ITU-R 601 luma (as PIL's "L")
    pixels = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return Rendering(pixels=pixels, body=body, part=part)


def _part_mask(du: np.ndarray, dv: np.ndarray, r: float, shape: str) -> np.ndarray:
    """(H, W) bool mask of an equal-area disk / square / diamond of 'radius' r at the origin."""
    if shape == "disk":
        return du ** 2 + dv ** 2 <= r ** 2
    if shape == "square":
        return np.maximum(np.abs(du), np.abs(dv)) <= _square_half_side(r)
    if shape == "diamond":
        return np.abs(du) + np.abs(dv) <= _diamond_half_diagonal(r)
    raise ValueError(f"unknown part shape {shape!r}")


def mask_box(mask: np.ndarray) -> Box:
    """Tight box of a non-empty mask in continuous pixel coordinates.

    Args:
        mask: (H, W) bool.

    Returns:
        ``(x0, y0, x1, y1)`` with x0 = first column, x1 = last column + 1 (likewise rows).
    """
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        raise ValueError("mask_box: empty mask")
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of (H, W, 3) RGB or (H, W) grayscale uint8 pixels (deterministic settings)."""
    buf = io.BytesIO()
    image = Image.fromarray(pixels)
    if image.mode == "RGB":
        image.save(buf, format="JPEG", quality=quality, subsampling="4:2:0", optimize=False)
    else:
        image.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


# --------------------------------------------------------------------------- writing

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
            mechanism.append(_write_mechanism(root, cfg, lat, rendering, rel))
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


def _write_mechanism(root: Path, cfg: SynthConfig, lat: Latents, rendering: Rendering, rel: str) -> str:
    """Write one image's region mask (and, for a test image, its context-swapped copy); its mechanism line."""
    stem = rel[:-len(".jpg")]
    regions_rel = f"{REGIONS_DIR}/{stem}.png"
    (root / regions_rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(region_labels(rendering.body, rendering.part)).save(root / regions_rel)
    if lat.is_train:
        return mechanism_line(rel, regions_rel, lat.preferred, None, None)
    swapped = swap_context(cfg, lat.label, lat.index, lat.context)
    swap_rel = f"{CONTEXT_SWAP_DIR}/{rel}"
    (root / swap_rel).parent.mkdir(parents=True, exist_ok=True)
    pixels = render(cfg, with_context(cfg, lat, swapped)).pixels
    (root / swap_rel).write_bytes(encode_jpeg(pixels, cfg.jpeg_quality))
    return mechanism_line(rel, regions_rel, lat.preferred, swap_rel, swapped)


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
        "constants": {"body_gray": _BODY_GRAY, "body_shade": _BODY_SHADE,
                      "part_offset": _PART_OFFSET, "stripe_amplitude": _STRIPE_AMPLITUDE,
                      "stripe_freqs": list(_STRIPE_FREQS)},
    }
