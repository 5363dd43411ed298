"""The trainer: schedules, data order, one epoch, every role, divergence, best checkpoints, and
resume after a crash or Ctrl-C at any step (in-process, so each case takes seconds)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from _faults import Crash, inject, weights_validate
from _runs import one_thread, smoke_cache, smoke_config, smoke_index, with_classes  # noqa: F401

from kdcicam.core.config import ModelConfig
from kdcicam.core.runtime import derive_seed, set_seed
from kdcicam.data.dataset import WSOLDataset
from kdcicam.data.transforms import train_transform
from kdcicam.execution.holders import process_alive
from kdcicam.model.factory import build_model
from kdcicam.training import checkpoint as ckpt_mod
from kdcicam.training import epoch as epoch_mod
from kdcicam.training import trainer as train_mod
from kdcicam.training.best import Position, update_best
from kdcicam.training.checkpoint import load_checkpoint
from kdcicam.training.epoch import DivergedError, train_one_epoch
from kdcicam.training.interrupts import TrainingInterrupted
from kdcicam.training.recipes import TeacherSet, recipe_for
from kdcicam.training.schedule import build_optimizer, lr_factor
from kdcicam.training.streams import EpochView, epoch_order, steps_per_epoch
from kdcicam.training.trainer import fit

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ModelConfig(width=0.0625, output_stride=4, nonlocal_blocks=2, num_classes=2)


# ----------------------------------------------------------------------------- lr schedules

def _sched(schedule: str, epochs: int, halve_every: int = 0):
    return smoke_config(**{"train.lr_schedule": schedule, "train.epochs": epochs, "train.halve_every": halve_every})


@pytest.mark.parametrize("schedule, epochs, halve, expected", [
    ("constant", 4, 0, [1.0, 1.0, 1.0, 1.0]),
    # 0.5 * (1 + cos(pi * e / 4)): cos(0) = 1 -> 1; cos(pi/4) = 0.70711 -> 0.85355; cos(pi/2) = 0 -> 0.5;
    # cos(3pi/4) = -0.70711 -> 0.14645
    ("cosine", 4, 0, [1.0, 0.8535533906, 0.5, 0.1464466094]),
    # (1 - e/10)^0.9 at e = 0, 5, 8: 1; 0.5^0.9 = exp(0.9 * -0.6931472) = exp(-0.6238325) = 0.5358867;
    # 0.2^0.9 = exp(0.9 * -1.6094379) = exp(-1.4484941) = 0.2349238
    ("reference", 10, 0, {0: 1.0, 5: 0.5358867, 8: 0.2349238}),
    # halving every 4 epochs: e=3 (3 // 4 = 0: none yet) -> 0.7^0.9 = exp(0.9 * -0.3566749) = 0.7254178;
    # e=5 -> 0.5358867 * 0.5^1 = 0.2679434; e=8 -> 0.2349238 * 0.5^2 = 0.0587309
    ("reference", 10, 4, {0: 1.0, 3: 0.7254178, 5: 0.2679434, 8: 0.0587309}),
])
def test_lr_schedules_match_hand_computed_values(schedule, epochs, halve, expected):
    cfg = _sched(schedule, epochs, halve)
    points = expected.items() if isinstance(expected, dict) else enumerate(expected)
    for epoch, value in points:
        assert lr_factor(epoch, cfg) == pytest.approx(value, abs=1e-6), (schedule, epoch)


# ----------------------------------------------------------------------------- random streams

def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    first = epoch_order(50, seed=3, epoch=2)
    torch.manual_seed(12345)  # the global RNG must not matter
    torch.rand(100)
    assert epoch_order(50, seed=3, epoch=2) == first
    assert sorted(first) == list(range(50))  # a permutation
    assert epoch_order(50, seed=3, epoch=3) != first
    assert epoch_order(50, seed=4, epoch=2) != first


@pytest.mark.parametrize("n, bs, steps", [(64, 16, 4), (70, 16, 4), (16, 16, 1), (10, 16, 1), (17, 16, 1), (0, 16, 0)])
def test_steps_per_epoch_drops_a_last_partial_batch_unless_it_is_the_only_one(n, bs, steps):
    # 70 // 16 = 4 (6 images dropped); 17 // 16 = 1; 10 <= 16: one batch of 10
    assert steps_per_epoch(n, bs) == steps


class _NoisyData(torch.utils.data.Dataset):
    """Item i = i + a uniform draw from torch's global RNG (a stand-in for a random augmentation)."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return i + float(torch.rand(()))


