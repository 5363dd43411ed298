"""Worker of tests/test_ddp.py: trains a tiny CI-CAM with :func:`kdcicam.training.trainer.fit` on one process, or as one
rank of a gloo process group (started by ``torch.multiprocessing.spawn``), and saves what it ended with.

Kept out of the test module so the spawned processes import only this (and kdcicam), not pytest's test file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

IMAGES, CLASSES, SIDE = 24, 4, 32  # 24 images in global batches of 8: 3 steps per epoch


class TinySet(Dataset):
    """Fixed random images (a pure function of the index) with labels i % 4, in WSOLDataset's item format."""

    def __len__(self) -> int:
        return IMAGES

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(1000 + i)
        image = torch.randn(3, SIDE, SIDE, generator=g)  # (3, H, W)
        box = torch.tensor([[4.0, 4.0, 20.0, 20.0]])  # (1, 4)
        return {"image": image, "label": i % CLASSES, "boxes": box, "orig_boxes": box, "orig_size": (SIDE, SIDE),
                "index": i, "image_id": f"img{i}"}


def tiny_config(role: str, variant: str, batch_size: int = 8, epochs: int = 1, **sets):
    """The smoke profile's network (vgg16, width 1/16, 2 non-local blocks) on 32 px inputs."""
    from kdcicam.registry.ablations import load_registry
    from kdcicam.registry.resolve import Scope, resolve_config

    cfg = resolve_config(load_registry(None), scope=Scope(dataset="synthetic", backbone="vgg16"), profile="smoke",
                         variant=variant, role=role, context_pool=True, seed=0, num_classes=CLASSES,
                         cli_overrides={"train.batch_size": batch_size, "train.epochs": epochs,
                                        "train.deterministic": True, "train.device": "cpu", **sets})
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=CLASSES)).validate()


def train(out: Path, role: str, variant: str, dist=None, reduce_pool: bool = True, sets: dict | None = None) -> None:
    """Fit one epoch; rank 0 (or the one process) writes ``out/run/last.pt``; every rank saves its final
    state dict as ``out/rank<r>.pt`` and the epoch's mean loss terms as ``out/terms<r>.json``."""
    from kdcicam.core.runtime import set_seed
    from kdcicam.model.factory import build_model
    from kdcicam.training.recipes import TeacherSet, recipe_for
    from kdcicam.training.trainer import fit

    torch.set_default_dtype(torch.float64)
    cfg = tiny_config(role, variant, **(sets or {}))
    set_seed(cfg.train.seed, cfg.train.deterministic)
    model = build_model(cfg.model, cfg.variant, input_size=SIDE)
    if not reduce_pool:  # the negative control: each rank updates its pool from its own images only
        model.context_pool.reduce = lambda total, touched: (total, touched)
    recipe = recipe_for(cfg.loss, cfg.variant)
    teachers = None
    if role == "distilled":  # untrained teachers of their own seeds: only their outputs matter here
        set_seed(cfg.train.seed + 1, cfg.train.deterministic)
        teachers = TeacherSet(cls_model=build_model(cfg.model, cfg.variant, input_size=SIDE),
                              loc_model=build_model(cfg.model, cfg.variant, input_size=SIDE))
    result = fit(model, recipe, cfg, TinySet(), out / "run", torch.device("cpu"), teachers=teachers, dist=dist)
    rank = 0 if dist is None else dist.rank
    torch.save(model.state_dict(), out / f"rank{rank}.pt")
    (out / f"terms{rank}.json").write_text(json.dumps(result.epochs[0].terms))  # the epoch's logged means


SCENARIOS = {  # name -> (role, variant, reduce the pool's contributions, config overrides)
    "student-reference": ("student", "reference", True, {}),
    "loc_teacher-paper": ("loc_teacher", "paper", True, {"loss.fg_threshold_loc": 0.5}),
    "student-reference-unreduced": ("student", "reference", False, {}),
    "distilled-reference": ("distilled", "reference", True,  # per-sample ε: each KD term over a subset
                            {"teachers.cls_run": "0" * 16, "teachers.loc_run": "1" * 16}),
}


def rank_main(rank: int, world: int, port: int, root: str) -> None:
    """One rank of a gloo group: every scenario of :data:`SCENARIOS`, each into ``root/<name>/``."""
    import torch.distributed as dist

    from kdcicam.training.distributed import DistContext

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world_size=world, local_rank=rank, control=dist.new_group(backend="gloo"))
    try:
        for name, (role, variant, reduce_pool, sets) in SCENARIOS.items():
            train(Path(root) / name, role, variant, dist=ctx, reduce_pool=reduce_pool, sets=sets)
    finally:
        dist.destroy_process_group()
