"""The shared trainer: one loop for every role (student, both teachers, distilled student).

The role only changes the loss recipe (:mod:`kdcicam.recipes`); the loop, the optimizer, the
checkpoints and the per-epoch validation are the same for all. Shaped like torchvision's
classification reference: :func:`train_one_epoch` receives everything it uses, :func:`fit` owns the
epoch loop, resume and checkpoint selection.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from kdcicam.checkpoint import load_resume_state, rotate_last, save_checkpoint
from kdcicam.config import RunConfig, to_dict
from kdcicam.errors import RunError
from kdcicam.model.factory import param_groups
from kdcicam.recipes import Recipe, TeacherSet, compute_loss

# Selection criteria: which validation metric picks each kept checkpoint (Table 5 selects the
# loc teacher by GT-known vs Top-1 Loc; "last" is the final epoch).
CRITERIA: dict[str, str] = {
    "top1_loc": "top1_loc",
    "gt_known_loc": "gt_known_loc",
    "top1_cls": "top1_cls",
}


class DivergedError(RunError):
    """A loss term became NaN or infinite: the run stops as failed, naming the step and term."""


@dataclass
class EpochLog:
    epoch: int
    terms: dict[str, float]  # mean of each loss term over the epoch
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


@dataclass
class FitResult:
    epochs: list[EpochLog] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)  # per-epoch validation metrics
    best: dict[str, dict[str, float]] = field(default_factory=dict)  # criterion -> {epoch, value}
    resumed_from: int | None = None  # epoch the run resumed after, None for a fresh run
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def lr_factor(epoch: int, cfg: RunConfig) -> float:
    """Multiplier of the base learning rate at (0-based) ``epoch``.

    ``constant``: 1. ``cosine``: half-cosine to 0 over the run. ``reference`` (the authors' code):
    poly decay (1 - e/E)^0.9, times 0.5 every ``halve_every`` epochs.
    """
    t = cfg.train
    if t.lr_schedule == "constant":
        return 1.0
    if t.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / t.epochs))
    factor = (1.0 - epoch / t.epochs) ** 0.9
    if t.halve_every > 0:
        factor *= 0.5 ** (epoch // t.halve_every)
    return factor


def build_optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam(β1, β2) over the model's parameter groups (backbone at ``backbone_lr_mult`` x lr)."""
    groups = param_groups(model, cfg.train.lr, cfg.train.backbone_lr_mult)
    for g in groups:
        g["initial_lr"] = g["lr"]
    kwargs: dict[str, Any] = dict(betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay)
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.Adam(groups, **kwargs)


def set_epoch_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def train_one_epoch(
    model: torch.nn.Module,
    recipe: Recipe,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    epoch: int,
    *,
    cfg: RunConfig,
    teachers: TeacherSet | None,
    generator: torch.Generator,
    read_every: int = 20,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
) -> EpochLog:
    """Train for one epoch; returns the mean of every loss term.

    Losses are read back to the host every ``read_every`` steps (and at the end), so the GPU is
    not synchronised at every step; a non-finite term raises :class:`DivergedError` naming it.
    """
    model.train()
    sums: dict[str, torch.Tensor] = {}
    pending: list[dict[str, torch.Tensor]] = []
    count = 0
    images_seen = 0
    start = time.perf_counter()
    total_steps = len(loader)

    def flush(step: int) -> dict[str, float]:
        nonlocal pending
        means: dict[str, float] = {}
        for terms in pending:
            for name, value in terms.items():
                v = float(value)
                if not math.isfinite(v):
                    raise DivergedError(
                        f"loss term '{name}' is {v} at epoch {epoch + 1}, step {step + 1}: the run diverged "
                        f"(try a lower train.lr)")
                sums[name] = sums.get(name, 0.0) + v
        pending = []
        for name, total in sums.items():
            means[name] = float(total) / max(count, 1)
        return means

    for step, batch in enumerate(loader):
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        if cfg.train.channels_last and device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg.train.amp):
            result = compute_loss(model, images, labels, recipe, cfg.variant, teachers=teachers,
                                  generator=generator, loss_cfg=cfg.loss)
        optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        optimizer.step()
        pending.append({k: v.detach() for k, v in result.terms.items()})
        count += 1
        images_seen += images.shape[0]
        if (step + 1) % read_every == 0 or step + 1 == total_steps:
            means = flush(step)
            if on_step is not None:
                on_step(step + 1, total_steps, means)
    means = flush(total_steps - 1) if pending else {k: float(v) / max(count, 1) for k, v in sums.items()}
    return EpochLog(epoch=epoch, terms=means, images=images_seen, seconds=time.perf_counter() - start)


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2] if random.getstate()[2] is not None else -1,
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    gauss = None if state["python_pos"] == -1 else state["python_pos"]
    random.setstate((3, tuple(state["python"]), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The data order of an epoch: a permutation drawn from (seed, epoch) alone, so a resumed run
    visits the same images in the same order as an uninterrupted one."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=g).tolist()


def fit(
    model: torch.nn.Module,
    recipe: Recipe,
    cfg: RunConfig,
    train_set: torch.utils.data.Dataset,
    run_dir: Path,
    device: torch.device,
    *,
    validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    teachers: TeacherSet | None = None,
    on_epoch: Callable[[EpochLog, dict[str, float]], None] | None = None,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.train.epochs`` epochs, resuming from ``run_dir`` if it holds a checkpoint.

    Every epoch: train, validate (``validate(model)`` on the held-out validation split), save
    ``last.pt`` (with optimizer, context pool, RNG states, epoch) atomically, and keep the best
    checkpoint for each selection criterion in :data:`CRITERIA`.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    optimizer = build_optimizer(model, cfg, device)
    generator = torch.Generator().manual_seed(cfg.train.seed)  # ε draws, data order is separate
    result = FitResult()
    start_epoch = 0
    best: dict[str, dict[str, float]] = {}
    state, warnings = load_resume_state(run_dir, map_location=device)
    result.warnings.extend(warnings)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], generator, device)
        start_epoch = int(state["epoch"]) + 1
        best = state.get("best", {})
        result.val = list(state.get("val_history", []))
        result.resumed_from = int(state["epoch"])
    t0 = time.perf_counter()
    for epoch in range(start_epoch, cfg.train.epochs):
        set_epoch_lr(optimizer, lr_factor(epoch, cfg))
        order = epoch_order(len(train_set), cfg.train.seed, epoch)
        loader = DataLoader(
            torch.utils.data.Subset(train_set, order), batch_size=cfg.train.batch_size, shuffle=False,
            num_workers=cfg.train.num_workers, collate_fn=_collate(), drop_last=len(order) > cfg.train.batch_size,
            pin_memory=device.type == "cuda")
        log = train_one_epoch(model, recipe, optimizer, loader, device, epoch, cfg=cfg, teachers=teachers,
                              generator=generator, on_step=on_step)
        result.epochs.append(log)
        val_metrics = validate(model) if validate is not None else {}
        result.val.append({"epoch": epoch, **val_metrics})
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(generator, device),
            "epoch": epoch,
            "config": to_dict(cfg),
            "val_history": result.val,
        }
        for criterion, metric in CRITERIA.items():
            value = val_metrics.get(metric)
            if value is None:
                continue
            if criterion not in best or value > best[criterion]["value"]:
                best[criterion] = {"epoch": epoch, "value": float(value)}
                save_checkpoint({"model": model.state_dict(), "epoch": epoch, "config": to_dict(cfg)},
                                run_dir, f"best_{criterion}.pt")
        state["best"] = best
        rotate_last(run_dir)
        save_checkpoint(state, run_dir, "last.pt")
        if on_epoch is not None:
            on_epoch(log, val_metrics)
    result.best = best
    result.seconds = time.perf_counter() - t0
    return result


def _collate():
    from kdcicam.data.dataset import collate_wsol

    return collate_wsol
