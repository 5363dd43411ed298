"""Build the CI-CAM network from a ModelConfig, and its optimizer parameter groups."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdcicam.core.config import VARIANTS, ModelConfig
from kdcicam.core.errors import ConfigError, RunError
from kdcicam.model.backbones import build_backbone
from kdcicam.model.cicam import CICAM
from kdcicam.model.context_pool import POOL_RULES, CausalContextPool
from kdcicam.model.shipped import is_shipped, shipped_file
from kdcicam.model.weights import load_pretrained

HUB_WEIGHTS = "imagenet"  # model.weights = "imagenet": torchvision's file from the local torch hub cache


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"variant = {variant!r}: must be one of {', '.join(map(repr, VARIANTS))}")


def build_model(cfg: ModelConfig, variant: str, input_size: int) -> CICAM:
    """The network of every role, with ImageNet weights when ``cfg.weights`` is set.

    Args:
        cfg: backbone, num_classes, width, output_stride, nonlocal_blocks, context_pool, update_rate (λ),
            weights (None = random init; "imagenet" = torchvision's file in the torch hub cache; else a path).
        variant: "paper" | "reference" (VGG activation and the pool's update rules).
        input_size: training input side (the crop); fixes the pool's (h, w).

    Returns:
        The CICAM model (train mode); ``model.weights_record`` says which weights it starts from.

    Raises:
        ConfigError: bad variant, backbone, width, stride, block count, num_classes, or an input too small.
        RunError: the weights file is missing or does not fit (see :func:`load_pretrained`).
    """
    _check_variant(variant)
    if cfg.num_classes < 1:
        raise ConfigError(f"model.num_classes = {cfg.num_classes}: must be >= 1")
    backbone = build_backbone(cfg.backbone, cfg.width, cfg.output_stride, cfg.nonlocal_blocks, variant,
                              cfg.batch_norm)
    side = backbone.feature_size(input_size)
    if side < 1:
        raise ConfigError(f"input size {input_size}: too small for {cfg.backbone} at output_stride "
                          f"{cfg.output_stride} (the feature map would be empty)")
    pool = None
    if cfg.context_pool:
        pool = CausalContextPool(cfg.num_classes, (side, side), cfg.update_rate, POOL_RULES[variant])
    model = CICAM(backbone, cfg.num_classes, pool)
    if cfg.weights is not None:
        path, expected = weights_source(cfg)
        model.weights_record = load_pretrained(model, path, expected, any_width=is_shipped(cfg.weights))
    return model


def weights_source(cfg: ModelConfig) -> tuple[str | None, str | None]:
    """The file ``cfg.weights`` names (None: the torch hub cache) and the sha256 it must have (None: any).

    ``shipped:NAME`` is checked against its sidecar's sha256; ``cfg.weights_sha256``, when set, pins any file.

    Raises:
        RunError: unknown shipped weights, or a pin that differs from the shipped sidecar's sha256.
    """
    if is_shipped(cfg.weights):
        path, recorded = shipped_file(str(cfg.weights))
        if cfg.weights_sha256 is not None and cfg.weights_sha256 != recorded:
            raise RunError(f"model.weights_sha256 = {cfg.weights_sha256[:16]}...: the shipped "
                           f"{cfg.weights} records {recorded[:16]}... (the profile pins other weights)")
        return str(path), recorded
    return (None if cfg.weights == HUB_WEIGHTS else cfg.weights), cfg.weights_sha256


def param_groups(model: CICAM, lr: float, backbone_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """Optimizer parameter groups.

    Args:
        model: the network.
        lr: the classifier's (base) learning rate.
        backbone_lr_mult: lr of the backbone (incl. non-local blocks) and the context conv relative to
            ``lr`` (``TrainConfig.backbone_lr_mult``): 1.0 gives one group; the authors' code uses 0.1
            (set by the paper profile for the reference variant, ``ablations/profiles.toml``).

    Returns:
        Groups for ``torch.optim``, each with its ``name``.
    """
    return param_groups_of([(n, p) for n, p in model.named_parameters() if p.requires_grad], lr, backbone_lr_mult)


def param_groups_of(trainable: list[tuple[str, Any]], lr: float, backbone_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """:func:`param_groups` of (name, parameter) pairs named as in the network (a pack's stacked tensors too)."""
    mult = float(backbone_lr_mult)
    if not mult > 0:
        raise ConfigError(f"backbone lr multiplier = {mult}: must be > 0")
    if mult == 1.0:
        return [{"name": "all", "params": [p for _, p in trainable], "lr": lr}]
    head = [p for n, p in trainable if n.startswith("classifier.")]
    body = [p for n, p in trainable if not n.startswith("classifier.")]
    return [
        {"name": "backbone", "params": body, "lr": lr * mult},
        {"name": "classifier", "params": head, "lr": lr},
    ]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
