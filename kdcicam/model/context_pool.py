"""The causal context pool Q of CI-CAM (§3.2.3, Eq. 7).

Q in R^{n x h x w} holds one context map per class. Each training step it absorbs V = M_pi, the CAM of
the entangled branch's top-1 class pi:

    Eq. 7:  Q_pi = bn(Q_pi + λ · bn(V)),   V = M_pi,   pi = argmax(S)

``bn`` is the authors' ``BatchNorm2d(n)`` in train mode applied to one [1, n, h, w] sample and never
optimised (weight 1, bias 0): per class, standardise over the h*w cells with the biased variance and
eps = 1e-5. It is written here as the pure function :func:`standardize`.

The two fidelity variants differ in three rules (:data:`POOL_RULES`):

* who contributes: "reference" only samples whose top-1 equals their label (no labels -> no update);
  "paper" every sample, to its own top-1 class (Eq. 7 as printed needs no label);
* which classes pass the outer bn: "reference" all n (the authors' code standardises the whole Q each step;
  a class with no contribution is re-standardised, which leaves an already standardised map unchanged up
  to rounding and an all-zero map at 0); "paper" only the classes pi that received a contribution (Eq. 7 writes
  Q_pi only), the others are untouched;
* update/enhance order in one step (used by :class:`kdcicam.model.cicam.CICAM`): "paper" follows the text
  of §3.2.3 (Q is updated from M, *then* X^e is projected from Q); "reference" enhances with the Q of the
  previous step and updates after the forward pass, as the authors' training loop does (it calls
  ``update_mask`` after ``net(images)``). Enhancing before updating also keeps training and test alike: at
  test time the pool is frozen and never contains the image being classified.

Several samples of one class in a batch are summed (raw CAMs) before the inner bn, in both variants, as the
reference does: the update is one vectorised ``index_add_`` per step, no loop over samples.

One run on many processes (DistributedDataParallel): before each update the per-class contributions of
every process are summed (:func:`reduce_contributions`, the pool's ``reduce`` hook), so every process applies
the update one process would apply to the combined batch, and Q stays the same on every process.

The pool is a registered buffer (saved in the state dict, no gradient, moved by ``.to(device)``) of a fixed
(h, w) chosen at construction. At another input size the entry read for enhancement is resized bilinearly
to the feature map, and a contribution is resized bilinearly to the pool before it is added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default eps, as the reference's mask_bn


@dataclass(frozen=True)
class PoolRule:
    """How one fidelity variant updates and uses the pool (see the module docstring)."""

    correct_only: bool  # only samples whose entangled top-1 equals the label contribute (needs labels)
    restandardize_all: bool  # the outer bn of Eq. 7 runs over every class, not only the updated ones
    update_first: bool  # update Q from this step's M before enhancing X with Q (the paper's text order)


POOL_RULES: dict[str, PoolRule] = {
    "paper": PoolRule(correct_only=False, restandardize_all=False, update_first=True),
    "reference": PoolRule(correct_only=True, restandardize_all=True, update_first=False),
}


def standardize(maps: torch.Tensor, eps: float = BN_EPS) -> torch.Tensor:
    """``bn`` of Eq. 7: standardise each map over its h*w cells (biased variance, like BatchNorm2d in train mode).

    Args:
        maps: (..., h, w) float tensor, e.g. (n, h, w) class maps.
        eps: added to the variance; an all-constant map therefore becomes all zeros.

    Returns:
        (..., h, w) tensor with mean 0 and variance var / (var + eps) per map.
    """
    mean = maps.mean(dim=(-2, -1), keepdim=True)  # (..., 1, 1)
    var = maps.var(dim=(-2, -1), unbiased=False, keepdim=True)  # (..., 1, 1)
    return (maps - mean) / torch.sqrt(var + eps)


def pool_contributions(cams: torch.Tensor, top1: torch.Tensor, labels: torch.Tensor | None,
                       correct_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum V = M_pi over the contributing samples of a batch, per class.

    Args:
        cams: (B, n, h, w) entangled-branch CAMs M (detached by the caller or not: the result is detached).
        top1: (B,) long, pi = argmax(S) of each sample.
        labels: (B,) long ground-truth labels, required when ``correct_only``.
        correct_only: keep only samples with ``top1 == labels`` (reference rule).

    Returns:
        total: (n, h, w) float32, sum of M_{b, pi_b} over kept samples b, grouped by pi_b.
        touched: (n,) bool, classes that received at least one sample.
    """
    b, n, h, w = cams.shape
    keep = torch.ones(b, dtype=torch.bool, device=cams.device)  # (B,)
    if correct_only:
        if labels is None:
            raise ValueError("the correct-only pool rule needs labels")
        keep = top1 == labels  # (B,)
    classes = top1[keep]  # (K,)
    maps = cams.detach()[keep, classes].float()  # (K, h, w): V = M_pi of each kept sample
    total = torch.zeros(n, h, w, dtype=torch.float32, device=cams.device).index_add_(0, classes, maps)  # (n, h, w)
    touched = torch.zeros(n, dtype=torch.bool, device=cams.device)
    touched[classes] = True  # (n,)
    return total, touched


