"""The shared trainer: one loop for every role (student, both teachers, distilled student).

The role only changes the loss recipe (:mod:`kdcicam.training.recipes`); the loop, the optimizer, the
checkpoints and the per-epoch validation are the same for all. Shaped like torchvision's
classification reference: :func:`train_one_epoch` receives everything it uses, :func:`fit` owns the
epoch loop, resume and checkpoint selection.

Every random draw of a run is a pure function of its seed and a position, never of what ran
before in the process, so a run resumed from any checkpoint continues exactly as an uninterrupted
one would (bit for bit in deterministic CPU mode):

- the data order of epoch e: :func:`epoch_order` (seed, e);
- the augmentation of sample i in epoch e: drawn from (seed, e, i) (:class:`EpochView`, or the same
  draws applied per batch to decoded frames: :class:`kdcicam.data.cache.CachedBatches`, the same images);
- ε of Eq. 16 and any global-RNG draw at step s of epoch e: from (seed, e, s) (:func:`seed_step`).

Crash safety (:func:`fit`): each epoch is trained, validated, stored through ``on_epoch``, then
committed as ``last.pt`` (the previous one kept as ``prev.pt``); the best checkpoints are written
after the commit and repaired from it on resume. ``checkpoint_every`` N also commits the position
inside an epoch every N steps, and Ctrl-C stops at the next step boundary with such a checkpoint.

One run on many processes (``fit(..., dist=...)``, :mod:`kdcicam.training.distributed`): rank r trains on the
r-th slice of every global batch of the same epoch order, in DistributedDataParallel with synchronised
BatchNorm, and the context pool all-reduces its contributions, so the N ranks take the steps one process
with the global batch would take. Only rank 0 validates, calls back and writes checkpoints; a resumed
run's state is read by rank 0 and sent to the others.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kdcicam.core.config import RunConfig, to_dict
from kdcicam.core.errors import ConfigError, RunError
from kdcicam.core.runtime import crash_point, derive_seed
from kdcicam.core.signals import terminate_as_interrupt
from kdcicam.data.cache import CachedBatches, CachedTrainSet
from kdcicam.model.factory import param_groups
from kdcicam.training.checkpoint import (
    LAST,
    load_checkpoint,
    load_resume_state,
    remove_stale_temps,
    rotate_last,
    save_checkpoint,
)
from kdcicam.training.distributed import (
    DistContext,
    any_rank,
    barrier,
    broadcast_object,
    convert_sync_batchnorm,
    gather_objects,
    local_batch_size,
    shard_order,
    wrap_ddp,
)
from kdcicam.training.recipes import Recipe, TeacherSet, compute_loss

# Selection criteria: which validation metric picks each kept checkpoint (Table 5 selects the
# loc teacher by GT-known vs Top-1 Loc; "last" is the final epoch).
CRITERIA: dict[str, str] = {
    "top1_loc": "top1_loc",
    "gt_known_loc": "gt_known_loc",
    "top1_cls": "top1_cls",
}


class DivergedError(RunError):
    """A loss term became NaN or infinite: the run stops as failed, naming the step and term."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped training at a step boundary, after saving that position as ``last.pt``."""

    def __init__(self, message: str, how: str = "Ctrl-C") -> None:
        super().__init__(message)
        self.how = how  # "Ctrl-C" or "SIGTERM"


@dataclass
class EpochLog:
    epoch: int
    terms: dict[str, float]  # mean of each loss term over the epoch
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


@dataclass
class EpochProgress:
    """Running totals of one epoch; saved in a mid-epoch checkpoint so a resumed epoch's means are exact."""

    sums: dict[str, float] = field(default_factory=dict)  # per loss term, summed over steps in order
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    def means(self) -> dict[str, float]:
        return {name: total / max(self.steps, 1) for name, total in self.sums.items()}


@dataclass(frozen=True)
class Position:
    """Where a training checkpoint stands."""

    epoch: int  # 0-based epoch the checkpoint belongs to
    step: int  # batches of that epoch trained
    epoch_done: bool  # the epoch is trained, validated and stored: the next one starts from here

    def describe(self, epochs: int) -> str:
        if self.epoch_done:
            return f"after epoch {self.epoch + 1}/{epochs}"
        return f"at epoch {self.epoch + 1}/{epochs}, step {self.step}"


