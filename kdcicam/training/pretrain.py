"""Pretrain a reduced backbone (VGG16-BN or InceptionV3) as a classifier on the pretraining set (ImageNet's part, docs/synthetic.md).

The network is the backbone (no non-local blocks, as torchvision's ImageNet networks) + GAP + linear. The
result is a torchvision-format state dict of the backbone (``features.N.*`` for VGG16), stored in fp16,
that :func:`kdcicam.model.weights.load_pretrained` reads like torchvision's own file.

Deterministic given the seed: the epoch's order and flips come from ``derive_seed(seed, "order", epoch)``;
a position is saved after every epoch, so an interrupted run resumes where it stopped with the same result.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdcicam.core.errors import ConfigError, RunError
from kdcicam.core.runtime import derive_seed, set_seed
from kdcicam.data.pixel_steps import IMAGENET_MEAN, IMAGENET_STD
from kdcicam.data.pretraining_set import PretrainSetConfig, fingerprint, generate_split
from kdcicam.model.backbones import build_backbone
from kdcicam.model.weights import file_sha256
from kdcicam.training.checkpoint import atomic_write_bytes

STATE_FILE = "pretrain-state.pt"  # the resumable position, rewritten after every epoch


@dataclass(frozen=True)
class PretrainConfig:
    """The backbone to pretrain and its recipe (Adam, cosine lr, horizontal flips)."""

    backbone: str = "vgg16"
    width: float = 0.125
    batch_norm: bool = True
    output_stride: int = 8  # VGG16: pools kept while pretraining (no parameters depend on it); InceptionV3: 16
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0  # weight init, order and flips
    data: PretrainSetConfig = field(default_factory=PretrainSetConfig)

    def validate(self) -> PretrainConfig:
        """Check ranges; raise a one-line ConfigError naming the option. Returns ``self``."""
        if self.backbone not in ("vgg16", "inceptionv3"):
            raise ConfigError(f"pretrain.backbone = {self.backbone!r}: must be 'vgg16' or 'inceptionv3'")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"pretrain.{key} = {getattr(self, key)}: must be >= 1")
        if not (self.width > 0 and self.lr > 0 and self.weight_decay >= 0):
            raise ConfigError("pretrain: width and lr must be > 0, weight_decay >= 0")
        self.data.validate()
        return self


class Classifier(nn.Module):
    """backbone -> GAP -> linear: the classification network the backbone is pretrained in."""

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        stride = 16 if cfg.backbone == "inceptionv3" else cfg.output_stride  # InceptionV3 has stride 16 only
        self.backbone = build_backbone(cfg.backbone, cfg.width, stride, 0, "paper", cfg.batch_norm)
        self.head = nn.Linear(self.backbone.out_channels, cfg.data.classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (B, 3, H, W) normalised. Returns: logits (B, classes)."""
        return self.head(self.backbone(images).mean(dim=(2, 3)))  # (B, classes)


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> ImageNet-normalised float32 (B, 3, H, W), as the benchmark's inputs."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def cosine_lr(base: float, step: int, total: int) -> float:
    """``base * (1 + cos(pi * step / total)) / 2``: base at step 0, 0 at ``total``."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / total))


def evaluate_top1(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on uint8 images."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            logits = model(to_input(images[i:i + batch_size]))  # (b, classes)
            correct += int((logits.argmax(1) == torch.as_tensor(labels[i:i + batch_size])).sum())
    model.train()
    return correct / max(len(images), 1)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, images: np.ndarray, labels: np.ndarray,
                    epoch: int, cfg: PretrainConfig, on_step: Callable[[int, int, float], None]) -> float:
    """One pass over the train split in the epoch's seeded order, with seeded flips; returns the mean loss."""
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "order", epoch))
    order = torch.randperm(len(images), generator=gen)
    flips = torch.rand(len(images), generator=gen) < 0.5
    steps = math.ceil(len(images) / cfg.batch_size)
    total = 0.0
    for step in range(steps):
        idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        x = to_input(images[idx.numpy()])  # (b, 3, H, W)
        x = torch.where(flips[idx].view(-1, 1, 1, 1), x.flip(3), x)
        y = torch.as_tensor(labels[idx.numpy()])
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(cfg.lr, epoch * steps + step, cfg.epochs * steps)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        on_step(step + 1, steps, loss.item())
    return total / steps


