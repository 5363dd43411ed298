"""One run on many processes: the process group, each rank's share of a batch, and the collectives
the trainer needs (DistributedDataParallel, synchronised BatchNorm, rank 0's decisions).

``torchrun --nproc_per_node N -m kdcicam train ...`` trains one run on N processes that together
compute what one process with the same global batch computes, step by step:

- **data**: step s of epoch e trains on the global batch ``order[s*B:(s+1)*B]`` of
  :func:`kdcicam.training.streams.epoch_order` (a pure function of (seed, e)); rank r takes the r-th of N equal,
  contiguous slices of it (:func:`shard_order`), so B must be a multiple of N (:func:`local_batch_size`);
- **gradients**: every loss term is a mean over the batch, and DDP averages the N ranks' gradients,
  which is the gradient of the global batch's mean; a distillation term over the samples that drew its ε
  is first weighted by the rank's share of them (:mod:`kdcicam.training.subset_means`);
- **BatchNorm** (non-local blocks; InceptionV3's convolutions): synchronised, so its statistics are
  those of the global batch (torch's ``SyncBatchNorm`` on GPUs, :class:`SyncBatchNorm2d` elsewhere);
- **the causal context pool** (Eq. 7): every rank all-reduces its per-class contributions before the
  update (:func:`kdcicam.model.context_pool.reduce_contributions`), so Q is the same on every rank
  and equals Q of one process on the global batch.

Only rank 0 touches the run store and writes files; it tells the other ranks what they need through
:func:`broadcast_object`, on a gloo *control* group whose timeout is long enough for rank 0 to wait
for a run another job holds, or to evaluate it, while the others wait.

Without an initialised process group every function here is the single-process identity.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kdcicam.core.errors import ConfigError

CONTROL_TIMEOUT = datetime.timedelta(days=7)  # rank 0 may wait this long for another job's run, or evaluate
TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # set by torchrun for every process it starts


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a multi-process run."""

    rank: int  # 0 .. world_size - 1; rank 0 owns the store and every file
    world_size: int  # N processes training one run
    local_rank: int  # rank on this machine (its GPU index)
    control: Any = None  # gloo process group for rank 0's decisions (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env(environ: Mapping[str, str]) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) that torchrun set, or None outside torchrun / for one process.

    Raises:
        ConfigError: the variables are set but not whole numbers in range.
    """
    if "WORLD_SIZE" not in environ:
        return None
    try:
        rank, world, local = (int(environ.get(k, "0")) for k in TORCHRUN_KEYS)
    except ValueError:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK = {[environ.get(k) for k in TORCHRUN_KEYS]}: "
                          "expected whole numbers (they are set by torchrun)") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"RANK = {rank}, WORLD_SIZE = {world}, LOCAL_RANK = {local}: out of range")
    return None if world == 1 else (rank, world, local)


def init_distributed(environ: Mapping[str, str], device: torch.device) -> tuple[DistContext, torch.device] | None:
    """Join the process group torchrun describes in ``environ`` (None when there is none).

    CUDA: one GPU per process (``cuda:LOCAL_RANK``), NCCL. CPU: gloo.

    Args:
        environ: the process environment (``os.environ``), read once here at the edge.
        device: the device the command picked (``--device``); its type chooses the backend.

    Returns:
        (context, this rank's device), or None for a single process.
    """
    world = world_from_env(environ)
    if world is None:
        return None
    rank, size, local = world
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} GPU(s); "
                              "start at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=size)
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)  # CPU messages, long waits allowed
    return DistContext(rank=rank, world_size=size, local_rank=local, control=control), device


def shutdown(ctx: DistContext | None) -> None:
    """Leave the process group (after a last barrier, so no rank tears it down under another)."""
    if ctx is None or not dist.is_initialized():
        return
    barrier(ctx)
    dist.destroy_process_group()


def active() -> bool:
    """Whether more than one process takes part in this run."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# ------------------------------------------------------------------------------ rank 0 -> all

def broadcast_object(obj: Any, ctx: DistContext | None) -> Any:
    """Rank 0's ``obj`` on every rank (picklable plain data); ``obj`` itself without a group."""
    if ctx is None or not active():
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0, group=ctx.control)
    return box[0]


