"""The combinational localization heatmap (Eq. 2-3) and its normalisation / upsampling.

Pure functions of tensors. The heatmap combines *all* class activation maps of the enhanced
branch, ranked by the class scores, with a rank-dependent weight γ(k) (NL-CCAM, ref. [62]):

    H = Σ_k γ(k) · M_{t_k},    t_1 = argmax S, t_2 = second, ...         (Eq. 2-3)

The two fidelity variants differ in γ and in how H is normalised (docs/fidelity.md):

- ``"paper"``: γ is NL-CCAM's default combinational function (its released code's
  ``quadratic``: weights fall from +1 to 0 over the better half of the ranking, then from 0 to
  -1 over the worse half); H is min-max normalised per image to [0, 1].
- ``"reference"``: the KD-CI-CAM code's ``quadratic``, γ(k) = -(k / (n-1))² for the 0-based rank
  k (the top-1 map gets weight 0, the last -1); H has its per-image minimum subtracted, nothing
  more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdcicam.core.config import VARIANTS

HEATMAP_FUNCTIONS = ("quadratic", "sum_1")
SUM1_MEAN_NUM = 20  # --mean_num of every released script


def check_variant(variant: str) -> None:
    """Raise ValueError unless ``variant`` is one of :data:`kdcicam.core.config.VARIANTS`."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def sum1_weights(n: int, mean_num: int = SUM1_MEAN_NUM) -> torch.Tensor:
    """γ(k) of the released ILSVRC scripts' ``sum_1`` combination (``torch_cam_combination``).

    H = M_{t_0} - (1/m) Σ_j 2j/(m-1) · M_{t_{n-m+j}}, j = 0 ... m-1: the top-1 map minus a weighted
    mean of the m last-ranked maps (weights linspace(0, 2, m), the last map's largest), m = min(mean_num, n)
    (the code needs n >= mean_num; capping m is this harness's generalisation). Both variants.

    Returns:
        Float32 CPU tensor of shape (n,).
    """
    if n < 2:
        raise ValueError(f"the combinational heatmap needs at least 2 classes, got n={n}")
    m = min(mean_num, n)
    gamma = torch.zeros(n)
    gamma[n - m:] -= torch.linspace(0.0, 2.0, m) / m  # (m,) the last m ranks
    gamma[0] += 1.0  # the top-1 map
    return gamma


def combination_weights(n: int, variant: str, function: str = "quadratic") -> torch.Tensor:
    """Weights γ(k) of Eq. 3 for the 0-based ranks k = 0 (top-1 class) ... n-1 (last class).

    ``function = "sum_1"`` gives :func:`sum1_weights` whatever the variant; ``"quadratic"`` the
    variant's form below.

    Args:
        n: number of classes (>= 2).
        variant: ``"paper"`` (NL-CCAM's quadratic with the sign change at rank ⌊n/2⌋:
            γ(k) = ((m-1-k)/(m-1))² for k < m, -((k-m)/(n-m-1))² for k >= m, m = ⌊n/2⌋, a
            one-element half taking the value of its first end, as ``linspace`` does) or
            ``"reference"`` (γ(k) = -(k/(n-1))²).

    Returns:
        Float32 CPU tensor of shape (n,).
    """
    check_variant(variant)
    if function not in HEATMAP_FUNCTIONS:
        raise ValueError(f"function must be one of {HEATMAP_FUNCTIONS}, got {function!r}")
    if function == "sum_1":
        return sum1_weights(n)
    if n < 2:
        raise ValueError(f"the combinational heatmap needs at least 2 classes, got n={n}")
    if variant == "reference":
        # KD-CI-CAM code: -linspace(0, -1, n)²  ->  0 for the top-1 map, -1 for the last.
        return 0.0 - torch.linspace(0.0, -1.0, n) ** 2  # (n,) 0 - x keeps +0.0 at the top
    # NL-CCAM code (function="quadratic", thr = n/2): linspace(1, 0, m)² then -linspace(0, -1, n-m)².
    m = n // 2
    upper = torch.linspace(1.0, 0.0, m) ** 2  # (m,)   +1 ... 0
    lower = 0.0 - torch.linspace(0.0, -1.0, n - m) ** 2  # (n-m,) 0 ... -1
    return torch.cat([upper, lower])