def test_augmentation_depends_on_seed_epoch_and_index_only_and_leaves_the_global_rng_alone():
    view = EpochView(_NoisyData(), [5, 0, 3], seed=1, epoch=0)
    torch.manual_seed(7)
    draws = [view[k] for k in range(3)]
    after = torch.rand(())
    torch.manual_seed(7)
    assert torch.rand(()) == after  # the view forked the global RNG: its state is untouched
    assert [view[k] for k in (2, 1, 0)] == draws[::-1]  # any access order gives each image its draw
    assert EpochView(_NoisyData(), [3], seed=1, epoch=0)[0] == draws[2]  # a resumed slice: same draw
    assert EpochView(_NoisyData(), [3], seed=1, epoch=1)[0] != draws[2]  # next epoch: a new draw
    assert EpochView(_NoisyData(), [3], seed=2, epoch=0)[0] != draws[2]


def test_derived_seeds_are_pure_distinct_per_stream_and_fit_63_bits():
    seeds = {derive_seed(0, "augment", 0, i) for i in range(1000)}
    assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(0, "order", 1) == derive_seed(0, "order", 1)
    # no collision of the kind seed * K + epoch had: (seed 0, epoch K) vs (seed 1, epoch 0)
    assert derive_seed(0, "order", 1_000_003) != derive_seed(1, "order", 0)
    assert derive_seed(0, "epsilon", 2, 3) != derive_seed(0, "step", 2, 3)


