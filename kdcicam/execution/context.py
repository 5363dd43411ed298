"""What every run of an invocation shares (:class:`RunContext`), what one run came to (:class:`RunOutcome`),
and the ways a run stops early."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdcicam.core.config import RunConfig
from kdcicam.core.errors import RunError
from kdcicam.data.cache import FrameStore
from kdcicam.execution.holders import STALE_AFTER_S
from kdcicam.store import Store
from kdcicam.training.distributed import DistContext


@dataclass
class RunContext:
    """What every run of an invocation shares."""

    store: Store
    artifacts_root: Path
    device: torch.device
    eval_batch_size: int = 64
    wait_poll_s: float = 5.0  # how often to look at a run another process is training
    on_event: Callable[[str, dict[str, Any]], None] | None = None  # progress / messages for the CLI
    heartbeat_s: float = 15.0  # heartbeat period while a run is held (0 = none; in-memory stores: none)
    stale_after_s: float = STALE_AFTER_S  # a running run whose heartbeat is older than this is taken over
    checkpoint_every: int = 0  # also checkpoint every this many training steps (0 = at epoch ends)
    dist: DistContext | None = None  # this process's place in a multi-process run (None: one process)
    _frames: FrameStore | None = field(default=None, repr=False)

    def frames_for(self, cfg: RunConfig) -> FrameStore | None:
        """The decoded frames every run of this invocation shares (None: ``train.data_cache`` is off)."""
        if not cfg.train.data_cache:
            return None
        if self._frames is None:
            self._frames = FrameStore(self.device, workers=max(1, torch.get_num_threads()))
        return self._frames

    @property
    def is_main(self) -> bool:
        """Whether this process owns the store and the files (rank 0, or the only process)."""
        return self.dist is None or self.dist.is_main


@dataclass
class RunOutcome:
    run_id: str
    status: str  # finished | failed | skipped
    reused: bool = False
    message: str = ""
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


def emit(ctx: RunContext, kind: str, **data: Any) -> None:
    """Send a progress event to the invocation's listener (the CLI), if any."""
    if ctx.on_event is not None:
        ctx.on_event(kind, data)


class RunTakenOver(RunError):
    """Another process took this run over (it judged this one dead): stop, leaving the run to it."""


class DistributedAbort(RunError):
    """Rank 0 stopped a multi-process run after training had started (recorded in the store first);
    the other ranks are inside collectives and are ended by torchrun when this process exits."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a run; the run is recorded as interrupted, and the message says how to resume."""