def combinational_heatmap(cams_e: torch.Tensor, logits_e: torch.Tensor, variant: str,
                          function: str = "quadratic") -> torch.Tensor:
    """Eq. 2-3: combine all class maps, ranked by score, into one heatmap per image.

    Ranking by the logits equals ranking by the softmax probabilities (monotone); ties keep the
    class order (stable sort). Gradients flow into ``cams_e`` (not through the ranking).

    Args:
        cams_e: (B, n, h, w) class activation maps M^e of the enhanced branch.
        logits_e: (B, n) scores S^e that rank the maps.
        variant: ``"paper"`` or ``"reference"`` (selects γ, see :func:`combination_weights`).
        function: ``"quadratic"`` (the variant's γ) or ``"sum_1"`` (``model.heatmap_function``).

    Returns:
        (B, h, w) unnormalised heatmap H.
    """
    if cams_e.dim() != 4 or logits_e.dim() != 2 or cams_e.shape[:2] != logits_e.shape:
        raise ValueError(f"expected cams (B, n, h, w) and logits (B, n), got {tuple(cams_e.shape)} "
                         f"and {tuple(logits_e.shape)}")
    n = cams_e.shape[1]
    gamma = combination_weights(n, variant, function).to(device=cams_e.device, dtype=cams_e.dtype)  # (n,)
    order = torch.sort(logits_e.detach(), dim=1, descending=True, stable=True).indices  # (B, n) t_k
    # Eq. 3: class t_k gets γ(k); scatter the rank weights back to class positions.
    class_weights = torch.empty_like(logits_e, dtype=cams_e.dtype)  # (B, n)
    class_weights.scatter_(1, order, gamma.expand_as(class_weights))
    return torch.einsum("bn,bnhw->bhw", class_weights, cams_e)  # (B, h, w)


def class_heatmap(cams: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
    """The activation map of one class per image (the standard protocol's GT-class CAM).

    Args:
        cams: (B, n, h, w) class activation maps.
        class_idx: (B,) integer class per image.

    Returns:
        (B, h, w) the selected maps (gradients flow into ``cams``).
    """
    if cams.dim() != 4 or class_idx.shape != cams.shape[:1]:
        raise ValueError(f"expected cams (B, n, h, w) and class_idx (B,), got {tuple(cams.shape)} "
                         f"and {tuple(class_idx.shape)}")
    batch = torch.arange(cams.shape[0], device=cams.device)  # (B,)
    return cams[batch, class_idx.to(cams.device).long()]  # (B, h, w)


def normalize_heatmap(h: torch.Tensor, variant: str) -> torch.Tensor:
    """Per-image normalisation of a heatmap.

    Args:
        h: (B, h, w) heatmap.
        variant: ``"paper"``: (h - min) / (max - min) in [0, 1], a constant map becomes zeros;
            ``"reference"``: h - min (no division, as the authors' ``torch_cam_combination``).

    Returns:
        (B, h, w) normalised heatmap (differentiable).
    """
    check_variant(variant)
    if h.dim() != 3:
        raise ValueError(f"expected a (B, h, w) heatmap, got shape {tuple(h.shape)}")
    flat = h.flatten(1)  # (B, h*w)
    lo = flat.min(dim=1, keepdim=True).values  # (B, 1)
    shifted = flat - lo  # (B, h*w) >= 0
    if variant == "paper":
        span = flat.max(dim=1, keepdim=True).values - lo  # (B, 1)
        # A constant map has span 0 and shifted == 0: divide by 1 so it stays all zeros.
        shifted = shifted / torch.where(span > 0, span, torch.ones_like(span))
    return shifted.view_as(h)


def upsample_heatmap(h: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (align_corners=False, as ``nn.Upsample`` in the reference) to ``size``.

    Args:
        h: (B, h, w) heatmap.
        size: (H, W) target size, normally the input image's.

    Returns:
        (B, H, W) heatmap.
    """
    if h.dim() != 3:
        raise ValueError(f"expected a (B, h, w) heatmap, got shape {tuple(h.shape)}")
    up = F.interpolate(h.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False)
    return up.squeeze(1)  # (B, H, W)


def foreground_mask(h: torch.Tensor, theta: float) -> torch.Tensor:
    """Binary foreground mask M^fore = H > θ·max(H), per image (§3.3.2-3.3.3).

    A hard threshold: the result carries no gradient. M^back = 1 - M^fore.

    Args:
        h: (B, H, W) heatmap (normalised so that its minimum is 0).
        theta: threshold as a fraction of each image's maximum.

    Returns:
        (B, H, W) boolean mask.
    """
    if h.dim() != 3:
        raise ValueError(f"expected a (B, h, w) heatmap, got shape {tuple(h.shape)}")
    peak = h.detach().flatten(1).max(dim=1).values.view(-1, 1, 1)  # (B, 1, 1)
    return h.detach() > theta * peak  # (B, H, W)