def test_set_seed_switches_deterministic_kernels_on_and_back_off():
    try:
        set_seed(3, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        a = torch.rand(3)
        set_seed(3, deterministic=False)  # a later, non-deterministic run gets the fast kernels back
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.equal(torch.rand(3), a)
    finally:
        torch.use_deterministic_algorithms(False)


def test_process_alive_tells_live_exited_and_unreaped_processes_apart():
    assert process_alive(os.getpid())
    child = subprocess.Popen(["true"])
    while Path(f"/proc/{child.pid}/stat").exists() and process_alive(child.pid):
        time.sleep(0.01)  # exits, but stays a zombie until reaped
    assert not process_alive(child.pid)  # a zombie is gone
    child.wait()
    assert not process_alive(child.pid) and not process_alive(0)


# ----------------------------------------------------------------------------- one epoch, every role

def _two_batches(n_classes: int = 2, seed: int = 0) -> list[dict]:
    """Two batches of 4 32x32 images: class c lights channel c (a task a tiny net learns in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(2):
        labels = torch.tensor([(b + i) % n_classes for i in range(4)])  # (4,)
        images = 0.1 * torch.randn(4, 3, 32, 32, generator=g)  # (4, 3, 32, 32)
        images[torch.arange(4), labels] += 1.0
        batches.append({"image": images, "label": labels})
    return batches


def _tiny_cfg(role: str = "student", **overrides):
    cfg = smoke_config(**{"train.batch_size": 4, "train.lr": 0.002, **overrides})
    return dataclasses.replace(cfg, model=TINY, loss=dataclasses.replace(cfg.loss, role=role))


def test_train_one_epoch_updates_every_parameter_and_lowers_the_loss():
    cfg = _tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.variant, input_size=32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, cfg, CPU)
    recipe = recipe_for(cfg.loss, cfg.variant)
    losses = []
    for epoch in range(6):
        log = train_one_epoch(model, recipe, optimizer, _two_batches(), CPU, epoch, cfg=cfg, teachers=None,
                              generator=torch.Generator())
        losses.append(log.terms["total"])
        assert log.images == 8 and set(log.terms) == {"stu", "total"}
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == []
    assert losses[-1] < losses[0], losses
    assert model.state_dict()["context_pool.q"].abs().sum() > 0  # the context pool was updated (Eq. 7)


@pytest.mark.parametrize("role, terms", [
    ("student", {"stu"}),
    ("cls_teacher", {"stu", "fore", "area"}),  # Eq. 19
    ("loc_teacher", {"stu", "diff", "area"}),  # Eq. 21
    ("distilled", {"stu", "ld", "ad"}),  # Eq. 16; ld / ad only on steps whose ε drew them
])
@pytest.mark.parametrize("variant", ["reference", "paper"])
def test_every_role_trains_a_step(role, terms, variant):
    cfg = dataclasses.replace(_tiny_cfg(role), variant=variant)
    torch.manual_seed(0)
    model = build_model(cfg.model, variant, input_size=32)
    teachers = None
    if role == "distilled":
        teachers = TeacherSet(*(build_model(cfg.model, variant, input_size=32) for _ in range(2)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.use_deterministic_algorithms(True)  # every op of every role has a deterministic CPU kernel
    try:
        log = train_one_epoch(model, recipe_for(cfg.loss, variant), build_optimizer(model, cfg, CPU),
                              _two_batches()[:1], CPU, 0, cfg=cfg, teachers=teachers, generator=torch.Generator())
    finally:
        torch.use_deterministic_algorithms(False)
    assert "stu" in log.terms and set(log.terms) - {"total"} <= terms
    assert all(math.isfinite(v) for v in log.terms.values())
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_the_trainer_distils_with_the_batchs_epsilon():
    cfg = _tiny_cfg("distilled")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.variant, input_size=32)
    teachers = TeacherSet(*(build_model(cfg.model, cfg.variant, input_size=32) for _ in range(2)))
    batches = [{**b, "epsilon": torch.zeros(4, dtype=torch.long)} for b in _two_batches()]  # no sample distils
    log = train_one_epoch(model, recipe_for(cfg.loss, cfg.variant), build_optimizer(model, cfg, CPU), batches, CPU,
                          0, cfg=cfg, teachers=teachers, generator=torch.Generator())
    assert set(log.terms) == {"stu", "total"}
    batches = [{**b, "epsilon": torch.full((4,), 2, dtype=torch.long)} for b in _two_batches()]  # all: loc teacher
    log = train_one_epoch(model, recipe_for(cfg.loss, cfg.variant), build_optimizer(model, cfg, CPU), batches, CPU,
                          0, cfg=cfg, teachers=teachers, generator=torch.Generator())
    assert set(log.terms) == {"stu", "ad", "total"}


def test_a_non_finite_loss_names_the_term_epoch_and_step():
    cfg = _tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.variant, input_size=32)
    batches = _two_batches()
    batches[1]["image"][0, 0, 0, 0] = float("nan")  # the second step's loss is NaN
    with pytest.raises(DivergedError, match=r"loss term 'stu' is nan at epoch 3, step 2: the run diverged"):
        # read back only at the end (read_every=20): the step is still the one that diverged
        train_one_epoch(model, recipe_for(cfg.loss, cfg.variant), build_optimizer(model, cfg, CPU), batches, CPU, 2,
                        cfg=cfg, teachers=None, generator=torch.Generator(), read_every=20)


# ----------------------------------------------------------------------------- fit: best checkpoints

class _Scripted:
    """A validate() returning a scripted metric dict per call, and keeping each epoch's weights."""

    def __init__(self, script):
        self.script = list(script)
        self.weights = []

    def __call__(self, model):
        self.weights.append({k: v.clone() for k, v in model.state_dict().items()})
        return self.script[len(self.weights) - 1]


def test_update_best_keeps_the_earliest_of_ties_and_ignores_missing_or_nan_metrics():
    best = {}
    assert update_best(best, 0, {"top1_loc": 0.2, "gt_known_loc": float("nan")}) == ["top1_loc"]
    assert update_best(best, 1, {"top1_loc": 0.2, "gt_known_loc": 0.1, "top1_cls": 0.3}) == ["gt_known_loc", "top1_cls"]
    assert best == {"top1_loc": {"epoch": 0, "value": 0.2}, "gt_known_loc": {"epoch": 1, "value": 0.1},
                    "top1_cls": {"epoch": 1, "value": 0.3}}


@pytest.fixture(scope="module")
def tiny_data(one_thread, smoke_cache):  # noqa: F811
    """16 smoke training images with the random train transform (crop + flip), as WSOLDataset."""
    index = smoke_index(smoke_cache)
    cfg = with_classes(_tiny_cfg(**{"train.epochs": 3}), index)
    return cfg, WSOLDataset(index.train[:16], train_transform(36, 32, randaugment=False))


def _fit(cfg, data, run_dir, **kwargs):
    torch.manual_seed(0)  # as the runner seeds each run before building its model
    model = build_model(cfg.model, cfg.variant, input_size=cfg.data.crop)
    return model, fit(model, recipe_for(cfg.loss, cfg.variant), cfg, data, run_dir, CPU, **kwargs)


def test_best_checkpoints_hold_the_epochs_the_validation_script_picks(tiny_data, tmp_path):
    cfg, data = tiny_data
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=4))
    script = _Scripted([
        {"top1_loc": 0.1, "gt_known_loc": 0.5, "top1_cls": 0.2},
        {"top1_loc": 0.3, "gt_known_loc": 0.4, "top1_cls": 0.2},
        {"top1_loc": 0.2, "gt_known_loc": 0.6, "top1_cls": 0.2},
        {"top1_loc": 0.3, "gt_known_loc": 0.1, "top1_cls": 0.9},
    ])
    # top1_loc: 0.3 first at epoch 1 (the tie at epoch 3 keeps 1); gt_known: 0.6 at 2; top1_cls: 0.9 at 3
    _, result = _fit(cfg, data, tmp_path, validate=script)
    assert result.best == {"top1_loc": {"epoch": 1, "value": 0.3}, "gt_known_loc": {"epoch": 2, "value": 0.6},
                           "top1_cls": {"epoch": 3, "value": 0.9}}
    for criterion, epoch in (("top1_loc", 1), ("gt_known_loc", 2), ("top1_cls", 3)):
        state = load_checkpoint(tmp_path / f"best_{criterion}.pt")
        assert state["epoch"] == epoch
        assert all(torch.equal(state["model"][k], script.weights[epoch][k]) for k in state["model"])
    assert [v["epoch"] for v in result.val] == [0, 1, 2, 3]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3


