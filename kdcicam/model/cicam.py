"""CI-CAM: the one network of every role (student, both teachers, distilled student), §3.2.3 / Fig. 3.

backbone -> X (B, C, h, w) -> CAM module 1 (GAP + Linear, Eq. 1) -> S, M
                           -> causal context pool Q (Eq. 7) -> X^e = X + X ⊙ Conv1x1(Q_pi) (Eq. 8)
                           -> CAM module 2 (the *same* Linear) -> S^e, M^e

Without a pool (``context_pool=None``) this is Base (NL-CCAM): X^e = X and both branches are equal.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdcicam.model.context_pool import CausalContextPool
from kdcicam.model.output import CICAMOutput

RANDOM_INIT_RECORD: dict[str, Any] = {"pretrained": False, "note": "random init"}


def cam_module(x: torch.Tensor, classifier: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """GAP + fully connected classifier, and the class activation maps of Eq. 1.

    Args:
        x: (B, C, h, w) feature maps.
        classifier: Linear(C, n) with weight W (n, C).

    Returns:
        logits: (B, n) scores S before softmax, W · GAP(X) + b.
        cams: (B, n, h, w) M_i = sum_k W_ik X_k (Eq. 1, no bias; GAP(M_i) + b_i = S_i).
    """
    logits = classifier(x.mean(dim=(2, 3)))  # (B, n)
    cams = torch.einsum("nc,bchw->bnhw", classifier.weight, x)  # (B, n, h, w)  Eq. 1
    return logits, cams


def enhance(x: torch.Tensor, context: torch.Tensor, top1: torch.Tensor, context_conv: nn.Conv2d) -> torch.Tensor:
    """Eq. 8: X^e = X + X ⊙ Conv1x1(Q_pi), as the reference builds it.

    The conv's input is an n-channel map holding Q_pi in channel pi and zeros elsewhere; a 1x1 conv of such
    a one-hot map is ``W[:, pi] · Q_pi + b``, which is what is computed (same values and gradients, without
    materialising the (B, n, h, w) map).

    Args:
        x: (B, C, h, w) backbone features X.
        context: (B, h, w) pool entries Q_pi of each sample's top-1 class.
        top1: (B,) long, pi.
        context_conv: Conv2d(n -> C, 1x1, with bias).

    Returns:
        (B, C, h, w) enhanced features X^e.
    """
    weight = context_conv.weight[:, :, 0, 0]  # (C, n)
    columns = weight.t()[top1]  # (B, C): W[:, pi] per sample
    attention = columns[:, :, None, None] * context[:, None] + context_conv.bias[None, :, None, None]  # (B, C, h, w)
    attention = attention.to(x.dtype)
    return x + x * attention  # (B, C, h, w)  Eq. 8: X^e = X + X ⊙ Conv1x1(Q_pi)


class CICAM(nn.Module):
    """Backbone + two weight-sharing CAM modules + (optionally) the causal context pool.

    Args:
        backbone: a module mapping images (B, 3, H, W) to X (B, C, h, w), with an ``out_channels`` attribute.
        num_classes: n.
        context_pool: the pool (CI-CAM) or None (Base / NL-CCAM: no pool, no enhancement conv, X^e = X).

    Attributes:
        weights_record: plain-data record of the initial weights (set by the factory after loading).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, context_pool: CausalContextPool | None) -> None:
        super().__init__()
        channels = int(backbone.out_channels)
        self.backbone = backbone
        self.classifier = nn.Linear(channels, num_classes)  # W of Eq. 1, shared by both CAM modules
        self.context_pool = context_pool
        self.context_conv = nn.Conv2d(num_classes, channels, kernel_size=1) if context_pool is not None else None
        self.num_classes = num_classes
        self.weights_record: dict[str, Any] = dict(RANDOM_INIT_RECORD)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                update_pool: bool | None = None) -> CICAMOutput:
        """One pass over a batch.

        Args:
            images: (B, 3, H, W) normalised images.
            labels: (B,) long ground truth; only the reference pool rule reads it (correct-only update).
            update_pool: whether this pass updates Q (default: ``self.training``). Extra passes on derived
                images (the teachers' fore/back images) pass False.

        Returns:
            CICAMOutput(logits, logits_e, cams, cams_e).
        """
        return self.head(self.backbone(images), labels, update_pool)

    def head(self, x: torch.Tensor, labels: torch.Tensor | None = None,
             update_pool: bool | None = None) -> CICAMOutput:
        """Everything after the backbone: both CAM modules and the pool, on features ``x`` (B, C, h, w).

        ``forward`` is ``head(backbone(images))``; a pack of runs (:mod:`kdcicam.training.packed_step`)
        computes the backbones of several runs at once and calls each run's head on its features.
        """
        if update_pool is None:
            update_pool = self.training
        logits, cams = cam_module(x, self.classifier)  # (B, n), (B, n, h, w)
        if self.context_pool is None or self.context_conv is None:  # Base: X^e = X
            return CICAMOutput(logits=logits, logits_e=logits, cams=cams, cams_e=cams)
        pool = self.context_pool
        top1 = logits.detach().argmax(dim=1)  # (B,)  pi = argmax(S)
        if update_pool and pool.rule.update_first:
            pool.update(cams, top1, labels)  # Eq. 7, then enhance with the updated Q (paper's text order)
        context = pool.lookup(top1, (x.shape[2], x.shape[3]))  # (B, h, w)  Q_pi
        if update_pool and not pool.rule.update_first:
            pool.update(cams, top1, labels)  # Eq. 7 after enhancing with the previous Q (reference)
        x_e = enhance(x, context, top1, self.context_conv)  # (B, C, h, w)
        logits_e, cams_e = cam_module(x_e, self.classifier)  # (B, n), (B, n, h, w)
        return CICAMOutput(logits=logits, logits_e=logits_e, cams=cams, cams_e=cams_e)