@dataclass
class FitResult:
    epochs: list[EpochLog] = field(default_factory=list)  # epochs trained by this call
    val: list[dict[str, float]] = field(default_factory=list)  # per-epoch validation metrics, all epochs
    best: dict[str, dict[str, float]] = field(default_factory=dict)  # criterion -> {epoch, value}
    resumed_from: Position | None = None  # the checkpoint the run resumed from, None for a fresh run
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def lr_factor(epoch: int, cfg: RunConfig) -> float:
    """Multiplier of the base learning rate at (0-based) ``epoch``.

    ``constant``: 1. ``cosine``: half-cosine to 0 over the run. ``reference`` (the authors' code):
    poly decay (1 - e/E)^0.9, times ``decay_rate`` every ``halve_every`` epochs, times 0.1 from
    ``late_drop_epoch`` on (when set).
    """
    t = cfg.train
    if t.lr_schedule == "constant":
        return 1.0
    if t.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / t.epochs))
    factor = (1.0 - epoch / t.epochs) ** 0.9
    if t.halve_every > 0:
        factor *= t.decay_rate ** (epoch // t.halve_every)
    if 0 < t.late_drop_epoch <= epoch:
        factor *= 0.1
    return factor


def build_optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam(β1, β2) over the model's parameter groups (backbone at ``backbone_lr_mult`` x lr)."""
    groups = param_groups(model, cfg.train.lr, cfg.train.backbone_lr_mult)
    for g in groups:
        g["initial_lr"] = g["lr"]
    kwargs: dict[str, Any] = dict(betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay)
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.Adam(groups, **kwargs)


def set_epoch_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


# ------------------------------------------------------------------------- random streams

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


# ------------------------------------------------------------------------------ one epoch

def train_one_epoch(
    model: torch.nn.Module,
    recipe: Recipe,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[dict],
    device: torch.device,
    epoch: int,
    *,
    cfg: RunConfig,
    teachers: TeacherSet | None,
    generator: torch.Generator,
    read_every: int = 20,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    start_step: int = 0,
    total_steps: int | None = None,
    progress: EpochProgress | None = None,
    after_step: Callable[[int, Callable[[], EpochProgress]], None] | None = None,
    dist: DistContext | None = None,
    draw_offset: int = 0,
) -> EpochLog:
    """Train for one epoch (or its remainder); returns the mean of every loss term.

    Losses are read back to the host every ``read_every`` steps (and at the end), so the GPU is
    not synchronised at every step; a non-finite term raises :class:`DivergedError` naming it.

    Args:
        loader: the epoch's batches from ``start_step`` on.
        start_step: batches of this epoch trained before (a resumed epoch).
        total_steps: batches in the whole epoch (default ``start_step + len(loader)``).
        progress: the totals of the steps before ``start_step``; updated in place.
        after_step: called after every step with (steps done, ``flush``); ``flush()`` reads the
            pending terms back, checks them, and returns the epoch's totals so far (for a checkpoint).
        dist: this process's place in a multi-process run (None: one process). ``flush`` then combines
            every rank's terms (weighted by batch size: the global batch's means), on every rank.
        draw_offset: per-sample ε draws of the ranks before this one in each global batch (skipped).
    """
    model.train()
    progress = progress if progress is not None else EpochProgress()
    total = total_steps if total_steps is not None else start_step + len(loader)
    pending: list[tuple[int, dict[str, torch.Tensor], int]] = []  # (step, terms, images)
    start, seconds_before = time.perf_counter(), progress.seconds
    skip = draw_offset if recipe.epsilon == "sample" else 0  # per-step ε: every rank draws the same value

    def flush() -> EpochProgress:
        local = [(step, {name: float(value) for name, value in terms.items()}, n) for step, terms, n in pending]
        for step, terms, n in _combine_ranks(gather_objects(local, dist)):
            for name, v in terms.items():
                if not math.isfinite(v):
                    raise DivergedError(
                        f"loss term '{name}' is {v} at epoch {epoch + 1}, step {step + 1}: the run diverged "
                        f"(try a lower train.lr)")
                progress.sums[name] = progress.sums.get(name, 0.0) + v
            progress.images += n
        pending.clear()
        progress.seconds = seconds_before + time.perf_counter() - start
        return progress

    for i, batch in enumerate(loader):
        step = start_step + i
        seed_step(cfg.train.seed, epoch, step, generator, device)
        skip_draws(generator, skip)
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        if cfg.train.channels_last and device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg.train.amp):
            result = compute_loss(model, images, labels, recipe, cfg.variant, teachers=teachers,
                                  generator=generator, loss_cfg=cfg.loss, epsilon=batch.get("epsilon"))
        optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        optimizer.step()
        pending.append((step, {k: v.detach() for k, v in result.terms.items()}, int(images.shape[0])))
        progress.steps += 1
        crash_point("after-step")
        if (step + 1) % read_every == 0 or step + 1 == total:
            flush()
            if on_step is not None:
                on_step(step + 1, total, progress.means())
        if after_step is not None:
            after_step(step + 1, flush)
    flush()
    return EpochLog(epoch=epoch, terms=progress.means(), images=progress.images, seconds=progress.seconds)


