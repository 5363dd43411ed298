"""The loss terms of KD-CI-CAM (Eq. 9-21) as pure functions of tensors.

Every function returns a scalar averaged over the batch (the paper prints per-image sums
Σ_i y_i log s_i; the mean over images is the usual reading and what the reference code does).
Where the printed equation and the authors' code differ, ``variant`` selects ``"paper"`` or
``"reference"``; docs/fidelity.md lists every such choice and why.

Which tensors feed each term (enhanced vs entangled branch, which heatmap) is decided by the
caller, :func:`kdcicam.training.recipes.compute_loss`; the docstrings say what it passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdcicam.model.heatmap import check_variant


def student_loss(logits: torch.Tensor, logits_e: torch.Tensor, labels: torch.Tensor, rho: float) -> torch.Tensor:
    """Eq. 9, Stu Loss: ρ·CE(S) + CE(S^e).

    ρ = 1 inside the teachers' losses (Eq. 19, 21) and for the plain student of the ``paper``
    variant (both classifiers trained, §3.2.4); ρ = 0 inside the distillation loss (Eq. 16) and
    for the plain student of the ``reference`` variant (``recipes.STUDENT_RHO``). With ρ = 0 the entangled term is not computed at all (0·inf would be NaN).

    Args:
        logits: (B, n) entangled-branch logits S.
        logits_e: (B, n) enhanced-branch logits S^e.
        labels: (B,) class indices y.
        rho: weight ρ of the entangled-branch term.

    Returns:
        Scalar loss.
    """
    loss = F.cross_entropy(logits_e, labels)  # Eq. 9, second term: -Σ y log s^e
    if rho != 0:
        loss = loss + rho * F.cross_entropy(logits, labels)  # Eq. 9, first term: -ρ Σ y log s
    return loss


def logit_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float, variant: str) -> torch.Tensor:
    """Eq. 10-12, logits distillation L^ld between the classification teacher and the student.

    Args:
        student_logits: (B, n) student logits Z^stu (the caller passes the enhanced branch S^e).
        teacher_logits: (B, n) teacher logits Z^cls_tch (no gradient expected).
        T: temperature T^cls.
        variant: ``"paper"``: KL(Z̃^tch ‖ Z̃^stu) = Σ_i t_i (log t_i - log s_i) of the
            temperature-softened distributions (teacher as target, as in Hinton et al. and as
            the reference code intends), averaged over the batch, no T² factor (none printed).
            ``"reference"``: ``KLDivLoss(reduction="batchmean")(softmax(s/T), softmax(t/T))``:
            Σ_i t_i (log t_i - s_i) with the student's *probabilities* s_i where
            log-probabilities belong (it can be negative), no T².

    Returns:
        Scalar loss (mean over the B samples).
    """
    check_variant(variant)
    target = F.softmax(teacher_logits / T, dim=1)  # (B, n) Eq. 12: Z̃^cls_tch
    if variant == "paper":
        student = F.log_softmax(student_logits / T, dim=1)  # (B, n) log of Eq. 11: log Z̃^stu
    else:
        student = F.softmax(student_logits / T, dim=1)  # (B, n) probabilities, as the reference code
    return F.kl_div(student, target, reduction="batchmean")  # Eq. 10


def activation_kd(student_cams: torch.Tensor, teacher_cams: torch.Tensor, T: float, variant: str) -> torch.Tensor:
    """Eq. 13-15, activation distillation L^ad between the localization teacher and the student.

    Args:
        student_cams: (B, n, h, w) student CAMs A^stu (the caller passes the enhanced M^e).
        teacher_cams: (B, n, h, w) teacher CAMs A^loc_tch (no gradient expected).
        T: temperature T^loc.
        variant: ``"paper"``: per image, softmax of A/T over all n·h·w positions (Eq. 14-15),
            then the mean squared difference over all B·n·h·w values (Eq. 13).
            ``"reference"``: mean squared difference of sigmoid(A/T), element-wise.

    Returns:
        Scalar loss.
    """
    check_variant(variant)
    # float32 even under bf16 autocast: sigmoid(A/T) sits near 0.5, where bf16's step (2^-8) is larger
    # than the student-teacher differences the loss measures (the authors trained in float32)
    s = student_cams.float().flatten(1) / T  # (B, n*h*w)
    t = teacher_cams.float().flatten(1) / T  # (B, n*h*w)
    if variant == "paper":
        s, t = F.softmax(s, dim=1), F.softmax(t, dim=1)  # Eq. 14-15
    else:
        s, t = torch.sigmoid(s), torch.sigmoid(t)
    return F.mse_loss(s, t)  # Eq. 13


def area_loss(heatmap: torch.Tensor) -> torch.Tensor:
    """Eq. 17, Area Loss: the mean of H over its h·w positions, averaged over the batch.

    Args:
        heatmap: (B, H, W) the normalised heatmap upsampled to the input size (what the
            reference code uses; Eq. 17's H has the original image's size), differentiable.

    Returns:
        Scalar loss.
    """
    return heatmap.flatten(1).mean(dim=1).mean()  # Eq. 17: (1/hw) Σ_ij H_ij, then over images


def fore_loss(fore_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 18, Fore Loss: cross-entropy of the foreground image's logits S^fore.

    Args:
        fore_logits: (B, n) logits of the foreground images I^fore.
        labels: (B,) class indices.

    Returns:
        Scalar loss.
    """
    return F.cross_entropy(fore_logits, labels)  # Eq. 18: -Σ y log s^fore