# ----------------------------------------------------------------------------- fit: crash and resume

def _inject(monkeypatch, point: str, nth: int, action=None) -> None:
    """Make ``crash_point(point)`` raise Crash (or run ``action``) the nth time it is reached."""
    inject(monkeypatch, (train_mod, epoch_mod, ckpt_mod), point, nth, action)


def _run_record(cfg, data, run_dir, monkeypatch=None, crash=None, **kwargs):
    """Fit (resuming from run_dir), recording on_epoch as the store does (a re-sent epoch replaces)."""
    epochs, resumed = {}, []

    def on_epoch(log, val):
        epochs[log.epoch] = (log.terms, log.images, val)

    model, result = _fit(cfg, data, run_dir, validate=weights_validate, on_epoch=on_epoch,
                         on_resume=lambda pos, warnings: resumed.append((pos, warnings)), **kwargs)
    return model, result, epochs, resumed


@pytest.fixture(scope="module")
def uninterrupted(one_thread, tiny_data, tmp_path_factory):  # noqa: F811
    cfg, data = tiny_data
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    model, result, epochs, _ = _run_record(cfg, data, run_dir)
    bests = {c: load_checkpoint(run_dir / f"best_{c}.pt")["model"] for c in result.best}
    return model.state_dict(), result, epochs, bests


def _assert_same_run(got_model, got_result, got_epochs, run_dir, uninterrupted):
    ref_model, ref_result, ref_epochs, ref_bests = uninterrupted
    assert got_epochs == ref_epochs  # loss means, images, validation metrics of every epoch
    assert all(torch.equal(got_model.state_dict()[k], ref_model[k]) for k in ref_model)
    assert got_result.best == ref_result.best and got_result.val == ref_result.val
    for criterion, weights in ref_bests.items():
        held = load_checkpoint(run_dir / f"best_{criterion}.pt")["model"]
        assert all(torch.equal(held[k], weights[k]) for k in weights), criterion


@pytest.mark.parametrize("point, nth, checkpoint_every, resumes_at", [
    ("after-step", 6, 0, Position(0, 4, True)),  # epoch 2, step 2 (4 steps/epoch): back to epoch 1's end
    ("after-step", 6, 1, Position(1, 1, False)),  # ... with a checkpoint every step: at epoch 2, step 1
    ("after-step", 1, 0, None),  # before any checkpoint: a fresh start
    ("after-rotate", 2, 0, Position(0, 4, True)),  # last.pt moved to prev.pt, the new one not written
    ("before-rename:last.pt", 2, 0, Position(0, 4, True)),  # the new last.pt is a temp file
    ("before-rename:best_gt_known_loc.pt", 1, 0, Position(0, 4, True)),  # committed; a best file not yet
])
def test_a_crash_anywhere_resumes_to_the_uninterrupted_result(tiny_data, uninterrupted, tmp_path, monkeypatch,
                                                              point, nth, checkpoint_every, resumes_at):
    cfg, data = tiny_data
    _inject(monkeypatch, point, nth)
    epochs: dict = {}
    with pytest.raises(Crash):
        _fit(cfg, data, tmp_path, validate=weights_validate, checkpoint_every=checkpoint_every,
             on_epoch=lambda log, val: epochs.__setitem__(log.epoch, (log.terms, log.images, val)))
    monkeypatch.undo()
    model, result, more, resumed = _run_record(cfg, data, tmp_path, checkpoint_every=checkpoint_every)
    assert resumed == [(resumes_at, [])]  # from where, and nothing was reported damaged
    _assert_same_run(model, result, {**epochs, **more}, tmp_path, uninterrupted)


