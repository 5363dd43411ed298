"""The size of the distillation terms' gradients at the paper's CUB setting (n = 200 classes, 14 x 14
maps, T = 15, no T² factor), next to a cross-entropy gradient: under ``paper`` the activation
distillation of Eq. 13-15 is numerically inert, so "Stu + LocTea" trains as "Stu" (docs/fidelity.md L9)."""

from __future__ import annotations

import pytest
import torch

from kdcicam.training.losses import activation_kd, logit_kd

B, N, H, W, T = 6, 200, 14, 14, 15.0


def _max_grad(loss_fn, student: torch.Tensor, teacher: torch.Tensor, variant: str) -> tuple[float, float]:
    student = student.clone().requires_grad_()
    loss = loss_fn(student, teacher, T, variant)
    (grad,) = torch.autograd.grad(loss, student)
    return loss.item(), grad.abs().max().item()


@pytest.fixture()
def ce_grad() -> float:
    logits = torch.randn(B, N, generator=torch.Generator().manual_seed(2)).mul(10).requires_grad_()
    loss = torch.nn.functional.cross_entropy(logits, torch.zeros(B, dtype=torch.long))
    (grad,) = torch.autograd.grad(loss, logits)
    return grad.abs().max().item()  # ~1/B: the label's logit


@pytest.mark.parametrize("scale", [1.0, 10.0])  # CAM / logit spread of an untrained and a trained network
def test_paper_activation_distillation_is_numerically_inert(scale, ce_grad):
    g = torch.Generator().manual_seed(0)
    student, teacher = (torch.randn(B, N, H, W, generator=g) * scale for _ in range(2))
    loss, grad = _max_grad(activation_kd, student, teacher, "paper")
    # softmax over n·h·w = 39,200 positions: each value ~2.6e-5, squared differences ~1e-9 and below
    assert loss < 1e-8 and grad < 1e-12
    assert grad / ce_grad < 1e-10  # Adam does not rescue it: the CE term dominates every step
    _, ref_grad = _max_grad(activation_kd, student, teacher, "reference")
    assert ref_grad > 1e3 * grad  # sigmoid(A/T) per value: orders of magnitude larger


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_logit_distillation_gradients_at_T15_without_T_squared(scale, ce_grad):
    g = torch.Generator().manual_seed(1)
    student, teacher = (torch.randn(B, N, generator=g) * scale for _ in range(2))
    _, paper = _max_grad(logit_kd, student, teacher, "paper")
    _, reference = _max_grad(logit_kd, student, teacher, "reference")
    assert reference < 1e-5 and reference / ce_grad < 1e-4  # probabilities as log-probabilities: ~3e-6
    assert 1e-6 < paper < 1e-2 and paper / ce_grad < 1e-2  # KL without T²: ~1e-5 to ~6e-4
    assert paper > 10 * reference


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_activation_distillation_is_computed_in_float32_from_bf16_maps(variant):
    # Under bf16 autocast the CAMs arrive in bf16; sigmoid(A/T) in bf16 would round to steps of 2^-8
    # near 0.5, coarser than the student-teacher differences. The loss upcasts first.
    g = torch.Generator().manual_seed(3)
    student, teacher = (torch.randn(2, 4, 3, 3, generator=g).to(torch.bfloat16) for _ in range(2))
    loss = activation_kd(student, teacher, T, variant)
    assert loss.dtype == torch.float32
    assert loss.item() == activation_kd(student.float(), teacher.float(), T, variant).item()