def _signature(cfg: PretrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg)))


def _save_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                history: list[dict[str, float]], cfg: PretrainConfig) -> None:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "history": history, "config": _signature(cfg)}, buffer)
    atomic_write_bytes(out / STATE_FILE, buffer.getvalue())


def _load_state(out: Path, cfg: PretrainConfig) -> dict[str, Any] | None:
    path = out / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise RunError(f"{path}: unreadable pretraining position ({type(exc).__name__}); delete it to restart") from None
    if state.get("config") != _signature(cfg):
        raise RunError(f"{path}: a pretraining position of another config; use another folder or delete it")
    return state


def weights_name(cfg: PretrainConfig) -> str:
    """File stem of the shipped weights: ``vgg16_bn-w0.125`` style."""
    name = cfg.backbone + ("_bn" if cfg.batch_norm and cfg.backbone == "vgg16" else "")
    return f"{name}-w{cfg.width:g}"


def export_weights(model: Classifier, cfg: PretrainConfig, out: Path, history: list[dict[str, float]],
                   seconds: float) -> Path:
    """Write the backbone's torchvision-format state dict in fp16 and its sidecar JSON (recipe, sha256).

    Returns:
        The weights file ``out/<weights_name>.pt``; the sidecar is the same path with ``.json``.
    """
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.backbone.state_dict().items()
             if not k.startswith("nonlocal_blocks.")}
    path = out / f"{weights_name(cfg)}.pt"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    sidecar = {
        "file": path.name,
        "sha256": file_sha256(path),
        "format": "torchvision state dict of the backbone (torchvision's module names), fp16; no non-local blocks",
        "recipe": _signature(cfg),
        "pretraining_set": {"fingerprint": fingerprint(cfg.data), "classes": cfg.data.classes,
                            "generator": "kdcicam.data.pretraining_set"},
        "history": history,
        "train_seconds": round(seconds, 1),
        "command": (f"kdcicam pretrain OUT --backbone {cfg.backbone} --epochs {cfg.epochs} "
                    f"--per-class {cfg.data.per_class} --size {cfg.data.size} --seed {cfg.seed} --width {cfg.width:g}"),
    }
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(sidecar, indent=1) + "\n").encode())
    return path


def pretrain(cfg: PretrainConfig, out: Path, on_step: Callable[[int, int, float], None] | None = None,
             on_epoch: Callable[[dict[str, float]], None] | None = None) -> Path:
    """Pretrain, resuming from ``out/pretrain-state.pt`` when present, and export the weights.

    Args:
        cfg: the backbone and recipe.
        out: folder for the position and the weights (created).
        on_step: called with (step, steps, loss) after every step (progress display).
        on_epoch: called with the epoch's record (epoch, loss, val_top1, seconds).

    Returns:
        The exported weights file.
    """
    cfg.validate()
    out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed, deterministic=True)
    torch.manual_seed(derive_seed(cfg.seed, "init") % 2**63)
    model = Classifier(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, float]] = []
    start = 0
    state = _load_state(out, cfg)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = int(state["epoch"]), list(state["history"])
    train_x, train_y = generate_split(cfg.data, "train")
    val_x, val_y = generate_split(cfg.data, "val")
    step_cb = on_step or (lambda *_: None)
    for epoch in range(start, cfg.epochs):
        began = time.perf_counter()
        loss = train_one_epoch(model, optimizer, train_x, train_y, epoch, cfg, step_cb)
        record = {"epoch": epoch + 1, "loss": round(loss, 4),
                  "val_top1": round(evaluate_top1(model, val_x, val_y, cfg.batch_size), 4),
                  "seconds": round(time.perf_counter() - began, 1)}
        history.append(record)
        _save_state(out, model, optimizer, epoch + 1, history, cfg)
        if on_epoch is not None:
            on_epoch(record)
    return export_weights(model, cfg, out, history, sum(r["seconds"] for r in history))
