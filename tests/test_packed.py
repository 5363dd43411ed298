"""Several runs in one step (kdcicam.training.packed_step): each run of a pack gets the losses, parameters,
pool and optimizer state of its own unpacked step, for every role recipe."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from _faults import Crash, inject, weights_validate
from _runs import one_thread, smoke_cache, smoke_config, smoke_index, with_classes  # noqa: F401

from kdcicam.core.config import ModelConfig
from kdcicam.model.factory import build_model
from kdcicam.training.packed_step import (
    Pack,
    build_pack_optimizer,
    load_run_optimizer_states,
    packed_loss,
    run_optimizer_state,
)
from kdcicam.training.recipes import TeacherSet, compute_loss, recipe_for
from kdcicam.training.schedule import build_optimizer

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")
# In float64, so that the comparison is tight: Adam's first steps divide gradients by their own size, and a
# float32 rounding difference (the batched and the plain kernels sum in different orders) of a gradient near
# zero moves a parameter by up to lr.
TOL = {"rtol": 1e-7, "atol": 1e-9}


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def _cfg(role: str, variant: str, pool: bool = True, batch_norm: bool = False, mult: float = 1.0):
    cfg = smoke_config(**{"train.batch_size": 4, "train.lr": 0.002, "train.backbone_lr_mult": mult})
    model = ModelConfig(width=0.0625, output_stride=4, nonlocal_blocks=2, num_classes=3, context_pool=pool,
                        batch_norm=batch_norm)
    return dataclasses.replace(cfg, variant=variant, model=model, loss=dataclasses.replace(cfg.loss, role=role))


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 32x32 images; class c lights channel c."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(3, (4,), generator=g)
    images = 0.1 * torch.randn(4, 3, 32, 32, generator=g, dtype=torch.get_default_dtype())
    images[torch.arange(4), labels] += 1.0
    return images, labels


def _models(cfgs, count: int) -> list:
    out = []
    for i in range(count):
        torch.manual_seed(100 + i)
        out.append(build_model(cfgs[i % len(cfgs)].model, cfgs[0].variant, input_size=32))
    return out


def _unpacked(models, cfgs, teachers, steps, eps, device=CPU):
    """Each run on its own: compute_loss, backward, Adam step; its terms per step."""
    logs = []
    for i, m in enumerate(models):
        cfg = cfgs[i % len(cfgs)]
        opt = build_optimizer(m, cfg, device)
        m.train()
        recipe = recipe_for(cfg.loss, cfg.variant)
        run_log = []
        for s in range(steps):
            images, labels = (t.to(device) for t in _batch(10 * i + s))
            gen = torch.Generator().manual_seed(1000 * i + s)
            r = compute_loss(m, images, labels, recipe, cfg.variant, teachers=teachers[i], generator=gen,
                             loss_cfg=cfg.loss, epsilon=eps(i, s))
            opt.zero_grad(set_to_none=True)
            r.total.backward()
            opt.step()
            run_log.append(r.terms)
        logs.append((run_log, opt))
    return logs


def _packed(models, cfgs, teachers, steps, eps, device=CPU):
    pack = Pack(models)
    cfg = cfgs[0]
    opt = build_pack_optimizer(pack, cfg, device)
    pack.train()
    recipe = recipe_for(cfg.loss, cfg.variant)
    logs = [[] for _ in models]
    for s in range(steps):
        batches = [_batch(10 * i + s) for i in range(len(models))]
        images = torch.stack([b[0] for b in batches]).to(device)
        labels = torch.stack([b[1] for b in batches]).to(device)
        gens = [torch.Generator().manual_seed(1000 * i + s) for i in range(len(models))]
        results = packed_loss(pack, images, labels, recipe, cfg.variant, teachers=teachers, generators=gens,
                              loss_cfg=cfg.loss, epsilons=[eps(i, s) for i in range(len(models))])
        opt.zero_grad(set_to_none=True)
        sum(r.total for r in results).backward()
        opt.step()
        for i, r in enumerate(results):
            logs[i].append(r.terms)
    pack.sync()
    return pack, opt, logs


def _teachers(cfg, count):
    torch.manual_seed(7)
    return [TeacherSet(*(build_model(cfg.model, cfg.variant, input_size=32) for _ in range(2))) for _ in range(count)]


CASES = [  # (role, variant, pools of the pack's runs, batch_norm, backbone lr multiplier)
    ("student", "reference", (False,), False, 1.0),  # Base
    ("student", "paper", (True,), False, 0.1),  # +ConPool (CI-CAM), the authors' backbone lr
    ("student", "reference", (False, True), False, 1.0),  # Base and +ConPool in one pack
    ("cls_teacher", "reference", (True,), False, 1.0),
    ("cls_teacher", "paper", (True,), True, 1.0),  # BatchNorm backbone: batch and running statistics per run
    # The loc teacher is compared without BatchNorm: these tiny random nets mark whole images foreground, so the
    # background image is all zeros, every BatchNorm then standardises a constant channel (its rounding noise,
    # times 1/sqrt(eps)) and two correct implementations differ after a few layers (1e-6 in float64).
    ("loc_teacher", "paper", (True,), False, 1.0),
    ("loc_teacher", "reference", (True,), False, 0.1),
    ("distilled", "reference", (True,), False, 1.0),  # ε per sample
    ("distilled", "paper", (True,), False, 1.0),  # ε per step
]


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("role, variant, pools, batch_norm, mult", CASES)
def test_a_packed_step_gives_each_run_its_own_steps_losses_and_parameters(role, variant, pools, batch_norm, mult):
    cfgs = [_cfg(role, variant, pool=p, batch_norm=batch_norm, mult=mult) for p in pools]
    n, steps = 3, 2
    models = _models(cfgs, n)
    teachers = _teachers(cfgs[0], n) if role == "distilled" else [None] * n
    data_eps = {(1, 1): torch.tensor([0, 1, 2, 2])} if variant == "reference" and role == "distilled" else {}

    def eps(i, s):  # one run takes ε drawn with the data
        return data_eps.get((i, s))

    twins = [copy.deepcopy(m) for m in models]
    alone = _unpacked(twins, cfgs, teachers, steps, eps)
    pack, opt, packed_logs = _packed([copy.deepcopy(m) for m in models], cfgs, teachers, steps, eps)
    for i in range(n):
        run_log, own_opt = alone[i]
        for s in range(steps):
            assert set(packed_logs[i][s]) == set(run_log[s]), (i, s)
            for name, value in run_log[s].items():
                torch.testing.assert_close(packed_logs[i][s][name], value, **TOL, msg=f"run {i} step {s} {name}")
        want, got = twins[i].state_dict(), pack.models[i].state_dict()  # parameters and buffers (the pool)
        assert list(got) == list(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], **TOL, msg=f"run {i} {k}")
        saved, own = run_optimizer_state(pack, opt, i, cfgs[i % len(cfgs)]), own_opt.state_dict()
        assert saved["param_groups"] == own["param_groups"]
        assert sorted(saved["state"]) == sorted(own["state"])
        for k, st in own["state"].items():
            for name, v in st.items():
                torch.testing.assert_close(saved["state"][k][name], v, **TOL, msg=f"run {i} optimizer {k} {name}")


@pytest.mark.usefixtures("float64")
def test_pack_params_and_buffers_match_each_unpacked_run_in_the_state_dict():
    cfgs = [_cfg("student", "reference", batch_norm=True)]
    models = _models(cfgs, 2)
    twins = [copy.deepcopy(m) for m in models]
    _unpacked(twins, cfgs, [None, None], 2, lambda i, s: None)
    pack, _, _ = _packed([copy.deepcopy(m) for m in models], cfgs, [None, None], 2, lambda i, s: None)
    for twin, packed in zip(twins, pack.models):
        want, got = twin.state_dict(), packed.state_dict()
        assert list(got) == list(want)
        for k in want:
            torch.testing.assert_close(got[k].float(), want[k].float(), **TOL, msg=k)
        assert not torch.equal(want["context_pool.q"], torch.zeros_like(want["context_pool.q"]))


@pytest.mark.usefixtures("float64")
def test_a_packed_optimizer_resumes_from_each_runs_own_state():
    """Two steps packed = one step, save each run's state, reload into a fresh pack, one more step."""
    cfgs = [_cfg("cls_teacher", "reference", mult=0.1)]
    models = _models(cfgs, 2)
    whole, _, _ = _packed([copy.deepcopy(m) for m in models], cfgs, [None, None], 2, lambda i, s: None)
    first, first_opt, _ = _packed([copy.deepcopy(m) for m in models], cfgs, [None, None], 1, lambda i, s: None)
    states = [run_optimizer_state(first, first_opt, i, cfgs[0]) for i in range(2)]
    resumed = [copy.deepcopy(m) for m in first.models]  # synced: their own backbones hold the step
    pack = Pack(resumed)
    opt = build_pack_optimizer(pack, cfgs[0], CPU)
    load_run_optimizer_states(pack, opt, states, cfgs[0])
    pack.train()
    recipe = recipe_for(cfgs[0].loss, cfgs[0].variant)
    batches = [_batch(10 * i + 1) for i in range(2)]
    results = packed_loss(pack, torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches]), recipe,
                          cfgs[0].variant, teachers=[None, None], generators=[torch.Generator()] * 2,
                          loss_cfg=cfgs[0].loss, epsilons=[None, None])
    opt.zero_grad(set_to_none=True)
    sum(r.total for r in results).backward()
    opt.step()
    pack.sync()
    for a, b in zip(pack.models, whole.models):
        for k, v in b.state_dict().items():
            torch.testing.assert_close(a.state_dict()[k], v, **TOL, msg=k)