def _combine_ranks(per_rank: list[list[tuple[int, dict[str, float], int]]]) -> list[tuple[int, dict[str, float], int]]:
    """Each step's loss terms over every rank: the mean weighted by each rank's batch size (the global
    batch's mean, for a term that is a batch mean), and the images of all ranks. One rank: unchanged."""
    if len(per_rank) == 1:
        return per_rank[0]
    out = []
    for entries in zip(*per_rank):
        step = entries[0][0]
        names = sorted({name for _, terms, _ in entries for name in terms})  # a KD term may be drawn on some ranks only
        combined = {}
        for name in names:
            held = [(terms[name], n) for _, terms, n in entries if name in terms]
            combined[name] = sum(v * n for v, n in held) / max(sum(n for _, n in held), 1)
        out.append((step, combined, sum(n for _, _, n in entries)))
    return out


class _InterruptGuard:
    """While training steps run, Ctrl-C (SIGINT) or ``kill`` (SIGTERM) is noted and acted on at the next
    step boundary: the position is saved and the run stops, to be resumed by the same command.

    Each handler is installed only over the default one (Python's for SIGINT, the system's or the CLI's
    :func:`kdcicam.core.signals.terminate_as_interrupt` for SIGTERM), in the main thread: a process that
    ignores SIGINT (a background job) or has its own SIGTERM handler
    (a SLURM job under submitit) keeps it. A second Ctrl-C stops at once.
    """

    _DEFAULTS = {signal.SIGINT: (signal.default_int_handler,),
                 signal.SIGTERM: (signal.SIG_DFL, terminate_as_interrupt)}  # kdcicam.core.signals: the CLI's

    def __init__(self) -> None:
        self.pending = False
        self.how = "Ctrl-C"  # what stopped the run: "Ctrl-C" (SIGINT) or "SIGTERM"
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for sig, defaults in self._DEFAULTS.items():
                if any(signal.getsignal(sig) is d for d in defaults):
                    self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.pending:
            if signum == signal.SIGINT:  # Ctrl-C twice: stop now (a SIGTERM after the first signal, e.g.
                raise KeyboardInterrupt  # forwarded by ablate to its workers, waits for the step boundary)
            return
        self.pending = True
        self.how = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


# ------------------------------------------------------------------------------ checkpoints

def _position(state: dict[str, Any]) -> Position:
    """A checkpoint's position (files without ``step`` are end-of-epoch checkpoints)."""
    return Position(int(state["epoch"]), int(state.get("step", 0)), bool(state.get("epoch_done", True)))


def update_best(best: dict[str, dict[str, float]], epoch: int, metrics: dict[str, float]) -> list[str]:
    """Record ``epoch`` as the best of every criterion its validation metrics improve (ties keep the earlier).

    Returns:
        The criteria ``epoch`` is now the best of (their ``best_<criterion>.pt`` must be written).
    """
    improved = []
    for criterion, metric in CRITERIA.items():
        value = metrics.get(metric)
        if value is None or not math.isfinite(float(value)):
            continue
        if criterion not in best or float(value) > best[criterion]["value"]:
            best[criterion] = {"epoch": epoch, "value": float(value)}
            improved.append(criterion)
    return improved


