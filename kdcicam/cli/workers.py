"""``kdcicam ablate --jobs N``: N processes working through one plan at once.

The extra N - 1 processes run the same ``ablate`` command (without ``--jobs``, quietly). They
share the plan through the store as independent invocations always do (``runner.execute_plan``):
each claims a run before training it, puts off runs another live process holds, and waits for
a teacher another process is training. Worker k starts ``WORKER_STAGGER_S`` x k seconds after the
parent, so the first claims are in the store before the next process picks its run. A worker's
output goes to ``ARTIFACTS/workers/worker-K.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from kdcicam.cli._common import available_cores
from kdcicam.core.errors import ConfigError

WORKER_STAGGER_S = 1.0
MAX_AUTO_JOBS = 4  # --jobs auto on CPU: at most this many runs at once (each gets cores // jobs threads)
_DROP_FLAGS = {"--json", "--quiet", "--dry-run"}  # the parent prints; workers only train


@dataclass
class Worker:
    number: int
    process: subprocess.Popen
    log: Path


def parse_jobs(value: str) -> int | None:
    """``--jobs``: a whole number >= 1, or ``auto`` (None)."""
    if value.strip().lower() == "auto":
        return None
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise ConfigError(f"--jobs {value!r}: expected a whole number >= 1, or auto")
    return jobs


def auto_jobs(*, device_type: str, cores: int, startable: int) -> int:
    """How many runs ``--jobs auto`` trains at once.

    On CPU, one run per core: two one-thread runs train ~1.4x more images per second than one run on
    two threads (benchmarks/README.md). At most :data:`MAX_AUTO_JOBS` and at most ``startable``, the
    runs to train that wait for no other run to train (more processes would idle and only take the
    threads the first runs could use). On an accelerator, 1: the runs would share one device.

    Args:
        device_type: ``torch.device.type`` the runs train on.
        cores: cores this process may use.
        startable: runs of the plan still to train whose teachers are all trained already.
    """
    if device_type != "cpu":
        return 1
    return max(1, min(cores, MAX_AUTO_JOBS, startable))


def split_threads(jobs: int) -> None:
    """Give each of ``jobs`` processes an equal share of this process's cores (unless KDCICAM_THREADS is set)."""
    if os.environ.get("KDCICAM_THREADS"):
        return
    os.environ["KDCICAM_THREADS"] = str(max(1, available_cores() // jobs))


def worker_args(argv: list[str]) -> list[str]:
    """The ``ablate`` arguments of a worker: the parent's, without ``--jobs`` and output flags, plus
    ``--jobs 1 --quiet`` (a worker is one process: it starts no workers of its own).

    ``argv`` is ``sys.argv`` of ``kdcicam ablate ...`` or ``python -m kdcicam ablate ...``.
    """
    try:
        at = argv.index("ablate")
    except ValueError:
        raise ValueError(f"not an ablate command line: {argv}") from None
    rest, out = argv[at + 1:], ["ablate"]
    skip = False
    for arg in rest:
        if skip:
            skip = False
            continue
        if arg == "--jobs":
            skip = True  # its value follows
            continue
        if arg.startswith("--jobs=") or arg in _DROP_FLAGS:
            continue
        out.append(arg)
    return [*out, "--jobs", "1", "--quiet"]


class Workers:
    """Worker processes started in the background, one every ``WORKER_STAGGER_S`` seconds."""

    def __init__(self, count: int, args: list[str], artifacts: Path) -> None:
        self.logs = Path(artifacts) / "workers"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started: list[Worker] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._start, args=(count, args), daemon=True)
        self._thread.start()

    def _start(self, count: int, args: list[str]) -> None:
        for k in range(1, count + 1):
            if self._stop.wait(WORKER_STAGGER_S):
                return
            log = self.logs / f"worker-{k}.log"
            with open(log, "w") as fh:
                proc = subprocess.Popen([sys.executable, "-m", "kdcicam", *args], stdout=fh,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.started.append(Worker(k, proc, log))

    def interrupt(self) -> None:
        """Start no more, and ask the running ones to stop at their next training step (SIGTERM: a worker of a
        background job ignores SIGINT), saving their position, as the interrupted parent does."""
        self._stop.set()
        self._thread.join()
        for w in self.started:
            if w.process.poll() is None:
                w.process.send_signal(signal.SIGTERM)

    def wait(self) -> list[str]:
        """Start no more; wait for the started ones. One line per worker that failed (status and log)."""
        self._stop.set()
        self._thread.join()
        return wait_workers(self.started)


def start_workers(count: int, args: list[str], artifacts: Path) -> Workers | None:
    """Start ``count`` worker processes of ``python -m kdcicam <args>`` in the background (None: count is 0)."""
    return Workers(count, args, artifacts) if count > 0 else None


def wait_workers(workers: list[Worker]) -> list[str]:
    """Wait for every worker; one line per worker that failed (its exit status and log)."""
    errors = []
    for w in workers:
        code = w.process.wait()
        if code != 0:
            tail = w.log.read_text(errors="replace").strip().splitlines()[-1:] if w.log.exists() else []
            errors.append(f"worker {w.number} exited with status {code}: {tail[0] if tail else '(no output)'} "
                          f"(log: {w.log})")
    return errors
