"""Drawing one image of the embedded benchmark from its latents (pixels, body and part masks) and encoding it
as JPEG."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from kdcicam.core.config import SynthConfig
from kdcicam.data.synthetic_geometry import PART_OFFSET, part_mask
from kdcicam.data.synthetic_latents import Latents
from kdcicam.data.synthetic_styles import BODY_SHADE, STRIPE_AMPLITUDE, body_colour, class_styles, context_styles


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
    part = part_mask(u - lat.part_end * PART_OFFSET * lat.semi_major, v,
                      cfg.part_scale * lat.semi_major, style.shape)  # (H, W)

    # C -> background: tinted field with oriented stripes (frequency per nominal side).
    ctx = np.asarray(context_styles(cfg.classes)[lat.context].rgb) * lat.context_brightness  # (3,)
    t = (X * math.cos(lat.stripe_angle) + Y * math.sin(lat.stripe_angle)) \
        * (2 * math.pi * lat.stripe_freq / cfg.size) + lat.stripe_phase  # (H, W)
    img = (1.0 + STRIPE_AMPLITUDE * np.sin(t))[..., None] * ctx  # (H, W, 3)

    # Y -> body tint (weak) and Y -> part (strong).
    shade = 1.0 - BODY_SHADE * np.minimum(rho2, 1.0)  # (H, W)
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


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of (H, W, 3) RGB or (H, W) grayscale uint8 pixels (deterministic settings)."""
    buf = io.BytesIO()
    image = Image.fromarray(pixels)
    if image.mode == "RGB":
        image.save(buf, format="JPEG", quality=quality, subsampling="4:2:0", optimize=False)
    else:
        image.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()
