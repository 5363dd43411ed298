"""One epoch (or its remainder) of training: the steps, the loss terms read back in batches, and
their means over every rank."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from kdcicam.core.config import RunConfig
from kdcicam.core.errors import RunError
from kdcicam.core.runtime import crash_point
from kdcicam.training.distributed import DistContext, gather_objects
from kdcicam.training.recipes import Recipe, TeacherSet, compute_loss
from kdcicam.training.streams import seed_step, skip_draws


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
class EpochProgress:
    """Running totals of one epoch; saved in a mid-epoch checkpoint so a resumed epoch's means are exact."""

    sums: dict[str, float] = field(default_factory=dict)  # per loss term, summed over steps in order
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    def means(self) -> dict[str, float]:
        return {name: total / max(self.steps, 1) for name, total in self.sums.items()}


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def train_one_epoch(
    model: torch.nn.Module,
    recipe: Recipe,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[dict],
    device: torch.device,
    epoch: int,
    *,
    cfg: RunConfig,
    teachers: TeacherSet | None,
    generator: torch.Generator,
    read_every: int = 20,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    start_step: int = 0,
    total_steps: int | None = None,
    progress: EpochProgress | None = None,
    after_step: Callable[[int, Callable[[], EpochProgress]], None] | None = None,
    dist: DistContext | None = None,
    draw_offset: int = 0,
) -> EpochLog:
    """Train for one epoch (or its remainder); returns the mean of every loss term.

    Losses are read back to the host every ``read_every`` steps (and at the end), so the GPU is
    not synchronised at every step; a non-finite term raises :class:`DivergedError` naming it.

    Args:
        loader: the epoch's batches from ``start_step`` on.
        start_step: batches of this epoch trained before (a resumed epoch).
        total_steps: batches in the whole epoch (default ``start_step + len(loader)``).
        progress: the totals of the steps before ``start_step``; updated in place.
        after_step: called after every step with (steps done, ``flush``); ``flush()`` reads the
            pending terms back, checks them, and returns the epoch's totals so far (for a checkpoint).
        dist: this process's place in a multi-process run (None: one process). ``flush`` then combines
            every rank's terms (weighted by batch size: the global batch's means), on every rank.
        draw_offset: per-sample ε draws of the ranks before this one in each global batch (skipped).
    """
    model.train()
    progress = progress if progress is not None else EpochProgress()
    total = total_steps if total_steps is not None else start_step + len(loader)
    pending: list[tuple[int, dict[str, torch.Tensor], int]] = []  # (step, terms, images)
    start, seconds_before = time.perf_counter(), progress.seconds
    skip = draw_offset if recipe.epsilon == "sample" else 0  # per-step ε: every rank draws the same value

    def flush() -> EpochProgress:
        local = [(step, {name: float(value) for name, value in terms.items()}, n) for step, terms, n in pending]
        for step, terms, n in _combine_ranks(gather_objects(local, dist)):
            for name, v in terms.items():
                if not math.isfinite(v):
                    raise DivergedError(
                        f"loss term '{name}' is {v} at epoch {epoch + 1}, step {step + 1}: the run diverged "
                        f"(try a lower train.lr)")
                progress.sums[name] = progress.sums.get(name, 0.0) + v
            progress.images += n
        pending.clear()
        progress.seconds = seconds_before + time.perf_counter() - start
        return progress

    for i, batch in enumerate(loader):
        step = start_step + i
        seed_step(cfg.train.seed, epoch, step, generator, device)
        skip_draws(generator, skip)
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        if cfg.train.channels_last and device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg.train.amp):
            result = compute_loss(model, images, labels, recipe, cfg.variant, teachers=teachers,
                                  generator=generator, loss_cfg=cfg.loss, epsilon=batch.get("epsilon"))
        optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        optimizer.step()
        pending.append((step, {k: v.detach() for k, v in result.terms.items()}, int(images.shape[0])))
        progress.steps += 1
        crash_point("after-step")
        if (step + 1) % read_every == 0 or step + 1 == total:
            flush()
            if on_step is not None:
                on_step(step + 1, total, progress.means())
        if after_step is not None:
            after_step(step + 1, flush)
    flush()
    return EpochLog(epoch=epoch, terms=progress.means(), images=progress.images, seconds=progress.seconds)


def _combine_ranks(per_rank: list[list[tuple[int, dict[str, float], int]]]) -> list[tuple[int, dict[str, float], int]]:
    """Each step's loss terms over every rank: the mean weighted by each rank's batch size (the global
    batch's mean, for a term that is a batch mean), and the images of all ranks. One rank: unchanged."""
    if len(per_rank) == 1:
        return per_rank[0]
    out = []
    for entries in zip(*per_rank):
        step = entries[0][0]
        names = sorted({name for _, terms, _ in entries for name in terms})  # a KD term may be drawn on some ranks only
        combined = {}
        for name in names:
            held = [(terms[name], n) for _, terms, n in entries if name in terms]
            combined[name] = sum(v * n for v, n in held) / max(sum(n for _, n in held), 1)
        out.append((step, combined, sum(n for _, _, n in entries)))
    return out