@pytest.mark.gpu
@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("role", ["student", "loc_teacher", "distilled"])
def test_a_packed_step_on_the_gpu_gives_each_run_its_own_steps_losses_and_parameters(role):
    cuda = torch.device("cuda")
    cfgs = [_cfg(role, "reference")]
    models = _models(cfgs, 3)
    teachers = _teachers(cfgs[0], 3) if role == "distilled" else [None] * 3
    teachers = [TeacherSet(t.cls_model.to(cuda), t.loc_model.to(cuda)) if t else None for t in teachers]
    twins = [copy.deepcopy(m).to(cuda) for m in models]
    alone = _unpacked(twins, cfgs, teachers, 2, lambda i, s: None, device=cuda)
    pack, _, logs = _packed([copy.deepcopy(m).to(cuda) for m in models], cfgs, teachers, 2, lambda i, s: None,
                            device=cuda)
    for i in range(3):
        for s, terms in enumerate(alone[i][0]):
            for name, value in terms.items():
                torch.testing.assert_close(logs[i][s][name], value, **TOL, msg=f"run {i} step {s} {name}")
        want = twins[i].state_dict()
        for k, v in pack.models[i].state_dict().items():
            torch.testing.assert_close(v, want[k], **TOL, msg=f"run {i} {k}")


