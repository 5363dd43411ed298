"""Several runs trained in one step: a :class:`Pack` of N networks whose backbones share one architecture.

The backbone is where the work of a step is (VGG16: ≈ 93 GFLOP an image, forward and backward), and at the
paper's batch of 6 a step is bound by kernel launches, not by arithmetic. A pack stacks the N runs'
backbone parameters and buffers (``torch.func.stack_module_state``) and computes all N backbones in one
call (``vmap`` over ``functional_call``: each convolution becomes one grouped kernel), so a launch does N
runs' work. Everything after the backbone stays each run's own: its heads (the shared classifier, the
enhancement conv, the context pool, :meth:`kdcicam.model.cicam.CICAM.head`), its loss terms, its ε draws, its
data. Runs whose heads differ (Base has no pool, +ConPool has one) can share a pack.

One Adam steps every run at once. Adam is element-wise, so on the stacked tensors it takes, slice by slice,
the step each run's own Adam takes (same β's, lr, weight decay and step count); the loss that is
backpropagated is the sum of the runs' losses, whose gradient for run i's parameters is the gradient of run
i's loss alone. A packed step therefore gives each run the losses and parameters of its own unpacked step
(tests/test_packed.py, to rounding: compared in float64). :meth:`Pack.sync` writes the stacked backbones back into the
runs' modules, and :func:`run_optimizer_state` / :func:`load_run_optimizer_states` convert between the
packed Adam's state and each run's own, so each run's checkpoint is the one an unpacked run would write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.func import functional_call, stack_module_state, vmap

from kdcicam.core.config import LossConfig, RunConfig
from kdcicam.core.errors import ConfigError
from kdcicam.model.cicam import CICAM
from kdcicam.model.factory import param_groups, param_groups_of
from kdcicam.training.losses import student_loss
from kdcicam.training.recipes import (
    LossResult,
    Recipe,
    TeacherSet,
    _distillation_terms,
    _teacher_models,
    heatmap_terms,
    pass_terms,
    weighted_result,
)
from kdcicam.training.schedule import adam_over

BACKBONE = "backbone."


class Pack:
    """N networks trained together: stacked backbones (leaves of the packed optimizer), each run's own head.

    Args:
        models: the runs' networks (their heads are trained in place; their backbones are the starting
            point, copied into the stack: call :meth:`sync` before reading them again).

    Raises:
        ConfigError: the backbones differ in architecture (parameter names or shapes).
    """

    def __init__(self, models: Sequence[CICAM]) -> None:
        if not models:
            raise ConfigError("a pack needs at least one run")
        shapes = [{k: tuple(v.shape) for k, v in m.backbone.state_dict().items()} for m in models]
        if any(s != shapes[0] for s in shapes[1:]):
            raise ConfigError("runs of one pack need backbones of one architecture (names and shapes differ)")
        self.models = list(models)
        self.template = models[0].backbone  # its own tensors are never used by the stacked call
        params, buffers = stack_module_state([m.backbone for m in models])  # {name: (N, ...)}
        self.params: dict[str, torch.Tensor] = params  # leaves with requires_grad, stepped by the optimizer
        self.buffers: dict[str, torch.Tensor] = buffers  # e.g. BatchNorm running statistics, updated in place

    def __len__(self) -> int:
        return len(self.models)

    def train(self) -> None:
        for m in self.models:
            m.train()
        self.template.train()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """X of every run: images (N, B, 3, H, W) -> (N, B, C, h, w), run i through its own backbone."""
        def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, (params, buffers), (x,))

        return vmap(one)(self.params, self.buffers, images)

    def named_parameters(self, i: int) -> list[tuple[str, torch.Tensor]]:
        """Run i's trainable tensors in the packed optimizer, named as in its network, in its network's order
        (a backbone tensor is the whole stack: run i's share is its slice i)."""
        own = [(n, p) for n, p in self.models[i].named_parameters() if p.requires_grad]
        return [(n, self.params[n[len(BACKBONE):]] if n.startswith(BACKBONE) else p) for n, p in own]

    def packed_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """Every tensor the packed optimizer steps, once: the stacked backbones, then each run's head."""
        out = [(BACKBONE + n, p) for n, p in self.params.items()]
        for m in self.models:
            out += [(n, p) for n, p in m.named_parameters() if p.requires_grad and not n.startswith(BACKBONE)]
        return out

    @torch.no_grad()
    def sync(self) -> None:
        """Copy each run's slice of the stacked backbone parameters and buffers into its own network."""
        for i, m in enumerate(self.models):
            for name, t in m.backbone.named_parameters():
                t.copy_(self.params[name][i])
            for name, t in m.backbone.named_buffers():
                t.copy_(self.buffers[name][i])


def build_pack_optimizer(pack: Pack, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """One Adam over the pack, with the parameter groups and hyper-parameters of each run's own
    (:func:`kdcicam.training.schedule.build_optimizer`; every run of a pack shares ``cfg.train``'s)."""
    return adam_over(param_groups_of(pack.packed_parameters(), cfg.train.lr, cfg.train.backbone_lr_mult), cfg,
                     device)


def _run_layout(pack: Pack, i: int, cfg: RunConfig) -> list[tuple[dict[str, Any], list[tuple[torch.Tensor, bool]]]]:
    """Run i's optimizer groups as its own Adam orders them: (group options, [(packed tensor, stacked?)])."""
    packed = dict(pack.named_parameters(i))
    name_of = {id(p): n for n, p in pack.models[i].named_parameters()}
    layout = []
    for group in param_groups(pack.models[i], cfg.train.lr, cfg.train.backbone_lr_mult):
        names = [name_of[id(p)] for p in group["params"]]
        layout.append((group, [(packed[n], n.startswith(BACKBONE)) for n in names]))
    return layout


def run_optimizer_state(pack: Pack, optimizer: torch.optim.Optimizer, i: int, cfg: RunConfig) -> dict[str, Any]:
    """Run i's share of the packed Adam, as the ``state_dict()`` of the Adam an unpacked run would hold."""
    options = {g["name"]: {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups}
    state: dict[int, dict[str, Any]] = {}
    groups = []
    index = 0
    for group, tensors in _run_layout(pack, i, cfg):
        ids = []
        for tensor, stacked in tensors:
            held = optimizer.state.get(tensor)
            if held:
                state[index] = {k: (v[i].clone() if stacked and torch.is_tensor(v) and v.dim() > 0 else
                                    (v.clone() if torch.is_tensor(v) else v)) for k, v in held.items()}
            ids.append(index)
            index += 1
        groups.append({**options[group["name"]], "params": ids})
    return {"state": state, "param_groups": groups}


def load_run_optimizer_states(pack: Pack, optimizer: torch.optim.Optimizer, states: Sequence[dict[str, Any]],
                              cfg: RunConfig) -> None:
    """Fill the packed Adam from each run's own saved state (the runs of a pack stand at one position)."""
    layouts = [_run_layout(pack, i, cfg) for i in range(len(pack))]
    flat = [[t for _, tensors in layout for t in tensors] for layout in layouts]
    with torch.no_grad():
        for k, (tensor, stacked) in enumerate(flat[0]):
            held = [s["state"].get(k) for s in states]
            if not stacked:
                for i, s in enumerate(held):
                    if s:
                        optimizer.state[flat[i][k][0]] = {n: v.clone() if torch.is_tensor(v) else v
                                                          for n, v in s.items()}
                continue
            if not all(held):
                continue
            optimizer.state[tensor] = {n: (torch.stack([s[n] for s in held]).to(tensor.device)
                                          if torch.is_tensor(v) and v.dim() > 0 else v.clone() if torch.is_tensor(v)
                                          else v) for n, v in held[0].items()}
    saved = {g["name"]: g for g in states[0]["param_groups"]}
    for g in optimizer.param_groups:  # lr, initial_lr, betas ...: every run's are the same
        g.update({k: v for k, v in saved[g["name"]].items() if k != "params"})


def packed_loss(pack: Pack, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe, variant: str, *,
                teachers: Sequence[TeacherSet | None], generators: Sequence[torch.Generator],
                loss_cfg: LossConfig, epsilons: Sequence[torch.Tensor | None]) -> list[LossResult]:
    """:func:`kdcicam.training.recipes.compute_loss` of every run of the pack, the backbones batched.

    Args:
        images: (N, B, 3, H, W) each run's batch; labels: (N, B).
        teachers, generators, epsilons: each run's teachers, ε generator and data-drawn ε (or None).

    Returns:
        Each run's :class:`LossResult`, as its own ``compute_loss`` would give it.
    """
    x = pack.features(images)  # (N, B, C, h, w): the one pass per run that may update its pool
    outs = [m.head(x[i], labels=labels[i]) for i, m in enumerate(pack.models)]
    terms: list[dict[str, torch.Tensor]] = [{"stu": student_loss(o.logits, o.logits_e, labels[i], recipe.rho)}
                                            for i, o in enumerate(outs)]
    if recipe.needs_heatmap:
        masks = []
        for i, out in enumerate(outs):
            area, fg = heatmap_terms(images[i], out, recipe, variant)
            terms[i].update(area)
            masks.append(fg)
        if masks[0] is not None:
            fg = torch.stack(masks)  # (N, B, 1, H, W)
            fore = _pass_logits(pack, images * fg) if recipe.fore_pass else [None] * len(pack)
            back = _pass_logits(pack, images * (1 - fg)) if recipe.back_pass else [None] * len(pack)
            for i, out in enumerate(outs):
                terms[i].update(pass_terms(out, fore[i], back[i], labels[i], recipe, variant, loss_cfg))
    if recipe.teachers:
        for i, out in enumerate(outs):
            terms[i].update(_distillation_terms(images[i], out, recipe, variant, _teacher_models(recipe, teachers[i]),
                                                generators[i], loss_cfg, epsilons[i]))
    return [weighted_result(t, recipe, out) for t, out in zip(terms, outs)]


def _pass_logits(pack: Pack, images: torch.Tensor) -> list[torch.Tensor]:
    """Entangled logits (B, n) of each run on derived images (N, B, 3, H, W); no pool updates."""
    x = pack.features(images)
    return [m.head(x[i], update_pool=False).logits for i, m in enumerate(pack.models)]
