"""Eq. 9-21 on 2-class, 3x3 hand-made tensors, both variants, with the arithmetic in comments."""

import math

import pytest
import torch

from kdcicam.training.losses import (
    activation_kd,
    area_loss,
    cls_teacher_loss,
    diff_loss,
    distillation_loss,
    fore_loss,
    loc_teacher_loss,
    logit_kd,
    student_loss,
)

LN3 = math.log(3.0)
Y0 = torch.tensor([0])


def _approx(t: torch.Tensor, value: float, tol: float = 1e-5) -> bool:
    return abs(float(t.detach()) - value) < tol


# ------------------------------------------------------------------ Eq. 9

def test_student_loss_rho():
    logits = torch.tensor([[0.0, 0.0]])  # s = (.5, .5): CE = ln 2
    logits_e = torch.tensor([[LN3, 0.0]])  # s^e = (3/4, 1/4): CE = ln(4/3)
    assert _approx(student_loss(logits, logits_e, Y0, rho=1.0), math.log(2) + math.log(4 / 3))  # ln(8/3) = 0.98083
    assert _approx(student_loss(logits, logits_e, Y0, rho=0.0), math.log(4 / 3))  # 0.28768


def test_student_loss_rho_zero_ignores_entangled_branch_entirely():
    logits = torch.tensor([[float("inf"), float("-inf")]])  # CE on label 1 would be inf
    logits_e = torch.tensor([[0.0, 0.0]])
    assert _approx(student_loss(logits, logits_e, torch.tensor([1]), rho=0.0), math.log(2))


# ------------------------------------------------------------------ Eq. 10-12

def test_logit_kd_paper_is_kl_teacher_to_student_without_t_squared():
    student = torch.tensor([[0.0, 0.0]])  # p_s = (.5, .5)
    teacher = torch.tensor([[LN3, 0.0]])  # p_t = (.75, .25)
    # KL(t‖s) = .75 ln(.75/.5) + .25 ln(.25/.5) = .75·0.405465 - .25·0.693147 = 0.130812
    assert _approx(logit_kd(student, teacher, T=1.0, variant="paper"), 0.130812)
    # T = 2 with teacher logits doubled gives the same softened distributions: same value, so no T² factor
    assert _approx(logit_kd(student, 2 * teacher, T=2.0, variant="paper"), 0.130812)


def test_logit_kd_paper_is_batch_mean_and_zero_when_equal():
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    teacher = torch.tensor([[LN3, 0.0], [1.0, 2.0]])  # second row identical: KL 0
    assert _approx(logit_kd(student, teacher, T=1.0, variant="paper"), 0.130812 / 2)


def test_logit_kd_reference_passes_probabilities_as_log_probabilities():
    student = torch.tensor([[0.0, 0.0]])  # p_s = (.5, .5) used where log p_s belongs
    teacher = torch.tensor([[LN3, 0.0]])  # p_t = (.75, .25)
    # Σ t (ln t - p_s) = .75(ln .75 - .5) + .25(ln .25 - .5) = .75(-0.787682) + .25(-1.886294) = -1.062335
    assert _approx(logit_kd(student, teacher, T=1.0, variant="reference"), -1.062335)


