"""Heatmaps that are constant up to float rounding count as empty.

A map whose values differ only by rounding (per-class constant CAMs after Eq. 3's weighted sum,
for instance) carries no location; min-max normalisation would stretch its rounding noise to
[0, 1] and the box rule would then find an arbitrary box. :func:`zero_flat_maps` sets such maps to
zero, which every box rule turns into the empty fallback box, exactly as an exactly constant map.
"""

from __future__ import annotations

import torch

# A map is flat when max - min <= FLAT_RTOL x max |value|: 1e-5 is ~84 float32 steps (2^-23 each)
# at the map's magnitude, far above a weighted sum's rounding and far below any trained map's contrast.
FLAT_RTOL = 1e-5


def flat_maps(h: torch.Tensor, rtol: float = FLAT_RTOL) -> torch.Tensor:
    """Which maps of a batch are constant up to rounding.

    Args:
        h: (B, h, w) heatmaps.
        rtol: span threshold relative to each map's largest absolute value.

    Returns:
        (B,) bool: max - min <= rtol · max |h| (an all-zero map is flat).
    """
    flat = h.flatten(1)  # (B, h*w)
    span = flat.max(dim=1).values - flat.min(dim=1).values  # (B,)
    return span <= rtol * flat.abs().max(dim=1).values


def zero_flat_maps(h: torch.Tensor, rtol: float = FLAT_RTOL) -> torch.Tensor:
    """``h`` with every flat map (:func:`flat_maps`) replaced by zeros; (B, h, w)."""
    return torch.where(flat_maps(h, rtol)[:, None, None], torch.zeros_like(h), h)