@pytest.mark.gpu
def test_a_packed_step_runs_under_bf16_autocast_on_the_gpu():
    cuda = torch.device("cuda")
    cfg = _cfg("cls_teacher", "reference")
    pack = Pack([m.to(cuda) for m in _models([cfg], 2)])
    opt = build_pack_optimizer(pack, cfg, cuda)
    pack.train()
    images = torch.stack([_batch(i)[0] for i in range(2)]).to(cuda)
    labels = torch.stack([_batch(i)[1] for i in range(2)]).to(cuda)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        results = packed_loss(pack, images, labels, recipe_for(cfg.loss, cfg.variant), cfg.variant,
                              teachers=[None, None], generators=[torch.Generator()] * 2, loss_cfg=cfg.loss,
                              epsilons=[None, None])
    sum(r.total for r in results).backward()
    opt.step()
    assert all(torch.isfinite(r.total) for r in results)


def test_runs_with_different_backbones_cannot_share_a_pack():
    from kdcicam.core.errors import ConfigError

    small = build_model(_cfg("student", "reference").model, "reference", input_size=32)
    wide = build_model(dataclasses.replace(_cfg("student", "reference").model, width=0.125), "reference", 32)
    with pytest.raises(ConfigError, match="one architecture"):
        Pack([small, wide])