def test_logit_kd_gradient_reaches_student_only():
    student = torch.tensor([[0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[LN3, 0.0]])
    logit_kd(student, teacher, T=1.0, variant="paper").backward()
    # d KL / d z_s = p_s - p_t = (.5 - .75, .5 - .25)
    assert torch.allclose(student.grad, torch.tensor([[-0.25, 0.25]]))


# ------------------------------------------------------------------ Eq. 13-15

def _cams_pair():
    student = torch.zeros(1, 2, 3, 3)  # 18 positions, all 0
    teacher = torch.zeros(1, 2, 3, 3)
    teacher[0, 1, 2, 2] = math.log(19.0)  # one position at ln 19
    return student, teacher


def test_activation_kd_paper_softmax_over_all_positions():
    student, teacher = _cams_pair()
    # student softmax: 1/18 = 2/36 everywhere; teacher: 19/36 at the peak, 1/36 at the 17 others
    # squared diffs: (17/36)² once, (1/36)² 17 times -> (289 + 17)/1296 = 306/1296, mean over 18 = 0.0131173
    assert _approx(activation_kd(student, teacher, T=1.0, variant="paper"), 306 / 1296 / 18)


def test_activation_kd_reference_sigmoid_elementwise():
    student, teacher = _cams_pair()
    # sigmoid(0) = .5 everywhere; teacher peak sigmoid(ln 19) = 19/20 = .95 -> (.45)² / 18 = 0.01125
    assert _approx(activation_kd(student, teacher, T=1.0, variant="reference"), 0.2025 / 18)
    # temperature divides the maps: T = 2 with the teacher doubled gives the same value
    assert _approx(activation_kd(student, 2 * teacher, T=2.0, variant="reference"), 0.2025 / 18)


def test_activation_kd_softmax_is_per_image():
    student, teacher = _cams_pair()
    student2 = torch.cat([student, teacher])  # image 2: student equals teacher -> 0
    teacher2 = torch.cat([teacher, teacher])
    # mean over 2·18 values: half of the one-image value
    assert _approx(activation_kd(student2, teacher2, T=1.0, variant="paper"), 306 / 1296 / 36)


# ------------------------------------------------------------------ Eq. 17-18

def test_area_loss_is_mean_of_heatmap():
    h = torch.stack([torch.arange(9.0).view(3, 3), torch.zeros(3, 3)])  # means 4 and 0
    assert _approx(area_loss(h), 2.0)


def test_fore_loss_is_cross_entropy():
    assert _approx(fore_loss(torch.tensor([[LN3, 0.0]]), Y0), math.log(4 / 3))


# ------------------------------------------------------------------ Eq. 20

def test_diff_loss_paper_value():
    logits = torch.tensor([[0.0, 0.0]])  # s = .5
    fore = torch.tensor([[LN3, 0.0]])  # s^fore = .75
    back = torch.tensor([[0.0, 0.0]])  # s^back = .5
    # d = .25: -ln(.25) - ln((.5 + .25)/2) = ln 4 + ln(8/3) = 1.386294 + 0.980829 = 2.367124
    assert _approx(diff_loss(logits, fore, back, Y0, "paper"), 2.367124)


def test_diff_loss_paper_finite_when_background_wins():
    logits = torch.tensor([[0.0, 0.0]], requires_grad=True)  # s = .5
    fore = torch.tensor([[0.0, 0.0]], requires_grad=True)  # s^fore = .5
    back = torch.tensor([[LN3, 0.0]], requires_grad=True)  # s^back = .75
    loss = diff_loss(logits, fore, back, Y0, "paper", eps=1e-6)
    # d = -.25 clamps to 1e-6: -ln 1e-6 = 13.815511; (s + d)/2 = .125: -ln .125 = 2.079442
    assert _approx(loss, 13.815511 + 2.079442, tol=1e-4)
    loss.backward()
    for t in (logits, fore, back):
        assert bool(torch.isfinite(t.grad).all())
    # the clamped first term passes no gradient; the second does: d/dz of -ln((s + s_f - s_b)/2)
    assert float(logits.grad.abs().sum()) > 0


def test_diff_loss_paper_both_terms_clamped():
    logits = torch.tensor([[0.0, LN3]], requires_grad=True)  # s = .25
    fore = torch.tensor([[-5.0, 5.0]], requires_grad=True)  # s^fore ≈ 4.5e-5
    back = torch.tensor([[5.0, -5.0]], requires_grad=True)  # s^back ≈ 1: d ≈ -1, s + d < 0
    loss = diff_loss(logits, fore, back, Y0, "paper", eps=1e-6)
    assert _approx(loss, -2 * math.log(1e-6), tol=1e-4)  # 27.631021
    loss.backward()
    assert all(bool((t.grad == 0).all()) for t in (logits, fore, back))


def test_diff_loss_reference_on_logits():
    logits = torch.tensor([[0.0, 0.0]])
    fore = torch.tensor([[LN3, 0.0]])
    back = torch.tensor([[0.0, 0.0]])
    # diff = (ln 3, 0): CE = ln(4/3) = 0.287682
    # (diff + logits)/2 = (ln3/2, 0): p0 = √3/(√3 + 1) = 0.633975, CE = ln(1 + 1/√3) = 0.455746
    assert _approx(diff_loss(logits, fore, back, Y0, "reference"), 0.287682 + 0.455746)


def test_diff_loss_reference_finite_when_background_wins():
    # logits never need a log of a difference: large negative differences stay finite
    loss = diff_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([[50.0, 0.0]]), Y0, "reference")
    # diff = (-50, 0): CE ≈ 50; (diff + 0)/2 = (-25, 0): CE ≈ 25
    assert _approx(loss, 75.0, tol=1e-4)


