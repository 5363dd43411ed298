"""The optimizer of a run and its learning-rate schedule (constant, cosine, or the authors' poly decay
with halving)."""

from __future__ import annotations

import math
from typing import Any

import torch

from kdcicam.core.config import RunConfig
from kdcicam.model.factory import param_groups


def lr_factor(epoch: int, cfg: RunConfig) -> float:
    """Multiplier of the base learning rate at (0-based) ``epoch``.

    ``constant``: 1. ``cosine``: half-cosine to 0 over the run. ``reference`` (the authors' code):
    poly decay (1 - e/E)^0.9, times ``decay_rate`` every ``halve_every`` epochs, times 0.1 from
    ``late_drop_epoch`` on (when set).
    """
    t = cfg.train
    if t.lr_schedule == "constant":
        return 1.0
    if t.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / t.epochs))
    factor = (1.0 - epoch / t.epochs) ** 0.9
    if t.halve_every > 0:
        factor *= t.decay_rate ** (epoch // t.halve_every)
    if 0 < t.late_drop_epoch <= epoch:
        factor *= 0.1
    return factor


def build_optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam(β1, β2) over the model's parameter groups (backbone at ``backbone_lr_mult`` x lr)."""
    return adam_over(param_groups(model, cfg.train.lr, cfg.train.backbone_lr_mult), cfg, device)


def adam_over(groups: list[dict[str, Any]], cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """The run's Adam over ``groups`` (each ``lr`` also kept as ``initial_lr`` for the schedule)."""
    for g in groups:
        g["initial_lr"] = g["lr"]
    kwargs: dict[str, Any] = dict(betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay)
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.Adam(groups, **kwargs)


def set_epoch_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
