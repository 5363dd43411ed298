"""What one forward pass of the CI-CAM network returns (the contract between model, losses, evaluator)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CICAMOutput:
    """Outputs of both CAM modules (shared classifier weights).

    ``logits``/``cams`` come from CAM module 1 on the backbone features X (the "entangled" branch);
    ``logits_e``/``cams_e`` from CAM module 2 on the enhanced features X^e (Eq. 8). For Base
    (NL-CCAM, no context pool) X^e = X, so both branches are equal.
    """

    logits: torch.Tensor  # (B, n)        S before softmax (Eq. 1 head on X)
    logits_e: torch.Tensor  # (B, n)      S^e before softmax (head on X^e)
    cams: torch.Tensor  # (B, n, h, w)    M, Eq. 1: M_i = sum_k W_ik X_k (no bias)
    cams_e: torch.Tensor  # (B, n, h, w)  M^e, the CAMs of the enhanced features
