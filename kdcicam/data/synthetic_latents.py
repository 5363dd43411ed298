"""The embedded benchmark's random variables: the train / test split sizes and the latents of one image,
drawn from ``SeedSequence([seed, class, index])`` (docs/synthetic.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kdcicam.core.config import SynthConfig
from kdcicam.data.synthetic_geometry import PLACEMENT_MARGIN, object_extent
from kdcicam.data.synthetic_styles import class_styles, context_styles


def split_sizes(cfg: SynthConfig) -> tuple[int, int]:
    """Train and test images per class: ``per_class * test_fraction`` test (half rounds up), >= 1 each.

    Args:
        cfg: generator config.

    Returns:
        ``(n_train, n_test)`` per class; the last ``n_test`` indices of each class are test.
    """
    n_test = min(max(math.floor(cfg.per_class * cfg.test_fraction + 0.5), 1), cfg.per_class - 1)
    return cfg.per_class - n_test, n_test


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
    x_lo, x_hi, y_lo, y_hi = object_extent(a, b, angle, part_end, cfg.part_scale * a, shape)
    m = PLACEMENT_MARGIN
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