def test_runs_share_a_pack_key_when_only_the_seed_the_pool_or_their_teacher_runs_differ():
    from kdcicam.core.config import TeacherRefs
    from kdcicam.training.packed import pack_key

    base = smoke_config()
    same = [dataclasses.replace(base, train=dataclasses.replace(base.train, seed=3)),
            dataclasses.replace(base, model=dataclasses.replace(base.model, context_pool=not base.model.context_pool))]
    assert all(pack_key(c) == pack_key(base) for c in same)
    kd = dataclasses.replace(base, loss=dataclasses.replace(base.loss, role="distilled"),
                             teachers=TeacherRefs(cls_run="c0", loc_run="l0"))
    other_teachers = dataclasses.replace(kd, teachers=TeacherRefs(cls_run="c1", loc_run="l1"))
    assert pack_key(other_teachers) == pack_key(kd)
    differ = [dataclasses.replace(base, train=dataclasses.replace(base.train, lr=base.train.lr * 2)),
              dataclasses.replace(base, train=dataclasses.replace(base.train, halve_every=base.train.halve_every + 1)),
              smoke_config("cls_teacher"), kd]
    assert all(pack_key(c) != pack_key(base) for c in differ)


def test_pack_partners_takes_ready_runs_of_the_same_key_up_to_the_size():
    from types import SimpleNamespace

    from kdcicam.execution.packs import pack_partners

    def run(run_id, seed, role="student"):
        cfg = smoke_config(role)
        return SimpleNamespace(run_id=run_id, cfg=dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                                                                    seed=seed)))

    runs = [run("a", 0), run("t", 0, "cls_teacher"), run("b", 1), run("c", 2), run("d", 3)]
    assert [r.run_id for r in pack_partners(runs[0], runs, 3, lambda r: True)] == ["a", "b", "c"]
    assert [r.run_id for r in pack_partners(runs[0], runs, 3, lambda r: r.run_id != "b")] == ["a", "c", "d"]
    assert [r.run_id for r in pack_partners(runs[1], runs, 3, lambda r: True)] == ["t"]


# ----------------------------------------------------------------------------- packed fit: crash and resume

@pytest.fixture(scope="module")
def tiny_data(one_thread, smoke_cache):  # noqa: F811
    """16 smoke training images with the random train transform (crop + flip); the conpool student at 2 epochs."""
    from kdcicam.data.dataset import WSOLDataset
    from kdcicam.data.transforms import train_transform

    index = smoke_index(smoke_cache)
    cfg = smoke_config(**{"train.batch_size": 4, "train.lr": 0.002, "train.epochs": 2})
    cfg = with_classes(dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, width=0.0625, output_stride=4, nonlocal_blocks=2)), index)
    return cfg, WSOLDataset(index.train[:16], train_transform(36, 32, randaugment=False))


def _inject(monkeypatch, point: str, nth: int, action=None) -> None:
    from kdcicam.training import checkpoint as ckpt_mod
    from kdcicam.training import packed as packed_mod
    from kdcicam.training import trainer as train_mod

    inject(monkeypatch, (packed_mod, train_mod, ckpt_mod), point, nth, action)


def _fit_pack(tiny, root, seeds=(0, 1), **kwargs):
    """A pack of the tiny run at ``seeds`` (folders root/seed<s>); each run's stored epochs and where it resumed."""
    from kdcicam.training.packed import PackedRun, fit_packed
    from kdcicam.training.recipes import recipe_for

    cfg, data = tiny
    runs, epochs, resumed = [], [{} for _ in seeds], [[] for _ in seeds]
    for k, seed in enumerate(seeds):
        run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        torch.manual_seed(seed)  # as the runner seeds each run before building its model
        model = build_model(run_cfg.model, run_cfg.variant, input_size=32)
        runs.append(PackedRun(model, run_cfg, data, root / f"seed{seed}", validate=weights_validate,
                              on_epoch=lambda log, val, k=k: epochs[k].__setitem__(log.epoch, (log.terms, val)),
                              on_resume=lambda pos, w, k=k: resumed[k].append(pos)))
    results = fit_packed(runs, recipe_for(cfg.loss, cfg.variant), CPU, **kwargs)
    return [r.model.state_dict() for r in runs], results, epochs, resumed