def _best_state(model_state: dict[str, Any], epoch: int, cfg: RunConfig) -> dict[str, Any]:
    return {"model": model_state, "epoch": epoch, "config": to_dict(cfg)}


def _commit(state: dict[str, Any], run_dir: Path) -> None:
    """Make ``state`` the run's ``last.pt``, keeping the one before as ``prev.pt``."""
    rotate_last(run_dir)
    crash_point("after-rotate")
    save_checkpoint(state, run_dir, LAST)


def _reconcile_best(run_dir: Path, best: dict[str, dict[str, float]], state: dict[str, Any],
                    cfg: RunConfig) -> list[str]:
    """Make every ``best_<criterion>.pt`` hold the epoch ``best`` (from the resumed checkpoint) names.

    Best files are written after the commit of their epoch, so a crash may leave the newest one
    unwritten: it is rewritten from the checkpoint, which holds that epoch's weights. A file whose
    epoch's weights are gone (the run fell back to ``prev.pt``) drops its criterion, with a warning:
    the next epochs compete for it afresh.
    """
    warnings = []
    pos = _position(state)
    for criterion, record in list(best.items()):
        path = run_dir / f"best_{criterion}.pt"
        try:
            held = int(load_checkpoint(path)["epoch"]) if path.exists() else None
        except RunError:
            held = None
        if held == record["epoch"]:
            continue
        if pos.epoch_done and record["epoch"] == pos.epoch:
            save_checkpoint(_best_state(state["model"], pos.epoch, cfg), run_dir, path.name)
            continue
        del best[criterion]
        warnings.append(f"{path} holds epoch {'none' if held is None else held + 1}, not the best epoch "
                        f"{record['epoch'] + 1} by {criterion}, whose weights are gone: later epochs compete afresh")
    return warnings


