"""Training roles as data: which loss terms, with which weights, need which forward passes.

The student, the classification teacher (Eq. 19), the localization teacher (Eq. 21) and the
distilled student (Eq. 16) are the same network trained with different :class:`Recipe`s. One
function, :func:`compute_loss`, runs any recipe:

1. the model on the batch (the causal context pool may update: ``update_pool`` left to the model);
2. if the recipe needs masks or the area loss: the Eq. 3 heatmap of the *enhanced* branch,
   normalised, upsampled to the image size; M^fore = H > θ·max(H), M^back = 1 - M^fore,
   multiplied into the (already normalised) input tensor; the model again on the foreground /
   background images with ``update_pool=False``;
3. if the recipe distils: ε drawn from the run's generator (per step: ``"paper"``, per sample:
   ``"reference"``), each teacher run only for the samples that drew it, in eval mode without
   gradients;
4. the weighted sum of the recipe's terms.

Gradients reach the model through every term: through the heatmap for the area loss and
through the fore/back passes' parameters; not through the hard threshold of the masks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from kdcicam.core.config import ROLES, LossConfig
from kdcicam.core.errors import ConfigError, RunError
from kdcicam.model.heatmap import (
    check_variant,
    combinational_heatmap,
    foreground_mask,
    normalize_heatmap,
    upsample_heatmap,
)
from kdcicam.model.output import CICAMOutput
from kdcicam.training.losses import activation_kd, area_loss, diff_loss, fore_loss, logit_kd, student_loss
from kdcicam.training.subset_means import global_subset_means

EpsilonMode = Literal["none", "step", "sample"]
TEACHER_EPSILON = {"cls": 1, "loc": 2}  # ε value that selects each teacher (Eq. 16)
# ρ of Eq. 9 for the plain student (Table 3 "Base" / "+ConPool", Table 4 "Stu"). "paper": both
# classifiers trained (§3.2.4). "reference": the KD student script run with --kd_alpha 0.0
# --distillation none, whose dataset gives every sample flag 0, so the loss is CE(S^e) alone
# (docs/fidelity.md L4).
STUDENT_RHO = {"paper": 1.0, "reference": 0.0}


@dataclass(frozen=True)
class Recipe:
    """One training role: its loss terms and the forward passes they need."""

    role: str  # student | cls_teacher | loc_teacher | distilled
    variant: str  # the fidelity variant the recipe was built for
    rho: float  # ρ of Eq. 9
    weights: tuple[tuple[str, float], ...]  # (term, weight) pairs summed into the total
    fg_threshold: float | None = None  # θ of M^fore = H > θ·max(H); None = no masks needed
    fore_pass: bool = False  # run the model on the foreground images
    back_pass: bool = False  # run the model on the background images
    teachers: tuple[str, ...] = ()  # teachers distilled from: "cls" (ε = 1), "loc" (ε = 2)
    epsilon: EpsilonMode = "none"  # ε granularity: one per step or one per sample
    heatmap_function: str = "quadratic"  # γ of Eq. 3 for the masks and the area loss (model.heatmap_function)

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.weights)

    @property
    def needs_heatmap(self) -> bool:
        return "area" in self.term_names or self.fore_pass or self.back_pass

    @property
    def epsilon_choices(self) -> tuple[int, ...]:
        """The values ε is drawn from, uniformly: 0 (no KD) and one per available teacher."""
        return (0,) + tuple(TEACHER_EPSILON[t] for t in self.teachers)


@dataclass
class TeacherSet:
    """The trained teachers a distilled student learns from (either may be absent)."""

    cls_model: nn.Module | None = None  # classification teacher (logit KD, ε = 1)
    loc_model: nn.Module | None = None  # localization teacher (activation KD, ε = 2)


@dataclass
class LossResult:
    total: torch.Tensor  # scalar with graph, to backpropagate
    terms: dict[str, torch.Tensor]  # detached scalars: "stu", "fore", "area", "diff", "ld", "ad", "total"
    output: CICAMOutput  # the model's output on the batch (for accuracy, logging)


def recipe_for(loss_cfg: LossConfig, variant: str, teachers: tuple[str, ...] = ("cls", "loc"),
               heatmap_function: str = "quadratic") -> Recipe:
    """The recipe of ``loss_cfg.role`` with the weights of ``loss_cfg``.

    Args:
        loss_cfg: role and term weights (α, μ, η, β, δ, θ's).
        variant: ``"paper"`` (ε per step) or ``"reference"`` (ε per sample).
        teachers: for the distilled role, the teachers available ("cls", "loc" or both); ε is
            drawn uniformly from 0 and the values of these teachers (Table 4's one-teacher rows).
        heatmap_function: γ of Eq. 3 behind the teachers' masks and area loss.

    Returns:
        The frozen recipe.
    """
    check_variant(variant)
    recipe = _role_recipe(loss_cfg, variant, teachers)
    return dataclasses.replace(recipe, heatmap_function=heatmap_function)


def _role_recipe(loss_cfg: LossConfig, variant: str, teachers: tuple[str, ...]) -> Recipe:
    role = loss_cfg.role
    if role == "student":
        return Recipe(role, variant, rho=STUDENT_RHO[variant], weights=(("stu", 1.0),))
    if role == "cls_teacher":
        return Recipe(role, variant, rho=1.0,  # Eq. 19
                      weights=(("stu", 1.0), ("fore", loss_cfg.mu), ("area", loss_cfg.eta)),
                      fg_threshold=loss_cfg.fg_threshold_cls, fore_pass=True)
    if role == "loc_teacher":
        return Recipe(role, variant, rho=1.0,  # Eq. 21
                      weights=(("stu", 1.0), ("diff", loss_cfg.beta), ("area", loss_cfg.delta)),
                      fg_threshold=loss_cfg.fg_threshold_loc, fore_pass=True, back_pass=True)
    if role == "distilled":
        unknown = sorted(set(teachers) - set(TEACHER_EPSILON))
        if not teachers or unknown:
            raise ConfigError(f"teachers = {teachers!r}: a distilled student needs 'cls' and/or 'loc'")
        ordered = tuple(t for t in TEACHER_EPSILON if t in teachers)
        kd_terms = tuple(("ld" if t == "cls" else "ad", loss_cfg.alpha) for t in ordered)
        return Recipe(role, variant, rho=0.0,  # Eq. 16
                      weights=(("stu", 1.0 - loss_cfg.alpha),) + kd_terms, teachers=ordered,
                      epsilon="step" if variant == "paper" else "sample")
    raise ConfigError(f"loss.role = {role!r}: must be one of {', '.join(ROLES)}")


def draw_epsilon(batch_size: int, recipe: Recipe, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw the ε of Eq. 16 uniformly from ``recipe.epsilon_choices``.

    Args:
        batch_size: B.
        recipe: a distilling recipe; ``epsilon == "step"`` draws one value for the whole batch,
            ``"sample"`` one per sample.
        generator: the run's RNG (None = torch's global RNG).

    Returns:
        (B,) int64 CPU tensor of ε values.
    """
    if recipe.epsilon == "none":
        return torch.zeros(batch_size, dtype=torch.long)
    choices = torch.tensor(recipe.epsilon_choices, dtype=torch.long)  # (c,)
    count = 1 if recipe.epsilon == "step" else batch_size
    device = generator.device if generator is not None else torch.device("cpu")
    pick = torch.randint(len(choices), (count,), generator=generator, device=device).cpu()  # (count,)
    return choices[pick].expand(batch_size).clone()  # (B,)


def compute_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe, variant: str,
                 teachers: TeacherSet | None = None, generator: torch.Generator | None = None,
                 loss_cfg: LossConfig | None = None, epsilon: torch.Tensor | None = None) -> LossResult:
    """Run the forward passes ``recipe`` needs and sum its weighted loss terms.

    Args:
        model: the network, ``model(images, labels=None, update_pool=None) -> CICAMOutput``.
        images: (B, 3, H, W) normalised input batch.
        labels: (B,) class indices.
        recipe: the role's recipe (:func:`recipe_for`).
        variant: ``"paper"`` or ``"reference"``; must be the recipe's.
        teachers: the teachers of a distilling recipe (put in eval mode here).
        generator: the run's RNG, used to draw ε.
        loss_cfg: source of T_cls, T_loc and log_eps (None = :class:`LossConfig` defaults).
        epsilon: (B,) ε per sample already drawn with the data (``data.epsilon_augment``); None =
            drawn here from ``generator``.

    Returns:
        :class:`LossResult` with the total, the detached terms and the model's output.
    """
    check_variant(variant)
    if variant != recipe.variant:
        raise ValueError(f"recipe built for variant {recipe.variant!r}, called with {variant!r}")
    cfg = loss_cfg if loss_cfg is not None else LossConfig()
    teacher_models = _teacher_models(recipe, teachers)

    out = model(images, labels=labels)  # the one pass that may update the context pool
    terms: dict[str, torch.Tensor] = {"stu": student_loss(out.logits, out.logits_e, labels, recipe.rho)}
    if recipe.needs_heatmap:
        terms.update(_mask_terms(model, images, labels, out, recipe, variant, cfg))
    if recipe.teachers:
        terms.update(_distillation_terms(images, out, recipe, variant, teacher_models, generator, cfg, epsilon))

    return weighted_result(terms, recipe, out)


def weighted_result(terms: dict[str, torch.Tensor], recipe: Recipe, out: CICAMOutput) -> LossResult:
    """The weighted sum of the recipe's terms (Eq. 16, 19 or 21), with the detached terms to log."""
    weighted = [w * terms[name] for name, w in recipe.weights if name in terms and w != 0]
    # Nothing weighted (α = 1 and ε = 0 drawn): a zero that still has a graph to backpropagate.
    total = sum(weighted[1:], weighted[0]) if weighted else out.logits_e.sum() * 0.0
    logged = {name: value.detach() for name, value in terms.items()}
    logged["total"] = total.detach()
    return LossResult(total=total, terms=logged, output=out)


def heatmap_terms(images: torch.Tensor, out: CICAMOutput, recipe: Recipe,
                  variant: str) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The Area term (Eq. 17) and the foreground mask M^fore (B, 1, H, W) of the fore/back passes
    (None when the recipe runs none), from the Eq. 3 heatmap of the enhanced branch."""
    heat = combinational_heatmap(out.cams_e, out.logits_e, variant, recipe.heatmap_function)  # (B, h, w) Eq. 3 on M^e
    heat = upsample_heatmap(normalize_heatmap(heat, variant), tuple(images.shape[-2:]))  # (B, H, W)
    terms: dict[str, torch.Tensor] = {}
    if "area" in recipe.term_names:
        terms["area"] = area_loss(heat)  # Eq. 17, gradient through H
    if not (recipe.fore_pass or recipe.back_pass):
        return terms, None
    if recipe.fg_threshold is None:
        raise ValueError(f"recipe {recipe.role!r} runs fore/back passes but has no fg_threshold")
    return terms, foreground_mask(heat, recipe.fg_threshold).unsqueeze(1).to(images.dtype)  # (B, 1, H, W) no grad


def _mask_terms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, out: CICAMOutput,
                recipe: Recipe, variant: str, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Area, Fore and Diff terms (Eq. 17, 18, 20) from the heatmap and the fore/back passes."""
    terms, fg = heatmap_terms(images, out, recipe, variant)
    if fg is None:
        return terms
    # Fore/back logits: the entangled branch (backbone -> shared classifier), as the reference's
    # aux_classification; the extra passes never update the pool.
    fore = model(images * fg, update_pool=False).logits if recipe.fore_pass else None  # (B, n)
    back = model(images * (1 - fg), update_pool=False).logits if recipe.back_pass else None  # (B, n)
    return {**terms, **pass_terms(out, fore, back, labels, recipe, variant, cfg)}


def pass_terms(out: CICAMOutput, fore: torch.Tensor | None, back: torch.Tensor | None, labels: torch.Tensor,
               recipe: Recipe, variant: str, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Fore and Diff terms (Eq. 18, 20) from the logits (B, n) of the foreground and background images."""
    terms: dict[str, torch.Tensor] = {}
    if "fore" in recipe.term_names:
        terms["fore"] = fore_loss(fore, labels)  # Eq. 18
    if "diff" in recipe.term_names:
        terms["diff"] = diff_loss(out.logits_e, fore, back, labels, variant, cfg.log_eps)  # Eq. 20
    return terms


def _teacher_models(recipe: Recipe, teachers: TeacherSet | None) -> dict[str, nn.Module]:
    """The teacher modules the recipe distils from, checked present."""
    found = {"cls": teachers.cls_model if teachers else None, "loc": teachers.loc_model if teachers else None}
    models = {}
    for name in recipe.teachers:
        if found[name] is None:
            raise RunError(f"role {recipe.role!r} distils from the {name} teacher, but none was loaded")
        models[name] = found[name]
    return models


def _teacher_forward(teacher: nn.Module, images: torch.Tensor) -> CICAMOutput:
    """A teacher's output, in eval mode, without gradients, pool untouched."""
    teacher.eval()
    # no_grad rather than inference_mode: the outputs are then used inside the student's graph.
    with torch.no_grad():
        return teacher(images, update_pool=False)


def _distillation_terms(images: torch.Tensor, out: CICAMOutput, recipe: Recipe, variant: str,
                        teacher_models: dict[str, nn.Module], generator: torch.Generator | None,
                        cfg: LossConfig, epsilon: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """L^ld and L^ad of Eq. 16, each over the samples whose ε selected it (absent if none did)."""
    if epsilon is None:
        eps = draw_epsilon(images.shape[0], recipe, generator)  # (B,) CPU
    else:
        eps = epsilon.detach().cpu().long()  # (B,) drawn with the data
        if eps.shape != (images.shape[0],) or not set(eps.tolist()) <= set(recipe.epsilon_choices):
            raise ValueError(f"epsilon {eps.tolist()} does not fit the batch of {images.shape[0]} "
                             f"or the recipe's choices {recipe.epsilon_choices}")
    terms: dict[str, torch.Tensor] = {}
    selected: dict[str, int] = {}  # term -> samples of this batch that drew it
    for name in recipe.teachers:
        rows = torch.nonzero(eps == TEACHER_EPSILON[name]).squeeze(1)  # (k,) CPU
        selected["ld" if name == "cls" else "ad"] = rows.numel()
        if rows.numel() == 0:
            continue
        whole = rows.numel() == images.shape[0]
        rows = rows.to(images.device)
        t_out = _teacher_forward(teacher_models[name], images if whole else images[rows])
        if name == "cls":  # Eq. 10-12 on the enhanced logits of both
            student = out.logits_e if whole else out.logits_e[rows]  # (k, n)
            terms["ld"] = logit_kd(student, t_out.logits_e, cfg.T_cls, variant)
        else:  # Eq. 13-15 on the enhanced CAMs of both
            student = out.cams_e if whole else out.cams_e[rows]  # (k, n, h, w)
            terms["ad"] = activation_kd(student, t_out.cams_e, cfg.T_loc, variant)
    if recipe.epsilon == "sample":  # on many processes: the means over the global batch's selected samples
        terms = global_subset_means(terms, selected, images.device, zero=lambda: out.logits_e.sum() * 0.0)
    return terms
