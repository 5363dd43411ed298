"""The embedded benchmark's mechanism files: each image's region mask, and each test image's context-swapped
copy (the same object drawn on another class's context); kdcicam/data/mechanism_files.py reads them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from kdcicam.core.config import SynthConfig
from kdcicam.data.mechanism_files import CONTEXT_SWAP_DIR, REGIONS_DIR, mechanism_line, region_labels
from kdcicam.data.synthetic_latents import Latents
from kdcicam.data.synthetic_render import Rendering, encode_jpeg, render
from kdcicam.data.synthetic_styles import context_styles


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


def write_mechanism(root: Path, cfg: SynthConfig, lat: Latents, rendering: Rendering, rel: str) -> str:
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
