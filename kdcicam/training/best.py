"""Checkpoint selection and positions: which epoch is the best by each criterion, where a
checkpoint stands, and the repair of best files after a crash."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcicam.core.config import RunConfig, to_dict
from kdcicam.core.errors import RunError
from kdcicam.training.checkpoint import load_checkpoint, save_checkpoint

# Selection criteria, each the validation metric that picks its kept checkpoint (Table 5 selects the
# loc teacher by GT-known vs Top-1 Loc; "last" is the final epoch).
CRITERIA: tuple[str, ...] = ("top1_loc", "gt_known_loc", "top1_cls")


@dataclass(frozen=True)
class Position:
    """Where a training checkpoint stands."""

    epoch: int  # 0-based epoch the checkpoint belongs to
    step: int  # batches of that epoch trained
    epoch_done: bool  # the epoch is trained, validated and stored: the next one starts from here

    def describe(self, epochs: int) -> str:
        if self.epoch_done:
            return f"after epoch {self.epoch + 1}/{epochs}"
        return f"at epoch {self.epoch + 1}/{epochs}, step {self.step}"


def position_of(state: dict[str, Any]) -> Position:
    """A checkpoint's position (files without ``step`` are end-of-epoch checkpoints)."""
    return Position(int(state["epoch"]), int(state.get("step", 0)), bool(state.get("epoch_done", True)))


def update_best(best: dict[str, dict[str, float]], epoch: int, metrics: dict[str, float]) -> list[str]:
    """Record ``epoch`` as the best of every criterion its validation metrics improve (ties keep the earlier).

    Returns:
        The criteria ``epoch`` is now the best of (their ``best_<criterion>.pt`` must be written).
    """
    improved = []
    for criterion in CRITERIA:  # each criterion is the name of the metric it reads
        value = metrics.get(criterion)
        if value is None or not math.isfinite(float(value)):
            continue
        if criterion not in best or float(value) > best[criterion]["value"]:
            best[criterion] = {"epoch": epoch, "value": float(value)}
            improved.append(criterion)
    return improved


def best_state(model_state: dict[str, Any], epoch: int, cfg: RunConfig) -> dict[str, Any]:
    return {"model": model_state, "epoch": epoch, "config": to_dict(cfg)}


def reconcile_best(run_dir: Path, best: dict[str, dict[str, float]], state: dict[str, Any],
                   cfg: RunConfig) -> list[str]:
    """Make every ``best_<criterion>.pt`` hold the epoch ``best`` (from the resumed checkpoint) names.

    Best files are written after the commit of their epoch, so a crash may leave the newest one
    unwritten: it is rewritten from the checkpoint, which holds that epoch's weights. A file whose
    epoch's weights are gone (the run fell back to ``prev.pt``) drops its criterion, with a warning:
    the next epochs compete for it afresh.
    """
    warnings = []
    pos = position_of(state)
    for criterion, record in list(best.items()):
        path = run_dir / f"best_{criterion}.pt"
        try:
            held = int(load_checkpoint(path)["epoch"]) if path.exists() else None
        except RunError:
            held = None
        if held == record["epoch"]:
            continue
        if pos.epoch_done and record["epoch"] == pos.epoch:
            save_checkpoint(best_state(state["model"], pos.epoch, cfg), run_dir, path.name)
            continue
        del best[criterion]
        warnings.append(f"{path} holds epoch {'none' if held is None else held + 1}, not the best epoch "
                        f"{record['epoch'] + 1} by {criterion}, whose weights are gone: later epochs compete afresh")
    return warnings
