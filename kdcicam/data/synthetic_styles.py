"""What the embedded benchmark's classes and contexts look like: part colours and shapes, context tints
and stripes, the body colour, and the fixed appearance constants (docs/synthetic.md)."""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass

import numpy as np

from kdcicam.core.config import SynthConfig

PART_SHAPES: tuple[str, ...] = ("disk", "square", "diamond")  # class c's part shape: c % 3

# Fixed appearance constants. They define what the benchmark looks like; none is a knob, and none
# was chosen to favour a method (docs/synthetic.md).
BODY_GRAY = 0.55  # the body's shared neutral colour (all classes), before the class tint
BODY_SHADE = 0.3  # body darkens by this fraction from its centre to its rim (a 3-D look)
_CLASS_SAT, _CLASS_VAL = 0.85, 0.9  # class colours: hue c / classes, saturated
_CONTEXT_SAT, _CONTEXT_VAL = 0.4, 0.6  # context tints: muted
_GOLDEN = 0.6180339887498949  # context tint hues: golden-ratio sequence (well spread for any K)
STRIPE_FREQS = (3.0, 4.5, 6.5)  # cycles per nominal side; context c uses c % 3
STRIPE_AMPLITUDE = 0.3  # stripes modulate the tint by ±30 %


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
        styles.append(ContextStyle(rgb, math.pi * c / classes, STRIPE_FREQS[c % len(STRIPE_FREQS)]))
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
    return (1.0 - e) * BODY_GRAY + e * part  # (3,)
