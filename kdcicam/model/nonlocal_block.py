"""Embedded-Gaussian non-local block (Wang et al. 2018), as NL-CCAM / CI-CAM insert it into the backbone.

``y = x + BN(W_z · (V(x) · softmax(Q(x)^T K(x))^T))``: query/key 1x1 convs to C/8 channels, a value 1x1
conv to C, softmax attention over all h*w positions, an output 1x1 conv and a BatchNorm whose weight and
bias start at 0, so the block is the identity at initialisation (paper §4.2: "randomly initialized except
for the batch normalization layers, which are initialized as zero").
"""

from __future__ import annotations

import torch
from torch import nn


def attention_inner_channels(channels: int) -> int:
    """Channels of the query/key embedding: C/8 (floor, as the reference code), at least 1."""
    return max(1, channels // 8)


class NonLocalBlock(nn.Module):
    """Self-attention over positions with a zero-initialised BatchNorm on the residual branch.

    Submodule names follow the authors' released code (``query_conv``, ``key_conv``, ``value_conv``,
    ``mix_conv``, ``bn``) so a checkpoint of theirs maps onto ours by prefix only.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = attention_inner_channels(channels)
        self.channels = channels
        self.query_conv = nn.Conv2d(channels, inner, kernel_size=1)
        self.key_conv = nn.Conv2d(channels, inner, kernel_size=1)
        self.value_conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.mix_conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)  # identity at init: the residual branch outputs exactly 0
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C, h, w). Returns: (B, C, h, w), equal to x at initialisation."""
        b, c, h, w = x.shape
        query = self.query_conv(x).flatten(2).transpose(1, 2)  # (B, hw, C/8)
        key = self.key_conv(x).flatten(2)  # (B, C/8, hw)
        value = self.value_conv(x).flatten(2)  # (B, C, hw)
        # embedded Gaussian: f(x_i, x_j) = exp(q_i . k_j), normalised over j (no 1/sqrt(d) scaling)
        attention = torch.softmax(torch.bmm(query, key), dim=-1)  # (B, hw_i, hw_j)
        mixed = torch.bmm(value, attention.transpose(1, 2)).view(b, c, h, w)  # (B, C, h, w): sum_j a_ij v_j
        return x + self.bn(self.mix_conv(mixed))  # (B, C, h, w)
