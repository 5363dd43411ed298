"""Several runs in one step (kdcicam.training.packed_step): each run of a pack gets the losses, parameters,
pool and optimizer state of its own unpacked step, for every role recipe."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from _runs import one_thread, smoke_config  # noqa: F401

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


@pytest.fixture(autouse=True)
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


def _unpacked(models, cfgs, teachers, steps, eps):
    """Each run on its own: compute_loss, backward, Adam step; its terms per step."""
    logs = []
    for i, m in enumerate(models):
        cfg = cfgs[i % len(cfgs)]
        opt = build_optimizer(m, cfg, CPU)
        m.train()
        recipe = recipe_for(cfg.loss, cfg.variant)
        run_log = []
        for s in range(steps):
            images, labels = _batch(10 * i + s)
            gen = torch.Generator().manual_seed(1000 * i + s)
            r = compute_loss(m, images, labels, recipe, cfg.variant, teachers=teachers[i], generator=gen,
                             loss_cfg=cfg.loss, epsilon=eps(i, s))
            opt.zero_grad(set_to_none=True)
            r.total.backward()
            opt.step()
            run_log.append(r.terms)
        logs.append((run_log, opt))
    return logs


def _packed(models, cfgs, teachers, steps, eps):
    pack = Pack(models)
    cfg = cfgs[0]
    opt = build_pack_optimizer(pack, cfg, CPU)
    pack.train()
    recipe = recipe_for(cfg.loss, cfg.variant)
    logs = [[] for _ in models]
    for s in range(steps):
        batches = [_batch(10 * i + s) for i in range(len(models))]
        images = torch.stack([b[0] for b in batches])
        labels = torch.stack([b[1] for b in batches])
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
    ("loc_teacher", "paper", (True,), False, 1.0),
    ("loc_teacher", "reference", (True,), False, 0.1),
    ("distilled", "reference", (True,), False, 1.0),  # ε per sample
    ("distilled", "paper", (True,), False, 1.0),  # ε per step
]


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


def test_runs_with_different_backbones_cannot_share_a_pack():
    from kdcicam.core.errors import ConfigError

    small = build_model(_cfg("student", "reference").model, "reference", input_size=32)
    wide = build_model(dataclasses.replace(_cfg("student", "reference").model, width=0.125), "reference", 32)
    with pytest.raises(ConfigError, match="one architecture"):
        Pack([small, wide])
