"""Distillation terms averaged over the selected samples of the whole global batch, on many processes.

With per-sample ε (Eq. 16, variant ``reference``) L^ld is the mean over the k samples of a batch that drew
ε = 1, L^ad over those that drew ε = 2. One process on the global batch averages over all K of them. On N
processes rank r holds k_r of them and DistributedDataParallel averages the ranks' gradients, so each rank's
mean over its own k_r samples would give (1/N) Σ_r mean_r, not the global mean Σ_r k_r·mean_r / K. Scaling
rank r's term by its share of the global mean,

    w_r = k_r · N / K,    (1/N) Σ_r w_r · mean_r = Σ_r k_r · mean_r / K,

makes DDP's averaged gradient, and the mean of the logged terms over the ranks, those of the global mean.
A rank that drew none of a term's samples while another did contributes a zero (with a graph, so every
rank backpropagates the same terms). Without a process group of more than one process nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from kdcicam.training.distributed import active


def rank_weight(local: int, total: int, world_size: int) -> float:
    """w_r = k_r · N / K: the factor that turns rank r's mean over its k_r samples into its share of the
    mean over all K samples of the global batch, once DDP averages over the N ranks (0 when K = 0)."""
    return local * world_size / total if total > 0 else 0.0


def global_counts(local: dict[str, int], device: torch.device) -> dict[str, int]:
    """Each term's selected samples summed over every rank (one all-reduce); ``local`` without a group."""
    if not active():
        return dict(local)
    names = sorted(local)
    counts = torch.tensor([local[n] for n in names], dtype=torch.int64, device=device)  # (terms,)
    dist.all_reduce(counts)
    return dict(zip(names, (int(c) for c in counts.tolist())))


def global_subset_means(terms: dict[str, torch.Tensor], local: dict[str, int], device: torch.device,
                        zero: Callable[[], torch.Tensor]) -> dict[str, torch.Tensor]:
    """``terms`` (each a mean over this rank's ``local[name]`` selected samples) rescaled by :func:`rank_weight`.

    Args:
        terms: name -> scalar mean over this rank's selected samples (absent where it selected none).
        local: name -> this rank's selected samples, for every term the recipe can draw (0 included).
        device: where the counts are all-reduced (the batch's device: NCCL needs a GPU tensor).
        zero: a scalar 0 attached to the graph, for a term some other rank drew and this one did not.

    Returns:
        The terms DDP must average; ``terms`` itself without a process group of more than one process.
    """
    if not active():
        return terms
    world = dist.get_world_size()
    total = global_counts(local, device)
    out = {}
    for name in sorted(local):
        if total[name] == 0:
            continue  # no sample of the global batch drew it: absent, as on one process
        if local[name] == 0:
            out[name] = zero()
        else:
            out[name] = terms[name] * rank_weight(local[name], total[name], world)
    return out


__all__ = ["global_counts", "global_subset_means", "rank_weight"]
