"""Role recipes and compute_loss, driven through a tiny fake network with the CICAMOutput contract."""

import dataclasses

import pytest
import torch
from torch import nn

from kdcicam.core.config import LossConfig
from kdcicam.core.errors import ConfigError, RunError
from kdcicam.model.heatmap import combinational_heatmap, foreground_mask, normalize_heatmap, upsample_heatmap
from kdcicam.model.output import CICAMOutput
from kdcicam.training.losses import cls_teacher_loss, loc_teacher_loss
from kdcicam.training.recipes import Recipe, TeacherSet, compute_loss, draw_epsilon, recipe_for

N_CLASSES = 2


class FakeCICAM(nn.Module):
    """A few convs, a shared linear head, a learnable stand-in for the context enhancement.

    Deterministic (no BN, no dropout), so a pass can be recomputed in a test. Records every call.
    """

    def __init__(self, n: int = N_CLASSES, c: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.classifier = nn.Linear(c, n)
        self.context = nn.Parameter(torch.tensor(0.5))
        self.calls: list[dict] = []

    def forward(self, images, labels=None, update_pool=None):
        if update_pool is None:
            update_pool = self.training
        self.calls.append({"batch": images.shape[0], "update_pool": update_pool, "training": self.training,
                           "grad": torch.is_grad_enabled(), "input_requires_grad": images.requires_grad,
                           "images": images.detach().clone()})
        x = self.features(images)  # (B, c, h, w)
        x_e = x + x * torch.tanh(self.context)  # (B, c, h, w)
        w = self.classifier.weight  # (n, c)
        return CICAMOutput(logits=self.classifier(x.mean((2, 3))), logits_e=self.classifier(x_e.mean((2, 3))),
                           cams=torch.einsum("nc,bchw->bnhw", w, x), cams_e=torch.einsum("nc,bchw->bnhw", w, x_e))


def _batch(b: int = 6, size: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, size, size, generator=g), torch.randint(N_CLASSES, (b,), generator=g)


def _teachers():
    return TeacherSet(cls_model=FakeCICAM(seed=1).train(), loc_model=FakeCICAM(seed=2).train())


CFG = {role: LossConfig(role=role, mu=1.0, eta=0.04, beta=0.5, delta=0.1, alpha=0.8,
                        fg_threshold_cls=0.3, fg_threshold_loc=0.2)
       for role in ("student", "cls_teacher", "loc_teacher", "distilled")}


# ------------------------------------------------------------------ recipes as data

@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_recipe_terms_and_passes_per_role(variant):
    r = recipe_for(CFG["student"], variant)
    assert (r.weights, r.needs_heatmap, r.teachers) == ((("stu", 1.0),), False, ())
    r = recipe_for(CFG["cls_teacher"], variant)
    assert r.weights == (("stu", 1.0), ("fore", 1.0), ("area", 0.04))
    assert (r.rho, r.fore_pass, r.back_pass, r.fg_threshold) == (1.0, True, False, 0.3)
    r = recipe_for(CFG["loc_teacher"], variant)
    assert r.weights == (("stu", 1.0), ("diff", 0.5), ("area", 0.1))
    assert (r.rho, r.fore_pass, r.back_pass, r.fg_threshold) == (1.0, True, True, 0.2)
    r = recipe_for(CFG["distilled"], variant)
    assert r.term_names == ("stu", "ld", "ad") and r.rho == 0.0 and not r.needs_heatmap
    assert [w for _, w in r.weights] == pytest.approx([0.2, 0.8, 0.8])
    assert r.epsilon == ("step" if variant == "paper" else "sample")
    assert r.epsilon_choices == (0, 1, 2)


def test_plain_student_rho_per_variant():
    """paper: ρ = 1 (both classifiers, §3.2.4); reference: CE(S^e) alone (--kd_alpha 0.0, flag 0)."""
    assert recipe_for(CFG["student"], "paper").rho == 1.0
    assert recipe_for(CFG["student"], "reference").rho == 0.0


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_plain_student_loss_is_eq9_with_the_variants_rho(variant):
    model = FakeCICAM().train()
    images, labels = _batch()
    res = compute_loss(model, images, labels, recipe_for(CFG["student"], variant), variant)
    ce = nn.functional.cross_entropy
    expected = ce(res.output.logits_e, labels)
    if variant == "paper":
        expected = expected + ce(res.output.logits, labels)
    assert res.total.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_the_masks_and_area_loss_use_the_configured_heatmap_function(variant):
    recipe = recipe_for(CFG["cls_teacher"], variant, heatmap_function="sum_1")
    assert recipe.heatmap_function == "sum_1" and recipe.weights == recipe_for(CFG["cls_teacher"], variant).weights
    model = FakeCICAM().train()
    images, labels = _batch()
    res = compute_loss(model, images, labels, recipe, variant)
    out = res.output
    heat = combinational_heatmap(out.cams_e, out.logits_e, variant, "sum_1")
    heat = upsample_heatmap(normalize_heatmap(heat, variant), tuple(images.shape[-2:]))
    assert res.terms["area"].item() == pytest.approx(heat.mean().item(), rel=1e-6)
    quadratic = combinational_heatmap(out.cams_e, out.logits_e, variant)
    assert not torch.allclose(heat, upsample_heatmap(normalize_heatmap(quadratic, variant), tuple(images.shape[-2:])))


@pytest.mark.parametrize("eps, present", [([0] * 6, set()), ([2] * 6, {"ad"}), ([1, 0, 2, 0, 1, 2], {"ld", "ad"})])
def test_distillation_uses_the_epsilon_drawn_with_the_data(eps, present):
    model = FakeCICAM().train()
    images, labels = _batch()
    recipe = recipe_for(CFG["distilled"], "reference")
    g = torch.Generator().manual_seed(0)
    res = compute_loss(model, images, labels, recipe, "reference", teachers=_teachers(), generator=g,
                       epsilon=torch.tensor(eps))
    assert set(res.terms) & {"ld", "ad"} == present
    assert g.initial_seed() == 0 and torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
    with pytest.raises(ValueError, match="does not fit"):
        compute_loss(model, images, labels, recipe_for(CFG["distilled"], "reference", teachers=("cls",)),
                     "reference", teachers=_teachers(), generator=g, epsilon=torch.tensor([2] * 6))


def test_distilled_recipe_with_one_teacher():
    r = recipe_for(CFG["distilled"], "reference", teachers=("loc",))
    assert r.term_names == ("stu", "ad") and r.epsilon_choices == (0, 2)
    with pytest.raises(ConfigError):
        recipe_for(CFG["distilled"], "reference", teachers=())


def test_recipe_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe_for(CFG["student"], "paper").rho = 0.0


# ------------------------------------------------------------------ ε draws

def test_epsilon_reproducible_with_seeded_generator():
    r = recipe_for(CFG["distilled"], "reference")
    a = draw_epsilon(64, r, torch.Generator().manual_seed(7))
    b = draw_epsilon(64, r, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.long
    assert not torch.equal(a, draw_epsilon(64, r, torch.Generator().manual_seed(8)))


def test_epsilon_roughly_uniform_per_sample():
    r = recipe_for(CFG["distilled"], "reference")
    eps = draw_epsilon(3000, r, torch.Generator().manual_seed(0))
    counts = torch.bincount(eps, minlength=3)
    # Binomial(3000, 1/3): mean 1000, sd 25.8; ±120 is > 4.6 sd
    assert counts.sum() == 3000 and bool(((counts - 1000).abs() < 120).all())


def test_epsilon_per_step_is_one_value_per_batch_and_uniform_over_steps():
    r = recipe_for(CFG["distilled"], "paper")
    g = torch.Generator().manual_seed(0)
    draws = [draw_epsilon(6, r, g) for _ in range(600)]
    assert all(bool((d == d[0]).all()) for d in draws)
    counts = torch.bincount(torch.stack([d[0] for d in draws]), minlength=3)
    assert bool(((counts - 200).abs() < 60).all())  # sd 11.5


def test_epsilon_with_one_teacher_never_selects_the_other():
    r = recipe_for(CFG["distilled"], "reference", teachers=("cls",))
    eps = draw_epsilon(500, r, torch.Generator().manual_seed(0))
    assert set(eps.tolist()) == {0, 1}


# ------------------------------------------------------------------ compute_loss

@pytest.mark.parametrize("variant", ["paper", "reference"])
@pytest.mark.parametrize("role,expected", [
    ("student", {"stu", "total"}),
    ("cls_teacher", {"stu", "fore", "area", "total"}),
    ("loc_teacher", {"stu", "diff", "area", "total"}),
])
def test_compute_loss_produces_exactly_the_role_terms(variant, role, expected):
    model = FakeCICAM().train()
    images, labels = _batch()
    recipe = recipe_for(CFG[role], variant)
    result = compute_loss(model, images, labels, recipe, variant)
    assert set(result.terms) == expected
    assert all(t.dim() == 0 and not t.requires_grad for t in result.terms.values())
    weighted = sum(w * result.terms[name] for name, w in recipe.weights)
    assert torch.allclose(result.total.detach(), weighted) and torch.allclose(result.terms["total"], weighted)
    # passes: one main pass + fore (+ back)
    assert len(model.calls) == 1 + recipe.fore_pass + recipe.back_pass


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_distilled_terms_follow_the_draws(variant):
    recipe = recipe_for(CFG["distilled"], variant)
    images, labels = _batch()
    for seed in range(8):
        expected_eps = draw_epsilon(images.shape[0], recipe, torch.Generator().manual_seed(seed))
        result = compute_loss(FakeCICAM().train(), images, labels, recipe, variant, teachers=_teachers(),
                              generator=torch.Generator().manual_seed(seed))
        expected = {"stu", "total"} | ({"ld"} if (expected_eps == 1).any() else set()) \
            | ({"ad"} if (expected_eps == 2).any() else set())
        assert set(result.terms) == expected


@pytest.mark.parametrize("role", ["student", "cls_teacher", "loc_teacher", "distilled"])
@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_backward_reaches_every_model_parameter(role, variant):
    model, teachers = FakeCICAM().train(), _teachers()
    images, labels = _batch()
    recipe = recipe_for(CFG[role], variant)
    # a seed whose draw runs a teacher (per sample, seed 3 draws both; per step, the first ε != 0)
    gen_seed = next(s for s in range(50) if recipe.epsilon == "none" or (
        draw_epsilon(6, recipe, torch.Generator().manual_seed(s)) != 0).any())
    result = compute_loss(model, images, labels, recipe, variant, teachers=teachers,
                          generator=torch.Generator().manual_seed(gen_seed))
    result.total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    assert float(model.features[0].weight.grad.abs().sum()) > 0
    for teacher in (teachers.cls_model, teachers.loc_model):
        assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_teacher_totals_match_the_equations(variant):
    images, labels = _batch()
    for role in ("cls_teacher", "loc_teacher"):
        model = FakeCICAM().train()
        cfg = CFG[role]
        result = compute_loss(model, images, labels, recipe_for(cfg, variant), variant, loss_cfg=cfg)
        # recompute the passes from the recorded inputs (the fake model is deterministic)
        out = model(images)
        fore = model(model.calls[1]["images"]).logits
        heat = upsample_heatmap(normalize_heatmap(combinational_heatmap(out.cams_e, out.logits_e, variant),
                                                  variant), (8, 8))
        if role == "cls_teacher":
            eq = cls_teacher_loss(out.logits, out.logits_e, labels, fore, heat, cfg.mu, cfg.eta)
        else:
            back = model(model.calls[2]["images"]).logits
            eq = loc_teacher_loss(out.logits, out.logits_e, labels, fore, back, heat, cfg.beta, cfg.delta,
                                  variant, cfg.log_eps)
        assert torch.allclose(result.total, eq, atol=1e-6)


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_fore_and_back_images_are_masked_without_gradient_or_pool_update(variant):
    model = FakeCICAM().train()
    images, labels = _batch()
    recipe = recipe_for(CFG["loc_teacher"], variant)
    compute_loss(model, images, labels, recipe, variant)
    main, fore, back = model.calls
    assert main["update_pool"] is True and fore["update_pool"] is False and back["update_pool"] is False
    assert not fore["input_requires_grad"] and not back["input_requires_grad"]  # hard threshold: no grad
    with torch.no_grad():
        out = model(images)
        heat = upsample_heatmap(normalize_heatmap(combinational_heatmap(out.cams_e, out.logits_e, variant),
                                                  variant), (8, 8))
        mask = foreground_mask(heat, 0.2).unsqueeze(1).float()  # (B, 1, 8, 8)
    assert 0 < float(mask.mean()) < 1  # a real split on this batch
    assert torch.equal(fore["images"], images * mask)
    assert torch.equal(back["images"], images * (1 - mask))


def test_eval_model_does_not_update_pool_in_main_pass():
    model = FakeCICAM().eval()
    images, labels = _batch()
    compute_loss(model, images, labels, recipe_for(CFG["student"], "paper"), "paper")
    assert model.calls[0]["update_pool"] is False


def test_reference_runs_each_teacher_on_its_samples_only():
    recipe = recipe_for(CFG["distilled"], "reference")
    images, labels = _batch()
    for seed in range(6):
        eps = draw_epsilon(6, recipe, torch.Generator().manual_seed(seed))
        teachers = _teachers()
        compute_loss(FakeCICAM().train(), images, labels, recipe, "reference", teachers=teachers,
                     generator=torch.Generator().manual_seed(seed))
        for teacher, value in ((teachers.cls_model, 1), (teachers.loc_model, 2)):
            k = int((eps == value).sum())
            assert [c["batch"] for c in teacher.calls] == ([k] if k else [])
            if k:
                rows = torch.nonzero(eps == value).squeeze(1)
                assert torch.equal(teacher.calls[0]["images"], images[rows])


def test_paper_runs_only_the_teacher_of_the_step():
    recipe = recipe_for(CFG["distilled"], "paper")
    images, labels = _batch()
    seen = set()
    for seed in range(12):
        eps = int(draw_epsilon(1, recipe, torch.Generator().manual_seed(seed))[0])
        seen.add(eps)
        teachers = _teachers()
        compute_loss(FakeCICAM().train(), images, labels, recipe, "paper", teachers=teachers,
                     generator=torch.Generator().manual_seed(seed))
        assert len(teachers.cls_model.calls) == (eps == 1) and len(teachers.loc_model.calls) == (eps == 2)
        for teacher in (teachers.cls_model, teachers.loc_model):
            assert all(c["batch"] == 6 for c in teacher.calls)
    assert seen == {0, 1, 2}


def test_teachers_run_in_eval_mode_without_grad_or_pool_update():
    recipe = recipe_for(CFG["distilled"], "reference")
    teachers = _teachers()  # handed over in train mode
    images, labels = _batch()
    compute_loss(FakeCICAM().train(), images, labels, recipe, "reference", teachers=teachers,
                 generator=torch.Generator().manual_seed(3))
    calls = teachers.cls_model.calls + teachers.loc_model.calls
    assert calls and all(not c["training"] and not c["grad"] and c["update_pool"] is False for c in calls)


def test_distilled_total_is_eq16_of_its_terms():
    recipe = recipe_for(CFG["distilled"], "reference")
    images, labels = _batch()
    result = compute_loss(FakeCICAM().train(), images, labels, recipe, "reference", teachers=_teachers(),
                          generator=torch.Generator().manual_seed(3))
    t = result.terms
    expected = 0.2 * t["stu"] + 0.8 * t.get("ld", 0.0) + 0.8 * t.get("ad", 0.0)
    assert torch.allclose(result.total.detach(), torch.as_tensor(expected))


def test_alpha_one_without_kd_draw_gives_zero_total_that_backpropagates():
    cfg = dataclasses.replace(CFG["distilled"], alpha=1.0)
    recipe = recipe_for(cfg, "paper")
    seed = next(s for s in range(50) if draw_epsilon(1, recipe, torch.Generator().manual_seed(s))[0] == 0)
    images, labels = _batch()
    result = compute_loss(FakeCICAM().train(), images, labels, recipe, "paper", teachers=_teachers(),
                          generator=torch.Generator().manual_seed(seed))
    assert float(result.total.detach()) == 0.0
    result.total.backward()


def test_missing_teacher_is_a_run_error():
    recipe = recipe_for(CFG["distilled"], "reference")
    images, labels = _batch()
    with pytest.raises(RunError, match="loc teacher"):
        compute_loss(FakeCICAM().train(), images, labels, recipe, "reference",
                     teachers=TeacherSet(cls_model=FakeCICAM()))


def test_variant_must_match_the_recipe():
    images, labels = _batch()
    with pytest.raises(ValueError):
        compute_loss(FakeCICAM(), images, labels, recipe_for(CFG["student"], "paper"), "reference")


def test_hand_built_recipe_runs():
    # recipes are data: a custom mix (fore + area, no teacher) needs no new code path
    recipe = Recipe("custom", "paper", rho=0.0, weights=(("stu", 1.0), ("area", 2.0)))
    images, labels = _batch()
    result = compute_loss(FakeCICAM().train(), images, labels, recipe, "paper")
    assert set(result.terms) == {"stu", "area", "total"}