def _cached(data: WSOLDataset):
    from kdcicam.data.cache import FrameStore, train_view

    view = train_view(data.samples, data.transform, FrameStore(CPU))
    assert view is not None  # resize -> random crop -> flip: the cache reproduces it
    return view


def test_the_decoded_frame_cache_trains_exactly_as_the_per_image_path(tiny_data, uninterrupted, tmp_path):
    # train.data_cache: the same images (tests/test_data_cache.py), so the same losses and weights
    cfg, data = tiny_data
    model, result, epochs, _ = _run_record(cfg, _cached(data), tmp_path)
    _assert_same_run(model, result, epochs, tmp_path, uninterrupted)


def test_a_cached_run_resumed_mid_epoch_ends_as_the_uninterrupted_one(tiny_data, uninterrupted, tmp_path,
                                                                     monkeypatch):
    cfg, data = tiny_data
    cached = _cached(data)
    _inject(monkeypatch, "after-step", 6)  # epoch 2, step 2 of 4, with a checkpoint every step
    epochs: dict = {}
    with pytest.raises(Crash):
        _fit(cfg, cached, tmp_path, validate=weights_validate, checkpoint_every=1,
             on_epoch=lambda log, val: epochs.__setitem__(log.epoch, (log.terms, log.images, val)))
    monkeypatch.undo()
    model, result, more, resumed = _run_record(cfg, cached, tmp_path, checkpoint_every=1)
    assert resumed == [(Position(1, 1, False), [])]
    _assert_same_run(model, result, {**epochs, **more}, tmp_path, uninterrupted)


def test_a_distilled_run_resumed_mid_epoch_draws_the_same_epsilons(tiny_data, tmp_path, monkeypatch):
    # ε (Eq. 16) is drawn per sample from the step's seed: a resumed epoch must draw what the
    # uninterrupted one drew at the same steps, or the KD terms and the weights differ.
    cfg, data = tiny_data
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, role="distilled"))
    torch.manual_seed(1)
    teachers = TeacherSet(*(build_model(cfg.model, cfg.variant, input_size=32) for _ in range(2)))
    ref = _run_record(cfg, data, tmp_path / "ref", teachers=teachers)
    _inject(monkeypatch, "after-step", 7)
    with pytest.raises(Crash):
        _fit(cfg, data, tmp_path / "cut", teachers=teachers, validate=weights_validate, checkpoint_every=1)
    monkeypatch.undo()
    model, result, epochs, resumed = _run_record(cfg, data, tmp_path / "cut", teachers=teachers, checkpoint_every=1)
    assert resumed == [(Position(1, 2, False), [])]
    assert {"ld", "ad"} <= set(ref[2][1][0])  # both teachers were drawn in epoch 2
    assert epochs[1] == ref[2][1] and epochs[2] == ref[2][2]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref[0].state_dict().items())


def test_a_damaged_last_checkpoint_falls_back_to_prev_and_still_ends_the_same(tiny_data, uninterrupted, tmp_path):
    cfg, data = tiny_data
    _run_record(cfg, data, tmp_path)
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:1000])  # torn after the run
    # a run that had finished cannot be told from one killed after its commit: it retrains the
    # last epoch from prev.pt, reports the damage, and ends with the same weights and bests
    model, result, epochs, resumed = _run_record(cfg, data, tmp_path)
    (position, warnings), = resumed
    assert position == Position(1, 4, True)
    assert "last.pt: checksum mismatch" in warnings[0]
    _assert_same_run(model, result, {**uninterrupted[2], **epochs}, tmp_path, uninterrupted)


