"""The pretraining set: a labelled image distribution that plays ImageNet's part for the reduced backbones.

It is not the benchmark and shares nothing with it (docs/synthetic.md, "The pretraining set"):

* **classes** are (shape, texture) pairs, ``len(SHAPES) * len(TEXTURES)`` = 60 of them, each with a hue
  family for the object's first colour (:func:`class_hue`), as ImageNet classes have shapes, textures
  and typical colours; the benchmark's classes are hues of a small part. No class definition, colour
  table or constant of :mod:`kdcicam.data.synthetic` is imported here;
* **colours**: the first colour's hue within its class's family, its saturation and value, and the
  second (texture) colour are drawn per image;
* **backgrounds** are drawn per image from a generic family (a tinted colour field, stripes of random
  orientation and frequency, an illumination gradient, pixel noise), independent of the class;
* **random streams**: image ``k`` of class ``c`` is drawn from ``SeedSequence([STREAM_TAG, seed, c, k])``.
  The benchmark draws from ``SeedSequence([seed, c, k])``: a different entropy length and a leading tag,
  so no stream of one is a stream of the other, for any seeds.

Labels only, no boxes (as ImageNet classification). Images are generated in memory as uint8 arrays.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from kdcicam.core.errors import ConfigError

GENERATOR_VERSION = "1.1"  # bump whenever the pixels drawn for a given config change
STREAM_TAG = 0x50524554  # "PRET": leads every SeedSequence of this set (the benchmark's have no tag)

SHAPES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "star", "cross", "crescent")
HUE_FAMILIES = 10  # the first colour's hue lies within HUE_JITTER of one of 10 evenly spaced hues
HUE_JITTER = 0.04
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "dots", "rings", "radial", "ramp", "grid",
                             "halves", "speckle")


@dataclass(frozen=True)
class PretrainSetConfig:
    """Size and seed of the pretraining set (classes are fixed: every (shape, texture) pair)."""

    per_class: int = 100  # images per class (train + val)
    val_per_class: int = 10  # of which held out for validation (the last indices)
    size: int = 96  # image side in pixels (square)
    seed: int = 0  # >= 0

    def validate(self) -> PretrainSetConfig:
        """Check ranges; raise a one-line ConfigError naming the option. Returns ``self``."""
        if self.per_class < 2:
            raise ConfigError(f"pretrain.per_class = {self.per_class}: must be >= 2")
        if not 1 <= self.val_per_class < self.per_class:
            raise ConfigError(f"pretrain.val_per_class = {self.val_per_class}: must be in [1, per_class)")
        if self.size < 32:
            raise ConfigError(f"pretrain.size = {self.size}: must be >= 32")
        if self.seed < 0:
            raise ConfigError(f"pretrain.seed = {self.seed}: must be >= 0")
        return self

    @property
    def classes(self) -> int:
        """Number of classes: every (shape, texture) pair."""
        return len(SHAPES) * len(TEXTURES)


def class_name(label: int) -> str:
    """``"<shape>_<texture>"`` of class ``label`` (shape = label // len(TEXTURES))."""
    return f"{SHAPES[label // len(TEXTURES)]}_{TEXTURES[label % len(TEXTURES)]}"


def class_hue(label: int) -> float:
    """Centre of the hue family of class ``label``'s first colour: ``((3 * shape + texture) % 10) / 10``."""
    return ((3 * (label // len(TEXTURES)) + label % len(TEXTURES)) % HUE_FAMILIES) / HUE_FAMILIES


def _random_rgb(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float],
                hue: float | None = None) -> np.ndarray:
    """A colour of the given saturation / value ranges, as (3,) RGB in [0, 1].

    The hue is uniform, or ``hue`` +- HUE_JITTER when given (always one draw, so streams stay aligned).
    """
    u, s, v = rng.random(), rng.uniform(*sat), rng.uniform(*val)
    h = u if hue is None else (hue + HUE_JITTER * (2 * u - 1)) % 1.0
    k = (np.array([5.0, 3.0, 1.0]) + 6.0 * h) % 6.0  # (3,) HSV -> RGB without colorsys
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the object-frame point (u, v) lies inside ``shape`` (unit size: the shape spans about [-1, 1]).

    Args:
        shape: one of SHAPES.
        u, v: (H, W) object-frame coordinates.

    Returns:
        (H, W) bool mask.
    """
    r = np.hypot(u, v)
    if shape == "ellipse":
        return r <= 1.0
    if shape == "rectangle":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.75)
    if shape == "triangle":  # apex at v = -1, base at v = 0.8
        return (v <= 0.8) & (np.abs(u) <= 0.5 * (v + 1.0))
    if shape == "star":  # five points, radius 0.45 .. 1.0
        return r <= 0.725 + 0.275 * np.cos(5.0 * np.arctan2(v, u))
    if shape == "cross":
        return ((np.abs(u) <= 0.33) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1.0))
    if shape == "crescent":
        return (r <= 1.0) & (np.hypot(u - 0.55, v) > 0.75)
    raise ValueError(f"unknown shape {shape!r}")


def texture_weight(texture: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Share of the second colour at each object-frame point, in [0, 1].

    Args:
        texture: one of TEXTURES.
        u, v: (H, W) object-frame coordinates (textures turn with the object).
        rng: the image's texture stream (speckle draws from it; the others use it for their scale).

    Returns:
        (H, W) float64.
    """
    freq = rng.uniform(2.5, 3.5)  # cycles per unit length
    if texture == "solid":
        return np.zeros_like(u)
    if texture == "stripes":
        return (np.sin(2 * math.pi * freq * u) > 0).astype(float)
    if texture == "checker":
        return ((np.floor(freq * u) + np.floor(freq * v)) % 2).astype(float)
    if texture == "dots":
        fu, fv = (freq * u) % 1.0 - 0.5, (freq * v) % 1.0 - 0.5
        return (fu * fu + fv * fv < 0.09).astype(float)
    if texture == "rings":
        return (np.sin(2 * math.pi * freq * np.hypot(u, v)) > 0).astype(float)
    if texture == "radial":
        return np.clip(np.hypot(u, v), 0.0, 1.0)
    if texture == "ramp":
        return np.clip(0.5 * (u + 1.0), 0.0, 1.0)
    if texture == "grid":
        return (((freq * u) % 1.0 < 0.22) | ((freq * v) % 1.0 < 0.22)).astype(float)
    if texture == "halves":
        return (u > 0).astype(float)
    if texture == "speckle":
        return (rng.random(u.shape) < 0.5).astype(float)
    raise ValueError(f"unknown texture {texture!r}")


def render_image(cfg: PretrainSetConfig, label: int, index: int) -> np.ndarray:
    """Image ``index`` of class ``label``, drawn from ``SeedSequence([STREAM_TAG, seed, label, index])``.

    Args:
        cfg: the set's config (validated).
        label: 0-based class.
        index: 0-based index within the class.

    Returns:
        (size, size, 3) uint8 RGB.
    """
    obj_rng, col_rng, tex_rng, bg_rng, noise_rng = (
        np.random.default_rng(s)
        for s in np.random.SeedSequence([STREAM_TAG, cfg.seed, label, index]).spawn(5))
    n = cfg.size
    X = (np.arange(n) + 0.5)[None, :]  # (1, n)
    Y = (np.arange(n) + 0.5)[:, None]  # (n, 1)

    # Background: independent of the class.
    tint = _random_rgb(bg_rng, (0.1, 0.6), (0.35, 0.85))  # (3,)
    angle, freq = bg_rng.uniform(0, math.pi), bg_rng.uniform(1.5, 8.0)
    amplitude, phase = bg_rng.uniform(0.0, 0.35), bg_rng.uniform(0, 2 * math.pi)
    t = (X * math.cos(angle) + Y * math.sin(angle)) * (2 * math.pi * freq / n) + phase  # (n, n)
    img = (1.0 + amplitude * np.sin(t))[..., None] * tint  # (n, n, 3)

    # Object: class = (shape, texture); pose, size and colours are free.
    shape, texture = SHAPES[label // len(TEXTURES)], TEXTURES[label % len(TEXTURES)]
    half = n * obj_rng.uniform(0.18, 0.42)  # half extent along u, pixels
    aspect = obj_rng.uniform(0.6, 1.0)
    theta = obj_rng.uniform(0, 2 * math.pi)
    cx, cy = (obj_rng.uniform(0.9 * half, n - 0.9 * half) for _ in range(2))
    c, s = math.cos(theta), math.sin(theta)
    dx, dy = X - cx, Y - cy  # (1, n), (n, 1)
    u = (dx * c + dy * s) / half  # (n, n)
    v = (-dx * s + dy * c) / (half * aspect)  # (n, n)
    mask = shape_mask(shape, u, v)  # (n, n)
    first = _random_rgb(col_rng, (0.5, 1.0), (0.5, 1.0), hue=class_hue(label))  # (3,) the class's hue family
    second = _random_rgb(col_rng, (0.3, 1.0), (0.4, 1.0))
    if float(np.abs(first - second).sum()) < 0.6:  # keep the texture visible
        second = 1.0 - first
    w = texture_weight(texture, u, v, tex_rng)[..., None]  # (n, n, 1)
    img = np.where(mask[..., None], (1.0 - w) * first + w * second, img)  # (n, n, 3)

    # Nuisance: illumination gradient and pixel noise.
    gain, light = bg_rng.uniform(0.0, 0.3), bg_rng.uniform(0, 2 * math.pi)
    img = img * (1.0 + gain * ((X - n / 2) * math.cos(light) + (Y - n / 2) * math.sin(light)) / n)[..., None]
    img = img + noise_rng.normal(0.0, 0.03, img.shape)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def generate_split(cfg: PretrainSetConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image of one split, in (class, index) order.

    Args:
        cfg: the set's config.
        split: "train" (the first ``per_class - val_per_class`` indices) or "val" (the rest).

    Returns:
        images (N, size, size, 3) uint8 and labels (N,) int64.
    """
    cfg.validate()
    n_train = cfg.per_class - cfg.val_per_class
    indices = range(n_train) if split == "train" else range(n_train, cfg.per_class)
    images = [render_image(cfg, c, k) for c in range(cfg.classes) for k in indices]
    labels = np.repeat(np.arange(cfg.classes, dtype=np.int64), len(indices))
    return np.stack(images), labels


def fingerprint(cfg: PretrainSetConfig) -> str:
    """A short hash naming the set: generator version and config (the pixels are a function of both)."""
    text = f"{GENERATOR_VERSION}|{cfg.per_class}|{cfg.val_per_class}|{cfg.size}|{cfg.seed}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]
