"""Fully convolutional VGG16 / InceptionV3 feature extractors with non-local blocks (the NL-FCN of §3.1.2).

Both follow torchvision's definitions and keep torchvision's module names, so at width 1.0 every conv / BN
tensor has the same name and shape as in torchvision's ImageNet checkpoint (see :mod:`kdcicam.model.weights`).
The inserted non-local blocks live in a separate ``nonlocal_blocks`` ModuleDict, so they shift no index.

* VGG16 = torchvision cfg "D" conv layers with pool1-pool4 kept and pool5 removed (stride 16: 224 -> 14x14),
  features = conv5_3 (512 ch). ``output_stride`` 8 / 4 replace pool4 / pool3+pool4 by ``nn.Identity`` (reduced
  CPU settings). ``activation="leaky_relu"`` is the authors' code (LeakyReLU(0.2)); "relu" is torchvision's.
* InceptionV3 = torchvision ``Inception3`` up to Mixed_6e (768 ch, 17x17 at 299). Its stride comes from
  unpadded strided convolutions, so only ``output_stride=16`` (nominal) is offered.

A ``width`` multiplier scales every channel count (``scale_channels``); width 1.0 is the paper's network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs as _TORCHVISION_VGG_CFGS

from kdcicam.core.errors import ConfigError
from kdcicam.model.nonlocal_block import NonLocalBlock

# Where non-local blocks go, lowest level first ("before every bottleneck layer excluding the first one",
# §3.1.2 / §4.2). With fewer blocks than sites the *last* ones are kept: the released ILSVRC VGG16 model uses
# exactly pool3, pool4, conv5_3 for its three blocks, and the lowest site is also the most expensive
# (attention cost grows with (h*w)^2: 56x56 positions after pool2 at 224 px).
NONLOCAL_SITES: dict[str, tuple[str, ...]] = {
    "vgg16": ("pool2", "pool3", "pool4", "conv5_3"),
    "inceptionv3": ("maxpool2", "Mixed_5d", "Mixed_6e"),
}

# torchvision's ImageNet checkpoint file for each backbone (the name torch.hub caches it under).
CHECKPOINT_FILES: dict[str, str] = {
    "vgg16": "vgg16-397923af.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
    "inceptionv3": "inception_v3_google-0cc3c7bd.pth",
}

ACTIVATIONS = ("relu", "leaky_relu")


def scale_channels(channels: int, width: float) -> int:
    """A channel count under the width multiplier: ``round(channels * width)``, at least 1."""
    return max(1, int(round(channels * width)))


def select_sites(backbone: str, count: int) -> tuple[str, ...]:
    """The non-local sites used with ``count`` blocks (the last ``count`` of NONLOCAL_SITES).

    Raises:
        ConfigError: ``count`` is negative or more than the backbone has sites for.
    """
    sites = NONLOCAL_SITES[backbone]
    if not 0 <= count <= len(sites):
        raise ConfigError(
            f"model.nonlocal_blocks = {count}: {backbone} takes 0 to {len(sites)} ({', '.join(sites)})"
        )
    return sites[len(sites) - count:]


# --------------------------------------------------------------------------- VGG16


class VGG16Backbone(nn.Module):
    """VGG16 conv layers (torchvision cfg "D", pool5 removed) with non-local blocks.

    Args:
        width: channel multiplier (1.0 = the paper's network).
        output_stride: 16 (pool1-pool4, the paper), 8 (no pool4) or 4 (no pool3, pool4).
        nonlocal_blocks: number of non-local blocks, 0-4 (sites: NONLOCAL_SITES["vgg16"]).
        activation: "relu" (torchvision, variant "paper") or "leaky_relu" (LeakyReLU(0.2), variant "reference").
        batch_norm: a BatchNorm after every conv (torchvision's vgg16_bn layout and weights file). The paper's
            network has none; the reduced profiles, which train from scratch, use it because plain VGG16
            trained from scratch is unstable (docs/fidelity.md, S5).
    """

    def __init__(self, width: float = 1.0, output_stride: int = 16, nonlocal_blocks: int = 4,
                 activation: str = "relu", batch_norm: bool = False) -> None:
        super().__init__()
        self.name = "vgg16_bn" if batch_norm else "vgg16"
        if output_stride not in (4, 8, 16):
            raise ConfigError(f"model.output_stride = {output_stride}: vgg16 takes 16, 8 or 4")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (expected one of {ACTIVATIONS})")
        kept_pools = {16: 4, 8: 3, 4: 2}[output_stride]
        cfg = list(_TORCHVISION_VGG_CFGS["D"])[:-1]  # drop the final "M": pool5 removed (stride 16)
        layers: list[nn.Module] = []
        site_at: dict[int, str] = {}  # layer index -> non-local site name placed after that layer
        in_channels, pools_seen = 3, 0
        for v in cfg:
            if v == "M":
                pools_seen += 1
                # a dropped pool becomes Identity so that later indices still match torchvision's
                layers.append(nn.MaxPool2d(2, 2) if pools_seen <= kept_pools else nn.Identity())
                if pools_seen >= 2:
                    site_at[len(layers) - 1] = f"pool{pools_seen}"
            else:
                out_channels = scale_channels(int(v), width)
                layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True) if activation == "relu" else nn.LeakyReLU(0.2, inplace=True))
                in_channels = out_channels
        site_at[len(layers) - 1] = "conv5_3"
        self.features = nn.Sequential(*layers)
        channels_at = {site: self._channels_before(layers, i) for i, site in site_at.items()}
        sites = select_sites("vgg16", nonlocal_blocks)
        self.nonlocal_blocks = nn.ModuleDict({s: NonLocalBlock(channels_at[s]) for s in sites})
        self._site_at = {i: s for i, s in site_at.items() if s in sites}
        self.width = width
        self.output_stride = output_stride
        self.kept_pools = kept_pools
        self.out_channels = in_channels

    @staticmethod
    def _channels_before(layers: list[nn.Module], index: int) -> int:
        for layer in reversed(layers[: index + 1]):
            if isinstance(layer, nn.Conv2d):
                return layer.out_channels
        raise ValueError("no conv layer before a non-local site")

    def feature_size(self, size: int) -> int:
        """Side of the feature map for an input side ``size`` (3x3 convs keep it, each 2x2 pool floors /2)."""
        for _ in range(self.kept_pools):
            size //= 2
        return size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (B, 3, H, W). Returns: X (B, C, H/s, W/s), C = 512 at width 1, s = output_stride."""
        x = images
        for i, layer in enumerate(self.features):
            x = layer(x)
            site = self._site_at.get(i)
            if site is not None:
                x = self.nonlocal_blocks[site](x)  # (B, C_site, h, w)
        return x


# --------------------------------------------------------------------------- InceptionV3


class BasicConv2d(nn.Module):
    """torchvision's Inception conv unit: conv (no bias) + BatchNorm(eps 1e-3) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    """torchvision InceptionA (Mixed_5b-5d) with every channel count scaled by ``width``."""

    def __init__(self, in_channels: int, pool_features: int, width: float) -> None:
        super().__init__()
        c = _scaler(width)
        self.branch1x1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, c(48), kernel_size=1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, c(pool_features), kernel_size=1)
        self.out_channels = c(64) + c(64) + c(96) + c(pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)  # (B, out_channels, h, w)


class InceptionB(nn.Module):
    """torchvision InceptionB (Mixed_6a, the 35 -> 17 reduction) scaled by ``width``."""

    def __init__(self, in_channels: int, width: float) -> None:
        super().__init__()
        c = _scaler(width)
        self.branch3x3 = BasicConv2d(in_channels, c(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, stride=2)
        self.out_channels = c(384) + c(96) + in_channels  # the max-pool branch passes its input through

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b3d, bp], 1)  # (B, out_channels, (h-3)//2+1, (w-3)//2+1)


class InceptionC(nn.Module):
    """torchvision InceptionC (Mixed_6b-6e, factorised 7x7) scaled by ``width``."""

    def __init__(self, in_channels: int, channels_7x7: int, width: float) -> None:
        super().__init__()
        c = _scaler(width)
        c7 = c(channels_7x7)
        self.branch1x1 = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, c(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, c(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.out_channels = 4 * c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = layer(b7d)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, b7d, bp], 1)  # (B, out_channels, h, w)


def _scaler(width: float) -> Callable[[int], int]:
    return lambda channels: scale_channels(channels, width)


class InceptionV3Backbone(nn.Module):
    """torchvision Inception3 up to Mixed_6e (768 ch; 17x17 at 299) with non-local blocks.

    Args:
        width: channel multiplier (1.0 = the paper's network).
        output_stride: must be 16 (nominal; 299 -> 17x17). Other values raise ConfigError.
        nonlocal_blocks: number of non-local blocks, 0-3 (sites: NONLOCAL_SITES["inceptionv3"]).

    No ``transform_input`` re-normalisation: the authors' code builds Inception3 with the default
    ``transform_input=False`` and feeds ImageNet-normalised images.
    """

    name = "inceptionv3"
    min_input_size = 43  # smallest side that leaves a 1x1 map after Mixed_6a (torchvision's 75 is for Mixed_7c)

    def __init__(self, width: float = 1.0, output_stride: int = 16, nonlocal_blocks: int = 3) -> None:
        super().__init__()
        if output_stride != 16:
            raise ConfigError(
                f"model.output_stride = {output_stride}: inceptionv3 supports only 16 (its stride is fixed by "
                "unpadded strided convolutions; use a smaller input for cheaper runs)"
            )
        c = _scaler(width)
        self.Conv2d_1a_3x3 = BasicConv2d(3, c(32), kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(c(32), c(32), kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(c(32), c(64), kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(c(64), c(80), kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(c(80), c(192), kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(c(192), pool_features=32, width=width)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, pool_features=64, width=width)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, pool_features=64, width=width)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, width=width)
        self.Mixed_6b = InceptionC(self.Mixed_6a.out_channels, channels_7x7=128, width=width)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, channels_7x7=160, width=width)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, channels_7x7=160, width=width)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, channels_7x7=192, width=width)
        channels_at = {"maxpool2": c(192), "Mixed_5d": self.Mixed_5d.out_channels,
                       "Mixed_6e": self.Mixed_6e.out_channels}
        sites = select_sites(self.name, nonlocal_blocks)
        self.nonlocal_blocks = nn.ModuleDict({s: NonLocalBlock(channels_at[s]) for s in sites})
        self.width = width
        self.output_stride = output_stride
        self.out_channels = self.Mixed_6e.out_channels

    _ORDER: tuple[str, ...] = (
        "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
        "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    )

    @staticmethod
    def feature_size(size: int) -> int:
        """Side of the Mixed_6e map for an input side ``size`` (299 -> 17, 75 -> 3, 43 -> 1, 42 -> 0)."""
        def down(s: int) -> int:  # 3x3, stride 2, no padding
            return (s - 3) // 2 + 1
        size = down(size)  # Conv2d_1a_3x3
        size = size - 2  # Conv2d_2a_3x3 (3x3, no padding); 2b and 3b keep the size
        size = down(size)  # maxpool1
        size = size - 2  # Conv2d_4a_3x3
        size = down(size)  # maxpool2; Mixed_5b-5d keep the size
        return max(0, down(size))  # Mixed_6a; Mixed_6b-6e keep the size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (B, 3, H, W), H, W >= 43. Returns: X (B, 768 at width 1, h, w), 17x17 at 299."""
        x = images
        for name in self._ORDER:
            x = getattr(self, name)(x)
            if name in self.nonlocal_blocks:
                x = self.nonlocal_blocks[name](x)  # (B, C_site, h, w)
        return x


# --------------------------------------------------------------------------- construction


def build_backbone(name: str, width: float, output_stride: int, nonlocal_blocks: int,
                   variant: str, batch_norm: bool = False) -> VGG16Backbone | InceptionV3Backbone:
    """Build a backbone by name.

    Args:
        name: "vgg16" or "inceptionv3".
        width: channel multiplier (> 0).
        output_stride: 16, 8 or 4 (vgg16); 16 (inceptionv3).
        nonlocal_blocks: how many non-local blocks (see NONLOCAL_SITES).
        variant: "reference" uses LeakyReLU(0.2) in VGG16 (the authors' code), "paper" ReLU.
        batch_norm: VGG16 only: a BatchNorm after every conv (vgg16_bn); InceptionV3 always has them.

    Raises:
        ConfigError: unknown name, width <= 0, or an unsupported stride / block count.
    """
    if not width > 0:
        raise ConfigError(f"model.width = {width!r}: must be > 0")
    if name == "vgg16":
        activation = "leaky_relu" if variant == "reference" else "relu"
        return VGG16Backbone(width, output_stride, nonlocal_blocks, activation, batch_norm)
    if name == "inceptionv3":
        return InceptionV3Backbone(width, output_stride, nonlocal_blocks)
    raise ConfigError(f"model.backbone = {name!r}: must be one of {', '.join(map(repr, NONLOCAL_SITES))}")
