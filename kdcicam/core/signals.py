"""How a kdcicam process is stopped: SIGTERM (``kill PID``) is read as Ctrl-C.

A background job ignores SIGINT, and schedulers and containers stop processes with SIGTERM; read as
a Ctrl-C, it stops a training run at the next step with its position saved (:mod:`kdcicam.training.trainer`),
records the run as interrupted, stops ``ablate``'s worker processes and exits with one line and
status 130. Installed only over the system's default (a SLURM job's own handler stays in charge).
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class Terminated(KeyboardInterrupt):
    """A SIGTERM, read as Ctrl-C (``how`` names it in the run's stored message)."""

    how = "SIGTERM"


def terminate_as_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler: raise a KeyboardInterrupt (:class:`Terminated`), as Python's SIGINT handler does."""
    raise Terminated


def install_sigterm_as_interrupt() -> None:
    """Read SIGTERM as Ctrl-C in this process, unless something else already handles it (main thread only)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, terminate_as_interrupt)