def gather_objects(obj: Any, ctx: DistContext | None) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank; ``[obj]`` without a group."""
    if ctx is None or not active():
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj, group=ctx.control)
    return out


def any_rank(flag: bool, ctx: DistContext | None) -> bool:
    """True on every rank when ``flag`` is True on any (a CPU collective: no GPU synchronisation)."""
    if ctx is None or not active():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=ctx.control)
    return bool(value.item())


def barrier(ctx: DistContext | None) -> None:
    """Wait for every rank, on the control group (long timeout: rank 0 may be validating or evaluating)."""
    if ctx is not None and active():
        dist.barrier(group=ctx.control)


# ------------------------------------------------------------------------------ data

def local_batch_size(batch_size: int, world_size: int) -> int:
    """Each rank's batch: B / N.

    Raises:
        ConfigError: B is not a multiple of N (the ranks' batches would not add up to B).
    """
    if batch_size % world_size:
        raise ConfigError(f"train.batch_size = {batch_size}: must be a multiple of the {world_size} processes "
                          f"(each trains on batch_size / {world_size} images per step)")
    return batch_size // world_size


def shard_order(order: Sequence[int], batch_size: int, rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s images of an epoch slice: the rank-th contiguous part of every global batch.

    ``order`` is cut into global batches of ``batch_size`` (the last may be shorter: the epoch's lone
    batch when the split is smaller than one batch); part r of a batch of c images is
    ``batch[r*c//N : (r+1)*c//N]``, so a full batch gives every rank B/N images, in order.

    Example: order = [7, 3, 5, 1, 0, 2, 6, 4], B = 4, N = 2 -> rank 0: [7, 3, 0, 2]; rank 1: [5, 1, 6, 4].

    Args:
        order: the epoch's order from the first untrained step to the last used image.
        batch_size: B, the global batch.
        rank: r.
        world_size: N.

    Returns:
        The rank's images, one batch of B / N after another.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    out: list[int] = []
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        c = len(chunk)
        out.extend(chunk[rank * c // world_size:(rank + 1) * c // world_size])
    return out


# ------------------------------------------------------------------------------ model

class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks (each rank's input feeds every rank's sum)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over every rank, differentiably (the tensor itself without a process group)."""
    return _AllReduceSum.apply(tensor) if active() else tensor


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of every rank's batch together, on any device.

    torch's ``SyncBatchNorm`` runs on GPUs only; this one runs over gloo too (CPU runs and tests). Two
    differentiable all-reduces per call: the per-channel sums and count, then the sums of squared
    deviations from the global mean (two passes, as exact as one process's batch statistics). Their
    backward all-reduces the gradients, so each rank's inputs get the gradient of the global batch's
    loss. The state dict is BatchNorm2d's, so checkpoints load into the single-process network.
    Without an active process group, or in eval mode, it is BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C, H, W). Returns: (B, C, H, W) normalised with the global batch's statistics."""
        if not (self.training and active()):
            return super().forward(x)
        c = x.shape[1]
        local = torch.cat([x.sum(dim=(0, 2, 3)), x.new_tensor([x.numel() / c])])  # (C + 1,)
        total = all_reduce_sum(local)  # (C + 1,): sums over every rank, then the count
        count = total[c].detach()
        mean = total[:c] / count  # (C,)
        centred = x - mean[None, :, None, None]  # (B, C, H, W)
        var = all_reduce_sum((centred * centred).sum(dim=(0, 2, 3))) / count  # (C,) biased, as BatchNorm normalises
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]  # (B, C, H, W)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * count / max(float(count) - 1.0, 1.0)  # as BatchNorm's running_var
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of ``module`` made synchronised across ranks (in place; returns ``module``).

    CUDA: torch's ``SyncBatchNorm``. Other devices: :class:`SyncBatchNorm2d`. Parameters and buffers
    are the same tensors, so an optimizer built before or after sees the same ones.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            if child.affine:
                sync.weight, sync.bias = child.weight, child.bias
            if child.track_running_stats:
                sync.running_mean, sync.running_var = child.running_mean, child.running_var
                sync.num_batches_tracked = child.num_batches_tracked
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return module


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged over ranks).

    Buffers are not broadcast at each forward: the pool is kept equal by its all-reduce and BatchNorm
    statistics by synchronisation, so every rank computes the same buffers itself.
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    no_sync = ({"forward_sync_buffers": False}  # torch >= 2.10 names it so (and deprecates broadcast_buffers)
               if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})
    return DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None, **no_sync)


def launch_command(nproc: int, module_args: Sequence[str], python: str) -> list[str]:
    """The command that runs ``python -m kdcicam <module_args>`` on ``nproc`` processes of this machine.

    One process: plain ``python -m kdcicam``. More: ``python -m torch.distributed.run`` (torchrun)
    with a free rendezvous port (``--standalone``), so several such runs may share a machine.
    """
    if nproc < 1:
        raise ConfigError(f"--gpus {nproc}: must be >= 1")
    if nproc == 1:
        return [python, "-m", "kdcicam", *module_args]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "kdcicam", *module_args]


__all__ = ["DistContext", "SyncBatchNorm2d", "active", "all_reduce_sum", "any_rank", "barrier", "broadcast_object",
           "convert_sync_batchnorm", "gather_objects", "init_distributed", "launch_command", "local_batch_size",
           "shard_order", "shutdown", "world_from_env", "wrap_ddp"]