@pytest.fixture(scope="module")
def uninterrupted_pack(tiny_data, tmp_path_factory):
    return _fit_pack(tiny_data, tmp_path_factory.mktemp("pack"))


def _assert_same_pack(got, want, root):
    from kdcicam.training.checkpoint import load_checkpoint

    models, results, epochs, _ = got
    for k in range(len(models)):
        assert epochs[k] == want[2][k]  # loss means and validation metrics of every epoch
        assert all(torch.equal(models[k][n], want[0][k][n]) for n in want[0][k])
        assert results[k].best == want[1][k].best and results[k].val == want[1][k].val
        last = load_checkpoint(root / f"seed{k}" / "last.pt")
        assert all(torch.equal(last["model"][n], want[0][k][n]) for n in want[0][k])


def test_a_pack_stores_each_run_in_its_own_folder_with_its_own_data(uninterrupted_pack):
    models, results, epochs, resumed = uninterrupted_pack
    assert resumed == [[None], [None]]
    assert [sorted(e) for e in epochs] == [[0, 1], [0, 1]]
    assert epochs[0][0][0] != epochs[1][0][0]  # other seed: other weights, data order, losses
    assert not torch.equal(models[0]["context_pool.q"], models[1]["context_pool.q"])
    assert len(results[0].val) == 2


@pytest.mark.parametrize("point, nth, checkpoint_every", [
    ("after-step", 6, 0),  # epoch 2, step 2 (4 steps/epoch): both back to epoch 1's end
    ("after-step", 6, 1),  # ... with a checkpoint every step: both at epoch 2, step 1
    ("after-step", 1, 0),  # before any checkpoint: a fresh start
])
def test_a_killed_pack_resumes_to_the_uninterrupted_result(tiny_data, uninterrupted_pack, tmp_path, monkeypatch,
                                                           point, nth, checkpoint_every):
    _inject(monkeypatch, point, nth)
    with pytest.raises(Crash):
        _fit_pack(tiny_data, tmp_path, checkpoint_every=checkpoint_every)
    monkeypatch.undo()
    got = _fit_pack(tiny_data, tmp_path, checkpoint_every=checkpoint_every)
    got[2][0].update({e: v for e, v in uninterrupted_pack[2][0].items() if e not in got[2][0]})  # epochs before
    got[2][1].update({e: v for e, v in uninterrupted_pack[2][1].items() if e not in got[2][1]})
    _assert_same_pack(got, uninterrupted_pack, tmp_path)


def test_ctrl_c_stops_a_pack_at_a_step_boundary_and_it_resumes_to_the_uninterrupted_result(
        tiny_data, uninterrupted_pack, tmp_path, monkeypatch):
    import os
    import signal

    from kdcicam.training.interrupts import TrainingInterrupted

    _inject(monkeypatch, "after-step", 3, action=lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingInterrupted):
        _fit_pack(tiny_data, tmp_path)
    monkeypatch.undo()
    got = _fit_pack(tiny_data, tmp_path)
    from kdcicam.training.best import Position

    assert got[3] == [[Position(0, 3, False)], [Position(0, 3, False)]]
    _assert_same_pack(got, uninterrupted_pack, tmp_path)


def test_a_kill_between_two_runs_commits_resumes_every_run_at_the_earlier_position(tiny_data, uninterrupted_pack,
                                                                                  tmp_path, monkeypatch):
    from kdcicam.training.best import Position

    for nth, at in ((2, None), (4, Position(0, 4, True))):  # epoch 1's end, epoch 2's end: run 0 committed, run 1 not
        _inject(monkeypatch, "after-rotate", nth)
        with pytest.raises(Crash):
            _fit_pack(tiny_data, tmp_path / str(nth))
        monkeypatch.undo()
        got = _fit_pack(tiny_data, tmp_path / str(nth))
        assert got[3] == [[at], [at]]
        for k in range(2):
            got[2][k].update({e: v for e, v in uninterrupted_pack[2][k].items() if e not in got[2][k]})
        _assert_same_pack(got, uninterrupted_pack, tmp_path / str(nth))