def test_best_files_lost_to_a_crash_after_the_commit_are_rewritten_from_it(tiny_data, tmp_path, monkeypatch):
    # Epoch 1 (index 0) is the best by every criterion and never beaten; the process dies after
    # committing it, while writing best_gt_known_loc.pt (best_top1_loc.pt is written, best_top1_cls.pt
    # not yet). The resumed run must rewrite both from last.pt, which holds epoch 0's weights.
    cfg, data = tiny_data
    falling = [{"top1_loc": v, "gt_known_loc": v, "top1_cls": v} for v in (0.9, 0.5, 0.1)]
    first = _Scripted(falling)
    _inject(monkeypatch, "before-rename:best_gt_known_loc.pt", 1)
    with pytest.raises(Crash):
        _fit(cfg, data, tmp_path, validate=first)
    monkeypatch.undo()
    assert not (tmp_path / "best_top1_cls.pt").exists()
    _, result = _fit(cfg, data, tmp_path, validate=_Scripted(falling[1:]))
    assert {c: b["epoch"] for c, b in result.best.items()} == {"top1_loc": 0, "gt_known_loc": 0, "top1_cls": 0}
    for criterion in result.best:
        held = load_checkpoint(tmp_path / f"best_{criterion}.pt")
        assert held["epoch"] == 0 and all(torch.equal(held["model"][k], first.weights[0][k]) for k in held["model"])


def test_a_best_file_from_a_lost_epoch_is_dropped_with_a_warning(tiny_data, tmp_path):
    # top1_loc is best at epoch 0, then at epoch 2: best_top1_loc.pt holds epoch 2. last.pt (epoch 2)
    # is then damaged: the run resumes from prev.pt (epoch 1), whose record says epoch 0, whose
    # weights are gone. Retrained (here less well: 0.2), epoch 2 must become the best by top1_loc,
    # file and record agreeing, and the loss of epoch 0's file be reported.
    cfg, data = tiny_data
    _fit(cfg, data, tmp_path, validate=_Scripted([{"top1_loc": v} for v in (0.3, 0.1, 0.5)]))
    assert load_checkpoint(tmp_path / "best_top1_loc.pt")["epoch"] == 2
    (tmp_path / "last.pt").write_bytes(b"torn")
    warnings = []
    retrain = _Scripted([{"top1_loc": 0.2}])
    model, result = _fit(cfg, data, tmp_path, validate=retrain, on_resume=lambda pos, w: warnings.extend(w))
    assert len(warnings) == 2 and "last.pt: checksum mismatch" in warnings[0]
    assert "best_top1_loc.pt holds epoch 3, not the best epoch 1 by top1_loc" in warnings[1]
    assert result.best == {"top1_loc": {"epoch": 2, "value": 0.2}}
    held = load_checkpoint(tmp_path / "best_top1_loc.pt")
    assert held["epoch"] == 2 and all(torch.equal(held["model"][k], v) for k, v in retrain.weights[0].items())


def test_dataloader_workers_do_not_change_the_run(tiny_data, uninterrupted, tmp_path):
    cfg, data = tiny_data
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_workers=2))
    model, result, epochs, _ = _run_record(cfg, data, tmp_path)
    _assert_same_run(model, result, epochs, tmp_path, uninterrupted)


def test_a_runs_weights_do_not_depend_on_what_its_process_ran_before(tiny_data, smoke_cache, tmp_path):  # noqa: F811
    from kdcicam.execution.plan import PlannedRun, run_id_for
    from kdcicam.execution.runner import RunContext, execute
    from kdcicam.store import open_store

    cfg, _ = tiny_data
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1))
    index = smoke_index(smoke_cache)
    planned = PlannedRun(run_id=run_id_for(cfg, index.fingerprint), cfg=cfg, dataset=index)
    weights = []
    for i, noise in enumerate((0, 1000)):
        torch.manual_seed(99)
        torch.rand(noise)  # as if other runs had drawn from the global RNG first
        with open_store("sqlite://") as store:
            ctx = RunContext(store=store, artifacts_root=tmp_path / str(i), device=CPU)
            assert execute(planned, index, ctx).status == "finished"
        weights.append(load_checkpoint(tmp_path / str(i) / planned.run_id / "last.pt")["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize(("sig", "default", "how"), [(signal.SIGINT, signal.default_int_handler, "Ctrl-C"),
                                                     (signal.SIGTERM, signal.SIG_DFL, "SIGTERM")])
