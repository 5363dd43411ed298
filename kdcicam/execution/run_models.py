"""Finished runs as networks: the checkpoint a selection names, a run's model, a distilled run's teachers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from kdcicam.core.config import RunConfig, from_dict
from kdcicam.core.errors import RunError
from kdcicam.model.factory import build_model
from kdcicam.store import Store
from kdcicam.training.checkpoint import load_checkpoint
from kdcicam.training.recipes import TeacherSet


def checkpoint_for(artifacts_dir: Path, selection: str) -> Path:
    """The checkpoint file a selection criterion names (``last`` or ``best_<criterion>``)."""
    return Path(artifacts_dir) / ("last.pt" if selection == "last" else f"best_{selection}.pt")


def run_model_source(store: Store, run_id: str, selection: str) -> tuple[dict[str, Any], str]:
    """A finished run's (config dict, checkpoint path) at the checkpoint ``selection`` picks.

    Raises:
        RunError: the run is not finished.
    """
    info = store.get_run(run_id)
    if info.status != "finished":
        raise RunError(f"run {run_id[:12]} is {info.status}, not finished: it cannot be used yet")
    return dict(info.config), str(checkpoint_for(Path(info.artifacts_dir), selection))


def model_from_source(config: dict[str, Any], checkpoint: str, device: torch.device) -> torch.nn.Module:
    """The network a (config dict, checkpoint path) pair describes, in eval mode."""
    cfg = from_dict(RunConfig, config, where=f"{checkpoint} config")
    # the checkpoint holds every weight: never re-read the ImageNet file for a trained run
    model = build_model(dataclasses.replace(cfg.model, weights=None), cfg.variant, input_size=cfg.data.crop)
    state = load_checkpoint(Path(checkpoint), map_location=device)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def load_run_model(store: Store, run_id: str, selection: str, device: torch.device) -> torch.nn.Module:
    """A finished run's network at the checkpoint ``selection`` picks, in eval mode."""
    return model_from_source(*run_model_source(store, run_id, selection), device)


def teacher_sources(cfg: RunConfig, store: Store) -> dict[str, tuple[dict[str, Any], str]]:
    """The teachers a run distils from: ``"cls"`` / ``"loc"`` -> (config dict, checkpoint path).

    Plain data, so rank 0 can send it to ranks that never open the store.
    """
    t = cfg.teachers
    out = {}
    if t.cls_run:
        out["cls"] = run_model_source(store, t.cls_run, t.cls_select)
    if t.loc_run:
        out["loc"] = run_model_source(store, t.loc_run, t.loc_select)
    return out


def build_teachers(sources: dict[str, tuple[dict[str, Any], str]], device: torch.device) -> TeacherSet | None:
    """The teacher networks of :func:`teacher_sources` (None: the run distils from none)."""
    if not sources:
        return None
    return TeacherSet(cls_model=model_from_source(*sources["cls"], device) if "cls" in sources else None,
                      loc_model=model_from_source(*sources["loc"], device) if "loc" in sources else None)