# ----------------------------------------------------------------------------- kdcicam ablate --pack

def _ablate_table3(cache, where, *extra, epochs=1, crash_at=None, crash_signal=None, ok=True):
    import json
    import subprocess
    import sys

    from _runs import kdcicam_env

    where.mkdir(exist_ok=True)
    env = {**kdcicam_env(cache, crash_at, crash_signal), "KDCICAM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "kdcicam", "ablate", "table3", "--profile", "smoke", "--seeds",
                           "2", "--jobs", "1", "--json", "--set", f"train.epochs={epochs}", *extra,
                           "--db", f"sqlite:///{where / 'runs.db'}", "--artifacts", str(where / "runs")],
                          capture_output=True, text=True, env=env, cwd=where, timeout=1200, check=False)
    if not ok:
        assert proc.returncode != 0
        return None
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)["runs"]


def _stored_per_run(db):
    from _runs import query

    epochs = query(db, "SELECT run_id, epoch, split, name, value FROM epoch_metrics WHERE name != 'images_per_s' "
                       "ORDER BY run_id, epoch, split, name")
    finals = query(db, "SELECT run_id, protocol, selection, threshold_policy, split, name, value FROM final_metrics "
                       "ORDER BY run_id, protocol, selection, threshold_policy, split, name")
    return epochs, finals


@pytest.fixture(scope="module")
def uninterrupted_table3_pack(smoke_cache, tmp_path_factory):  # noqa: F811
    """Table 3 at 2 seeds and 2 epochs by ``ablate --pack 2``, never interrupted: its runs and store."""
    where = tmp_path_factory.mktemp("whole")
    return _ablate_table3(smoke_cache, where, "--pack", "2", epochs=2), where / "runs.db"


@pytest.mark.slow
@pytest.mark.xdist_group("uninterrupted-table3-pack")  # one worker trains the fixture for both cases
@pytest.mark.parametrize("crash_at, crash_signal", [
    ("after-rotate@2", None),  # kill -9 between the two teachers' commits at the end of epoch 1
    ("after-step@3", "INT"),  # Ctrl-C at step 3 of the first pack
])
def test_ablate_pack_resumes_a_killed_or_interrupted_pack_to_the_uninterrupted_result(
        smoke_cache, uninterrupted_table3_pack, tmp_path, crash_at, crash_signal):  # noqa: F811
    want, want_db = uninterrupted_table3_pack
    _ablate_table3(smoke_cache, tmp_path / "cut", "--pack", "2", epochs=2, crash_at=crash_at,
                   crash_signal=crash_signal, ok=False)
    got = _ablate_table3(smoke_cache, tmp_path / "cut", "--pack", "2", epochs=2)
    assert sorted(r["run_id"] for r in got) == sorted(r["run_id"] for r in want)
    assert all(r["status"] == "finished" for r in got)
    assert _stored_per_run(tmp_path / "cut" / "runs.db") == _stored_per_run(want_db)


@pytest.mark.slow
def test_ablate_pack_stores_the_runs_it_stores_without_pack(smoke_cache, tmp_path):  # noqa: F811
    from _runs import query

    def ablate(where, *extra):
        return _ablate_table3(smoke_cache, where, *extra)

    plain = ablate(tmp_path / "plain")
    packed = ablate(tmp_path / "packed", "--pack", "2")
    assert all(r["status"] == "finished" for r in packed)
    assert sorted(r["run_id"] for r in packed) == sorted(r["run_id"] for r in plain)
    for where in ("plain", "packed"):
        rows = query(tmp_path / where / "runs.db", "select id, status from runs")
        assert {status for _, status in rows} == {"finished"}

    def stored(where):
        return sorted(query(tmp_path / where / "runs.db", "select run_id, epoch from epoch_metrics"))

    assert stored("packed") == stored("plain")
    seconds = [t for (t,) in query(tmp_path / "packed" / "runs.db", "select train_seconds from runs")]
    assert len(set(seconds)) <= len(seconds) // 2  # trained in pairs: a pack's runs share their training time
    for r in packed:  # each run in its own folder, as without --pack
        assert (tmp_path / "packed" / "runs" / r["run_id"] / "last.pt").is_file()