def test_a_signal_mid_epoch_saves_the_position_and_the_resumed_run_matches(tiny_data, uninterrupted, tmp_path,
                                                                          monkeypatch, sig, default, how):
    # Ctrl-C, or `kill PID` (a background job ignores SIGINT): the run stops at the next step, position saved
    if signal.getsignal(sig) is not default:
        pytest.skip(f"another {sig.name} handler is installed; the trainer leaves it in charge")
    cfg, data = tiny_data
    _inject(monkeypatch, "after-step", 6, action=lambda: os.kill(os.getpid(), sig))
    epochs: dict = {}
    with pytest.raises(TrainingInterrupted, match=r"at epoch 2/3, step 2/4 \(position saved\)") as stopped:
        _fit(cfg, data, tmp_path, validate=weights_validate,
             on_epoch=lambda log, val: epochs.__setitem__(log.epoch, (log.terms, log.images, val)))
    monkeypatch.undo()
    assert stopped.value.how == how
    assert signal.getsignal(sig) is default  # the trainer's handler is gone
    state = load_checkpoint(tmp_path / "last.pt")
    assert (state["epoch"], state["step"], state["epoch_done"]) == (1, 2, False)
    model, result, more, resumed = _run_record(cfg, data, tmp_path)
    assert resumed == [(Position(1, 2, False), [])]
    _assert_same_run(model, result, {**epochs, **more}, tmp_path, uninterrupted)


def test_a_diverged_run_commits_nothing(tiny_data, tmp_path):
    cfg, data = tiny_data
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=1e6))
    with pytest.raises(DivergedError, match=r"loss term '\w+' is (nan|inf|-inf) at epoch 1, step \d"):
        _fit(cfg, data, tmp_path)
    assert not (tmp_path / "last.pt").exists()


def test_the_cli_fails_a_diverged_run_with_one_line_naming_the_term(smoke_cache, tmp_path, monkeypatch,  # noqa: F811
                                                                     capsys):
    from kdcicam.cli import main
    from kdcicam.store import open_store

    monkeypatch.setenv("KDCICAM_CACHE", str(smoke_cache))
    monkeypatch.delenv("KDCICAM_DB", raising=False)
    threads, cores = torch.get_num_threads(), os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})  # the CLI runs torch on every core it may use: one here
    try:
        with pytest.raises(SystemExit) as exit_:
            # plain VGG16 (no BatchNorm) at lr 1e6 overflows within the first epoch
            main(["train", "--profile", "smoke", "--device", "cpu", "--quiet", "--set", "train.lr=1e6",
                  "--set", "model.batch_norm=false",
                  "--db", f"sqlite:///{tmp_path / 'runs.db'}", "--artifacts", str(tmp_path / "runs")])
    finally:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(threads)
    assert exit_.value.code == 1
    (line,) = capsys.readouterr().out.strip().splitlines()
    why = r"loss term '\w+' is (nan|inf|-inf) at epoch 1, step \d+: the run diverged \(try a lower train.lr\)"
    assert re.fullmatch(rf"run \w+ \(student, smoke, reference\): failed — {why}", line), line
    with open_store(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        (info,) = store.list_runs()
    assert info.status == "failed" and re.fullmatch(why, info.message)
    assert not list((tmp_path / "runs").glob("*/*.pt"))


@pytest.mark.slow
def test_compiled_training_step_gives_the_eager_losses_and_weights(tiny_data, uninterrupted, tmp_path):
    # train.compile: the same computation through Inductor's kernels: equal up to float reassociation
    cfg, data = tiny_data
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile="default"))
    _, _, epochs, _ = _run_record(cfg, data, tmp_path)
    _, _, ref_epochs, _ = uninterrupted
    for epoch, (terms, images, _) in ref_epochs.items():
        got_terms, got_images, _ = epochs[epoch]
        assert got_images == images
        for name, value in terms.items():
            assert got_terms[name] == pytest.approx(value, rel=1e-3, abs=1e-5), (epoch, name)
    # (weights are not compared: Adam's normalised steps turn float-rounding differences of tiny
    # gradients into visible weight differences; the losses of every later step carry them anyway)
    assert not any(k.startswith("_orig_mod") for k in load_checkpoint(tmp_path / "last.pt")["model"])