def diff_loss(logits: torch.Tensor, fore_logits: torch.Tensor, back_logits: torch.Tensor,
              labels: torch.Tensor, variant: str, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 20, Diff Loss of the localization teacher.

    Args:
        logits: (B, n) the original image's logits (the caller passes the enhanced S^e, as the
            reference code does).
        fore_logits: (B, n) logits of the foreground images.
        back_logits: (B, n) logits of the background images.
        labels: (B,) class indices.
        variant: ``"paper"``: on probabilities of the label class, d = s^fore - s^back,
            -log(max(d, eps)) - log(max((s + d)/2, eps)). Both arguments can be <= 0 (the
            background can score higher than the foreground), so they are clamped to ``eps``:
            the loss stays finite (at most -2 log eps) and a clamped term passes no gradient.
            ``"reference"``: on *logits*, CE(fore - back) + CE((fore - back + logits)/2).
        eps: lower clamp of the log arguments (LossConfig.log_eps); paper variant only.

    Returns:
        Scalar loss.
    """
    check_variant(variant)
    if variant == "reference":
        diff = fore_logits - back_logits  # (B, n)
        return F.cross_entropy(diff, labels) + F.cross_entropy((diff + logits) / 2, labels)
    idx = labels.long().unsqueeze(1)  # (B, 1)
    s = F.softmax(logits, dim=1).gather(1, idx).squeeze(1)  # (B,) s_y
    s_fore = F.softmax(fore_logits, dim=1).gather(1, idx).squeeze(1)  # (B,) s_y^fore
    s_back = F.softmax(back_logits, dim=1).gather(1, idx).squeeze(1)  # (B,) s_y^back
    d = s_fore - s_back  # (B,) in [-1, 1]
    first = -torch.log(d.clamp(min=eps))  # Eq. 20, first term
    second = -torch.log(((s + d) / 2).clamp(min=eps))  # Eq. 20, second term
    return (first + second).mean()


def cls_teacher_loss(logits: torch.Tensor, logits_e: torch.Tensor, labels: torch.Tensor,
                     fore_logits: torch.Tensor, heatmap: torch.Tensor, mu: float, eta: float) -> torch.Tensor:
    """Eq. 19: L^cls_tch = L^stu(ρ=1) + μ·L^fore + η·L^area.

    Args:
        logits: (B, n) entangled-branch logits S.
        logits_e: (B, n) enhanced-branch logits S^e.
        labels: (B,) class indices.
        fore_logits: (B, n) logits of the foreground images.
        heatmap: (B, H, W) normalised, upsampled heatmap (differentiable).
        mu: μ, weight of the Fore Loss.
        eta: η, weight of the Area Loss.

    Returns:
        Scalar loss.
    """
    return (student_loss(logits, logits_e, labels, rho=1.0) + mu * fore_loss(fore_logits, labels)
            + eta * area_loss(heatmap))


def loc_teacher_loss(logits: torch.Tensor, logits_e: torch.Tensor, labels: torch.Tensor,
                     fore_logits: torch.Tensor, back_logits: torch.Tensor, heatmap: torch.Tensor,
                     beta: float, delta: float, variant: str, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 21: L^loc_tch = L^stu(ρ=1) + β·L^diff + δ·L^area.

    Args:
        logits: (B, n) entangled-branch logits S.
        logits_e: (B, n) enhanced-branch logits S^e (the "original image prediction" of Eq. 20).
        labels: (B,) class indices.
        fore_logits: (B, n) logits of the foreground images.
        back_logits: (B, n) logits of the background images.
        heatmap: (B, H, W) normalised, upsampled heatmap (differentiable).
        beta: β, weight of the Diff Loss.
        delta: δ, weight of the Area Loss.
        variant: ``"paper"`` or ``"reference"`` (Eq. 20's form, see :func:`diff_loss`).
        eps: clamp of Eq. 20's log arguments (paper variant).

    Returns:
        Scalar loss.
    """
    return (student_loss(logits, logits_e, labels, rho=1.0)
            + beta * diff_loss(logits_e, fore_logits, back_logits, labels, variant, eps)
            + delta * area_loss(heatmap))


def distillation_loss(stu: torch.Tensor, alpha: float, ld: torch.Tensor | None = None,
                      ad: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 16: α·[(ε==1)·L^ld + (ε==2)·L^ad] + (1-α)·L^stu(ρ=0).

    The indicators are carried by the arguments: ``ld``/``ad`` are None when no sample (or, per
    step, not the step) drew ε = 1 / ε = 2. Each KD term is the mean over the samples that drew
    it (per-step ε: the whole batch), while ``stu`` is the mean over the whole batch, exactly as
    the reference code normalises (``batchmean`` / ``MSELoss`` on the selected rows).

    Args:
        stu: scalar L^stu with ρ = 0 (:func:`student_loss`).
        alpha: distillation strength α.
        ld: scalar :func:`logit_kd` over the ε = 1 samples, or None.
        ad: scalar :func:`activation_kd` over the ε = 2 samples, or None.

    Returns:
        Scalar loss.
    """
    total = (1.0 - alpha) * stu
    if ld is not None:
        total = total + alpha * ld
    if ad is not None:
        total = total + alpha * ad
    return total