def _epoch_batches(train_set: Dataset | CachedTrainSet, order: list[int], batch_size: int, seed: int, epoch: int,
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


# ------------------------------------------------------------------------------ the run

def _rank_share(order: list[int], batch_size: int, dist: DistContext | None) -> tuple[list[int], int, int]:
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


def fit(
    model: torch.nn.Module,
    recipe: Recipe,
    cfg: RunConfig,
    train_set: Dataset | CachedTrainSet,
    run_dir: Path,
    device: torch.device,
    *,
    validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    teachers: TeacherSet | None = None,
    on_epoch: Callable[[EpochLog, dict[str, float]], None] | None = None,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    on_resume: Callable[[Position | None, list[str]], None] | None = None,
    checkpoint_every: int = 0,
    dist: DistContext | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.train.epochs`` epochs, resuming from ``run_dir`` if it holds a checkpoint.

    Every epoch: train, validate (``validate(model)`` on the held-out validation split), report
    through ``on_epoch`` (a crash after it trains the epoch again and reports the same), commit
    ``last.pt`` (model, optimizer, position, validation history, best epochs) atomically, then write
    ``best_<criterion>.pt`` for each criterion of :data:`CRITERIA` the epoch improved.

    Args:
        on_resume: called once before training with the checkpoint resumed from (None: a fresh
            run) and the warnings about checkpoints that were skipped or repaired.
        checkpoint_every: also commit the position every this many steps inside an epoch (0 = at
            epoch ends only); a resumed epoch continues at the next batch.
        dist: this process's place in a multi-process run (None: one process). Every rank calls
            ``fit``; only rank 0 reads the checkpoint (and sends it), validates, calls ``on_*`` and writes
            files. ``model`` stays unwrapped: its BatchNorms are made synchronised in place and a
            DistributedDataParallel wrapper of it trains.

    Raises:
        DivergedError: a loss term is not finite.
        TrainingInterrupted: Ctrl-C; the position at the last finished step is saved first (under
            ``dist``: at most one step later, on every rank, once any rank got it).
    """
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    main = dist is None or dist.is_main
    run_dir = Path(run_dir)
    bs = cfg.train.batch_size
    if dist is not None:
        local_batch_size(bs, dist.world_size)  # fails early, on every rank alike
        convert_sync_batchnorm(model, device)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(run_dir)  # this process owns the run: a temp file is a killed writer's
    optimizer = build_optimizer(model, cfg, device)
    generator = torch.Generator()  # ε draws; reseeded at every step (seed_step)
    result = FitResult()
    best: dict[str, dict[str, float]] = {}
    start_epoch, start_step, progress = 0, 0, None
    state, warnings = (load_resume_state(run_dir, map_location=device if dist is None else "cpu")
                       if main else (None, []))
    if dist is not None:
        state = broadcast_object(state, dist)  # rank 0's checkpoint, on every rank
    result.warnings.extend(warnings)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best = {c: dict(b) for c, b in state.get("best", {}).items()}
        result.val = list(state.get("val_history", []))
        pos = result.resumed_from = _position(state)
        if main:
            result.warnings.extend(_reconcile_best(run_dir, best, state, cfg))
        if pos.epoch_done:
            start_epoch = pos.epoch + 1
        else:
            start_epoch, start_step = pos.epoch, pos.step
            progress = EpochProgress(**state["progress"])
        del state
    if on_resume is not None and main:
        on_resume(result.resumed_from, list(result.warnings))
    epochs, seed = cfg.train.epochs, cfg.train.seed
    train_model = wrap_ddp(model, device) if dist is not None else model
    if cfg.train.compile != "off":  # shares model's parameters; checkpoints keep saving model's own state_dict
        train_model = torch.compile(train_model, mode=cfg.train.compile)
    t0 = time.perf_counter()

    def training_state(epoch: int, step: int, done: bool, prog: EpochProgress | None) -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                "epoch_done": done, "progress": asdict(prog) if prog is not None else None,
                "best": best, "val_history": result.val, "config": to_dict(cfg)}

    for epoch in range(start_epoch, epochs):
        set_epoch_lr(optimizer, lr_factor(epoch, cfg))
        order = epoch_order(len(train_set), seed, epoch)
        total = steps_per_epoch(len(order), bs)
        used = len(order) if len(order) <= bs else total * bs
        first = start_step if epoch == start_epoch else 0
        mine, batch, offset = _rank_share(order[first * bs:used], bs, dist)
        loader: Iterable[dict] = _epoch_batches(train_set, mine, batch, seed, epoch, cfg, device)
        prog = progress if progress is not None else EpochProgress()
        progress = None
        guard = _InterruptGuard()

        def after_step(done: int, flush: Callable[[], EpochProgress], epoch: int = epoch, total: int = total,
                       guard: _InterruptGuard = guard) -> None:
            stop = any_rank(guard.pending, dist)  # every rank stops at the same step
            due = checkpoint_every > 0 and done % checkpoint_every == 0 and done < total
            if stop or due:
                state = training_state(epoch, done, False, flush())
                if main:
                    _commit(state, run_dir)
            if stop:
                raise TrainingInterrupted(f"at epoch {epoch + 1}/{epochs}, step {done}/{total} (position saved)",
                                          how=guard.how)

        with guard:
            log = train_one_epoch(train_model, recipe, optimizer, loader, device, epoch, cfg=cfg, teachers=teachers,
                                  generator=generator, on_step=on_step if main else None, start_step=first,
                                  total_steps=total, progress=prog, after_step=after_step, dist=dist,
                                  draw_offset=offset)
        if any_rank(guard.pending, dist):  # Ctrl-C after the last step's check: save the trained, unvalidated epoch
            after_step(total, lambda prog=prog: prog)
        result.epochs.append(log)
        if main:
            val_metrics = validate(model) if validate is not None else {}
            result.val.append({"epoch": epoch, **val_metrics})
            improved = update_best(best, epoch, val_metrics)
            if on_epoch is not None:
                on_epoch(log, val_metrics)
            _commit(training_state(epoch, total, True, None), run_dir)
            for criterion in improved:
                save_checkpoint(_best_state(model.state_dict(), epoch, cfg), run_dir, f"best_{criterion}.pt")
        barrier(dist)  # the other ranks wait here (long timeout) while rank 0 validates and writes
    result.best = best
    result.seconds = time.perf_counter() - t0
    return result
