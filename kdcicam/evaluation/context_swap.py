"""Context reliance: Top-1 Cls of a split's context-swapped copy, beside the split's own.

The synthetic benchmark writes, for every test image, a copy with the same object on another class's
context (:mod:`kdcicam.data.mechanism_files`). One forward pass over the copies, with the standard
protocol's test transform, gives each image's Top-1 correctness there; the split's result gains it per
record (``correct_top1_cls_context_swapped``) and as ``top1_cls_context_swapped`` and
``context_reliance`` (:func:`kdcicam.evaluation.mechanism.reliance_metrics`). Only logits are read: no
box, no sweep, so the pass costs one classification of the split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import torch
from torch.utils.data import DataLoader

from kdcicam.core.config import RunConfig
from kdcicam.data.base import Sample
from kdcicam.data.cache import FrameStore, test_batches
from kdcicam.data.dataset import WSOLDataset, collate_wsol
from kdcicam.data.mechanism_files import context_swapped
from kdcicam.evaluation.eval_result import EvalResult
from kdcicam.evaluation.mechanism import SWAPPED_FIELD, reliance_metrics
from kdcicam.evaluation.protocols import protocol_transform

SWAP_PROTOCOL = "standard"  # the copies are classified as the standard protocol sees an image


@torch.no_grad()
def top1_correct(model: torch.nn.Module, samples: Sequence[Sample], cfg: RunConfig, device: torch.device, *,
                 batch_size: int = 64, frames: FrameStore | None = None) -> list[bool]:
    """Per sample, whether the network's top class (ranked by logits, ties to the lower class, as the
    evaluator ranks) is its label, under the standard protocol's test transform."""
    transform = protocol_transform(cfg, SWAP_PROTOCOL)
    if frames is not None:
        loader: Iterable[dict] = test_batches(frames.get(samples, transform), batch_size, device)
    else:
        loader = DataLoader(WSOLDataset(samples, transform), batch_size=batch_size, shuffle=False,
                            collate_fn=collate_wsol)
    was_training = model.training
    model.eval()
    correct: list[bool] = []
    for batch in loader:
        logits = model(batch["image"].to(device), update_pool=False).logits_e.float()  # (B, n)
        top1 = logits.sort(dim=1, descending=True, stable=True).indices[:, 0].cpu()  # (B,)
        correct += (top1 == batch["label"].cpu()).tolist()
    if was_training:
        model.train()
    return correct


def with_context_swap(result: EvalResult, model: torch.nn.Module, samples: Sequence[Sample], cfg: RunConfig,
                      device: torch.device, *, batch_size: int = 64,
                      frames: FrameStore | None = None) -> EvalResult:
    """``result`` (the standard protocol on ``samples``) with the context-swapped copy's Top-1 added.

    Returns:
        ``result`` unchanged when the samples have no copies (a real dataset, a split without copies)
        or the result is of another protocol; else a new result whose records carry
        ``correct_top1_cls_context_swapped`` and whose metrics carry ``top1_cls_context_swapped`` and
        ``context_reliance``.
    """
    if result.protocol != SWAP_PROTOCOL or not result.records:
        return result
    copies = context_swapped(samples)
    if copies is None:
        return result
    swapped = top1_correct(model, copies, cfg, device, batch_size=batch_size, frames=frames)
    records = [{**r, SWAPPED_FIELD: ok} for r, ok in zip(result.records, swapped, strict=True)]
    metrics = {**result.metrics, **reliance_metrics([r["correct_top1_cls"] for r in records], swapped)}
    return dataclasses.replace(result, records=records, metrics=metrics)
