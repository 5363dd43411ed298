"""The per-epoch evaluations of a run in training (fit's ``validate``), and how they are stored."""

from __future__ import annotations

import torch

from kdcicam.core.config import RunConfig
from kdcicam.data.base import DatasetIndex
from kdcicam.data.cache import FrameStore
from kdcicam.evaluation.evaluator import evaluate
from kdcicam.evaluation.selection import AUDIT_SPLIT, DECISION_SPLIT
from kdcicam.store import Store

VAL_PROTOCOL = "paper"  # checkpoint selection reads validation metrics under this protocol


class EpochEvals:
    """The per-epoch evaluations behind fit's ``validate`` callback, and how they are stored.

    ``eval.select_on = "val"``: the validation split's numbers pick checkpoints (epoch split
    "val"); with ``eval.audit_epochs`` the test split is also scored and stored as "test_audit",
    which no decision reads. ``"test"`` (the authors' behaviour): the test split's numbers pick
    checkpoints (epoch split "test_decision", each epoch one test decision); the validation split is still
    scored and stored as "val", unused. All under the paper protocol at the fixed θ.
    """

    def __init__(self, cfg: RunConfig, index: DatasetIndex, device: torch.device, batch_size: int,
                 frames: FrameStore | None = None) -> None:
        self.cfg = cfg
        self.index = index
        self.device = device
        self.batch_size = batch_size
        self.frames = frames
        self.extra: dict[str, dict[str, float]] = {}  # split -> metrics of the epoch just scored

    def _score(self, model: torch.nn.Module, samples: list) -> dict[str, float]:
        if not samples:
            return {}
        return evaluate(model, samples, self.cfg, VAL_PROTOCOL, self.device, batch_size=self.batch_size,
                        frames=self.frames).metrics

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """Score the epoch's model; returns the numbers that pick checkpoints (fit's ``validate``)."""
        self.extra = {}
        if self.cfg.eval.select_on == "test":
            self.extra["val"] = self._score(model, self.index.val)
            return self._score(model, self.index.test)
        if self.cfg.eval.audit_epochs:
            self.extra[AUDIT_SPLIT] = self._score(model, self.index.test)
        return self._score(model, self.index.val)

    def store(self, store: Store, run_id: str, epoch: int, decision: dict[str, float]) -> None:
        """Record the epoch's numbers: the deciding split's, then the others'."""
        if decision:
            store.add_epoch_metrics(run_id, epoch, DECISION_SPLIT[self.cfg.eval.select_on], decision)
        for split, metrics in self.extra.items():
            if metrics:
                store.add_epoch_metrics(run_id, epoch, split, metrics)
        self.extra = {}
