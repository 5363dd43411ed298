"""Stopping training at a step boundary on Ctrl-C or SIGTERM, with the position saved first."""

from __future__ import annotations

import signal
import threading
from typing import Any

from kdcicam.core.signals import terminate_as_interrupt


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped training at a step boundary, after saving that position as ``last.pt``."""

    def __init__(self, message: str, how: str = "Ctrl-C") -> None:
        super().__init__(message)
        self.how = how  # "Ctrl-C" or "SIGTERM"


class InterruptGuard:
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

    def __enter__(self) -> InterruptGuard:
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