# ------------------------------------------------------------------ Eq. 16, 19, 21

def test_cls_teacher_loss_composes_eq19():
    logits = torch.tensor([[0.0, 0.0]])  # CE ln 2
    logits_e = torch.tensor([[LN3, 0.0]])  # CE ln(4/3)
    fore = torch.tensor([[0.0, 0.0]])  # CE ln 2
    heat = torch.arange(9.0).view(1, 3, 3)  # area 4
    # ln2 + ln(4/3) + 1.0·ln2 + 0.04·4 = 0.693147 + 0.287682 + 0.693147 + 0.16 = 1.833976
    assert _approx(cls_teacher_loss(logits, logits_e, Y0, fore, heat, mu=1.0, eta=0.04), 1.833976)


def test_loc_teacher_loss_composes_eq21():
    logits = torch.tensor([[0.0, 0.0]])  # CE ln 2
    logits_e = torch.tensor([[0.0, 0.0]])  # CE ln 2; s = .5 for Eq. 20
    fore = torch.tensor([[LN3, 0.0]])
    back = torch.tensor([[0.0, 0.0]])
    heat = torch.arange(9.0).view(1, 3, 3)  # area 4
    # 2 ln2 + 0.5·2.367124 (paper Eq. 20 above) + 0.1·4 = 1.386294 + 1.183562 + 0.4 = 2.969856
    value = loc_teacher_loss(logits, logits_e, Y0, fore, back, heat, beta=0.5, delta=0.1, variant="paper")
    assert _approx(value, 2.969856)
    # reference: 2 ln2 + 0.5·(0.287682 + 0.455746) + 0.4 = 1.386294 + 0.371714 + 0.4 = 2.158008
    value = loc_teacher_loss(logits, logits_e, Y0, fore, back, heat, beta=0.5, delta=0.1, variant="reference")
    assert _approx(value, 2.158008)


def test_distillation_loss_eq16():
    stu, ld, ad = torch.tensor(1.0), torch.tensor(0.5), torch.tensor(0.25)
    assert _approx(distillation_loss(stu, 0.8), 0.2)  # ε = 0: (1-α)·stu
    assert _approx(distillation_loss(stu, 0.8, ld=ld), 0.8 * 0.5 + 0.2)  # 0.6
    assert _approx(distillation_loss(stu, 0.8, ad=ad), 0.8 * 0.25 + 0.2)  # 0.4
    assert _approx(distillation_loss(stu, 0.8, ld=ld, ad=ad), 0.8 * 0.75 + 0.2)  # per sample: both drawn, 0.8


@pytest.mark.parametrize("fn", [
    lambda v: logit_kd(torch.zeros(1, 2), torch.zeros(1, 2), 1.0, v),
    lambda v: activation_kd(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), 1.0, v),
    lambda v: diff_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), Y0, v),
])
def test_unknown_variant_is_rejected(fn):
    with pytest.raises(ValueError):
        fn("Paper")