def reduce_contributions(total: torch.Tensor, touched: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum one step's contributions over every process of the run (one all-reduce); a no-op for one process.

    The sum of the processes' summed CAMs is the sum over the combined batch, and a class is touched
    when any process touched it, exactly as :func:`pool_contributions` on the combined batch would give.

    Args:
        total: (n, h, w) float32 summed CAMs of this process's contributing samples.
        touched: (n,) bool, classes this process's samples contributed to.

    Returns:
        (n, h, w) summed over processes, (n,) bool touched on any process (the inputs themselves
        without an initialised process group of more than one process).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return total, touched
    n = total.shape[0]
    packed = torch.cat([total.reshape(-1), touched.to(total.dtype)])  # (n*h*w + n,) one collective
    dist.all_reduce(packed)  # sum over processes
    return packed[:-n].view_as(total), packed[-n:] > 0


def updated_pool(q: torch.Tensor, total: torch.Tensor, touched: torch.Tensor, rate: float,
                 restandardize_all: bool) -> torch.Tensor:
    """Eq. 7 for every class at once: ``bn(Q + λ · bn(total))``.

    Args:
        q: (n, h, w) current pool.
        total: (n, h, w) summed contributions (zero for classes without one: bn(0) = 0).
        touched: (n,) bool, classes that received a contribution.
        rate: λ, the update rate.
        restandardize_all: apply the outer bn to every class (reference) or only to touched ones (paper).

    Returns:
        (n, h, w) new pool (a new tensor; ``q`` is not modified).
    """
    new = standardize(q + rate * standardize(total))  # (n, h, w)  Eq. 7: bn(Q + λ · bn(V))
    if restandardize_all:
        return new
    return torch.where(touched[:, None, None], new, q)  # (n, h, w): Eq. 7 writes Q_pi only


class CausalContextPool(nn.Module):
    """Q in R^{n x h x w}, a buffer updated by Eq. 7 (no gradient) and read for the enhancement of Eq. 8.

    Args:
        num_classes: n.
        size: (h, w) of the pool = the feature-map size at the training input size.
        update_rate: λ of Eq. 7.
        rule: the variant's :class:`PoolRule`.

    Attributes:
        reduce: hook combining one step's (total, touched) across processes before the update
            (:func:`reduce_contributions`: a sum over an initialised process group, else unchanged).
    """

    def __init__(self, num_classes: int, size: tuple[int, int], update_rate: float, rule: PoolRule) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.update_rate = update_rate
        self.rule = rule
        self.reduce: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = reduce_contributions
        self.register_buffer("q", torch.zeros(num_classes, *size))  # (n, h, w), starts empty (all zeros)

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.q.shape[1]), int(self.q.shape[2]))

    @torch.no_grad()
    def update(self, cams: torch.Tensor, top1: torch.Tensor, labels: torch.Tensor | None = None) -> bool:
        """Absorb one batch (Eq. 7). Returns whether Q changed (False: the rule needs labels and got none).

        Args:
            cams: (B, n, h', w') entangled-branch CAMs M (resized bilinearly to the pool if h', w' differ).
            top1: (B,) long, argmax of the entangled logits S.
            labels: (B,) long ground truth, used by the correct-only rule.
        """
        if self.rule.correct_only and labels is None:
            return False
        total, touched = pool_contributions(cams, top1, labels, self.rule.correct_only)  # (n, h', w'), (n,)
        if total.shape[-2:] != self.q.shape[-2:]:
            total = F.interpolate(total[None], size=self.size, mode="bilinear", align_corners=False)[0]
        total, touched = self.reduce(total, touched)  # (n, h, w), (n,): the combined batch's, on every process
        self.q.copy_(updated_pool(self.q, total, touched, self.update_rate, self.rule.restandardize_all))
        return True

    def lookup(self, top1: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Q_pi of each sample, at the feature-map size.

        Args:
            top1: (B,) long class indices pi.
            size: (h, w) of the feature map to enhance.

        Returns:
            (B, h, w) a copy of the pool entries (bilinearly resized when ``size`` differs from the pool's).
        """
        entries = self.q[top1]  # (B, h_Q, w_Q), advanced indexing copies
        if tuple(size) != self.size:
            entries = F.interpolate(entries[:, None], size=tuple(size), mode="bilinear",
                                    align_corners=False)[:, 0]  # (B, h, w)
        return entries
