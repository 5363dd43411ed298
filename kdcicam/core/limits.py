"""Resource limits: values above them are refused with a one-line error before any work starts.

Each limit guards against an input that would hang or exhaust memory (a header declaring a
gigapixel image, ``train.epochs = 1e20``, ``--resamples 2e9``). The defaults cover every legitimate
use of the harness; a user with a real need raises one through its environment variable, e.g.
``KDCICAM_MAX_EPOCHS=50000``. ``kdcicam`` documents them in docs/bad-inputs.md ("Resource limits").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kdcicam.core.errors import ConfigError


@dataclass(frozen=True)
class Limit:
    """One limit: its environment variable, its default and what it bounds."""

    env: str
    default: int
    what: str


LIMITS: dict[str, Limit] = {
    # PIL warns above 89,478,485 pixels and refuses above twice that; the largest CUB / ILSVRC images
    # are far below 40 million (e.g. 5000 x 8000).
    "image_pixels": Limit("KDCICAM_MAX_IMAGE_PIXELS", 40_000_000, "pixels of one image (width x height)"),
    "epochs": Limit("KDCICAM_MAX_EPOCHS", 10_000, "training epochs"),
    "resamples": Limit("KDCICAM_MAX_RESAMPLES", 1_000_000, "bootstrap resamples"),
    "image_side": Limit("KDCICAM_MAX_IMAGE_SIDE", 4096, "side of a generated, cropped or CAM image in pixels"),
    "images": Limit("KDCICAM_MAX_IMAGES", 10_000_000, "images of a generated dataset"),
}


def limit(name: str) -> int:
    """The value of limit ``name``: its environment variable when set, else the default.

    Raises:
        ConfigError: the environment variable is not a whole number >= 1.
    """
    spec = LIMITS[name]
    raw = os.environ.get(spec.env, "").strip()
    if not raw:
        return spec.default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{spec.env}={raw!r}: expected a whole number >= 1 (the limit on {spec.what})")
    return value


def check_limit(name: str, value: float, label: str) -> None:
    """Refuse ``value`` above limit ``name``, naming ``label`` (the option or key) and how to raise it.

    Raises:
        ConfigError: ``value`` exceeds the limit.
    """
    bound = limit(name)
    if value > bound:
        spec = LIMITS[name]
        shown = value if isinstance(value, int) else f"{value:g}"
        raise ConfigError(f"{label} = {shown}: above the limit of {bound} {spec.what} "
                          f"(set {spec.env} to raise it)")
