"""Where every random draw of a run comes from, and each epoch's batches.

Every draw is a pure function of the run's seed and a position, never of what ran before in the
process: the data order of epoch e (:func:`epoch_order`), the augmentation of sample i in epoch e
(:class:`EpochView`, or the same draws per batch on decoded frames), ε of Eq. 16 and any global-RNG
draw at step s (:func:`seed_step`), and the ε draws a rank skips to stand where one process would
(:func:`skip_draws`, :func:`rank_share`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kdcicam.core.config import RunConfig
from kdcicam.core.errors import ConfigError
from kdcicam.core.runtime import derive_seed
from kdcicam.data.cache import CachedBatches, CachedTrainSet
from kdcicam.training.distributed import DistContext, local_batch_size, shard_order


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The data order of an epoch: a permutation drawn from (seed, epoch) alone, so a resumed run
    visits the same images in the same order as an uninterrupted one."""
    g = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    return torch.randperm(num_samples, generator=g).tolist()


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Batches in an epoch: a last, smaller batch is dropped, unless it is the only one."""
    if num_samples <= batch_size:
        return 1 if num_samples > 0 else 0
    return num_samples // batch_size


def skip_draws(generator: torch.Generator, count: int) -> None:
    """Advance ``generator`` past ``count`` per-sample draws of ε (:func:`kdcicam.training.recipes.draw_epsilon`).

    Rank r of N draws the ε of its slice of the global batch: the ``r * B / N`` draws of the slices
    before it are skipped, so its values are those one process draws for the same samples. Each
    element of a ``randint`` over fewer than 2^32 values takes one 32-bit draw from the CPU generator,
    whatever the range (tests/test_ddp.py checks this against the whole batch's draw).
    """
    if count > 0:
        torch.randint(2, (count,), generator=generator, device=generator.device)


def seed_step(seed: int, epoch: int, step: int, generator: torch.Generator, device: torch.device) -> None:
    """Reseed the run's ε generator and torch's global RNG from (seed, epoch, step) before a step."""
    generator.manual_seed(derive_seed(seed, "epsilon", epoch, step))
    step_seed = derive_seed(seed, "step", epoch, step)
    torch.default_generator.manual_seed(step_seed)  # any global draw inside the step (no dropout today)
    if device.type == "cuda":
        torch.cuda.manual_seed(step_seed)


class EpochView(Dataset):
    """A slice of one epoch's order; item k is ``dataset[order[k]]`` augmented from (seed, epoch, index).

    Each item is drawn under its own seed (torch's CPU RNG forked around it), so the augmentation of
    an image depends on neither the DataLoader workers nor where a resumed epoch starts.
    """

    def __init__(self, dataset: Dataset, order: Sequence[int], *, seed: int, epoch: int) -> None:
        self.dataset = dataset
        self.order = list(order)
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> Any:
        index = self.order[k]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(derive_seed(self.seed, "augment", self.epoch, index))
            return self.dataset[index]


def epoch_batches(train_set: Dataset | CachedTrainSet, order: list[int], batch_size: int, seed: int, epoch: int,
                  cfg: RunConfig, device: torch.device) -> Iterable[dict]:
    """One epoch's batches of ``order``: from the decoded-frame cache (augmented per batch on the
    device), or per image through a DataLoader. Both make the same images (tests/test_data_cache.py)."""
    if isinstance(train_set, CachedTrainSet):
        return CachedBatches(train_set.cache, order, batch_size, device, augment=train_set.augment, seed=seed,
                             epoch=epoch, channels_last=cfg.train.channels_last and device.type == "cuda")
    return DataLoader(EpochView(train_set, order, seed=seed, epoch=epoch), batch_size=batch_size, shuffle=False,
                      num_workers=cfg.train.num_workers, collate_fn=_collate(), drop_last=False,
                      pin_memory=device.type == "cuda")


def _collate():
    from kdcicam.data.dataset import collate_wsol

    return collate_wsol


def rank_share(order: list[int], batch_size: int, dist: DistContext | None) -> tuple[list[int], int, int]:
    """This rank's images of an epoch slice, its batch size, and its per-sample ε draws to skip.

    One process: everything, in batches of B. Rank r of N: its slice of every global batch
    (:func:`kdcicam.training.distributed.shard_order`) in batches of B / N, skipping the draws of slices 0..r-1.
    """
    if dist is None:
        return order, batch_size, 0
    n = dist.world_size
    if len(order) < n:
        raise ConfigError(f"the training split's {len(order)} image(s) of this epoch are fewer than the {n} "
                          "processes: train on fewer processes")
    c = min(len(order), batch_size)  # the global batch (a lone batch smaller than B when the split is)
    return shard_order(order, batch_size, dist.rank, n), local_batch_size(batch_size, n), dist.rank * c // n
