"""Process-level settings made explicitly, once, by the command that runs: seeds, determinism,
device choice, CPU threads, and the provenance facts recorded with every run.

Also the one crash-test hook of the project, :func:`crash_point` (inert unless the
``KDCICAM_CRASH_AT`` environment variable names a point; see its docstring).
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import torch

from kdcicam.core.errors import ConfigError

DEVICE_TEXT_MAX = 64  # the run store's device column (kdcicam.store.schema.Run.device) holds this many characters
CRASH_ENV = "KDCICAM_CRASH_AT"  # test hook: "<point>[@<n>]" (see crash_point)
CRASH_SIGNAL_ENV = "KDCICAM_CRASH_SIGNAL"  # the signal it sends: KILL (default) or INT
_crash_counts: dict[str, int] = {}  # how often each crash point was reached in this process


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch, and switch deterministic kernels on or off.

    Called by the CLI and again by the runner before each run, so a run's initial weights depend on
    its own seed alone, never on the runs trained before it in the same process. Deterministic mode
    is set both ways, so a non-deterministic run after a deterministic one gets the fast kernels back.

    Args:
        seed: The run seed.
        deterministic: Force deterministic algorithms (an op without one raises instead of running).
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.deterministic = deterministic
        # autotune convolution algorithms for the fixed input size, unless results must be reproducible
        torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def derive_seed(seed: int, *keys: int | str) -> int:
    """An independent 63-bit seed for one random stream of a run, a pure function of its keys.

    ``derive_seed(seed, "order", epoch)`` and ``derive_seed(seed, "augment", epoch, index)`` never
    collide the way ``seed * K + epoch`` can, and need no state: a resumed run recomputes them.

    Args:
        seed: The run seed.
        *keys: The stream's name and coordinates (epoch, step, sample index...).

    Returns:
        An integer in [0, 2**63).
    """
    text = "/".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def pick_device(spec: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"train.device = {spec!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {spec!r}: no CUDA device is available on this machine")
    return device


def device_name(device: torch.device) -> str:
    """The device a run trains on, as stored with it: the GPU's name, or for the CPU its model, machine
    architecture, the vector instructions PyTorch's kernels use (``ATEN_CPU_CAPABILITY`` can lower them)
    and the thread count, e.g. ``cpu (AMD EPYC 7B13, x86_64, AVX2, 1 threads)``, at most
    :data:`DEVICE_TEXT_MAX` characters (a long model name is cut). Floating-point results differ between
    CPU kernels and thread counts, so two runs are comparable bit for bit only on equal strings."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)[:DEVICE_TEXT_MAX]
    tail = f"{torch.get_num_threads()} threads)"
    rest = [p for p in dict.fromkeys((platform.machine(), cpu_capability())) if p]
    fixed = len("cpu (") + sum(len(p) + 2 for p in rest) + len(tail)
    model = short_cpu_model(cpu_model())
    if model in rest:  # the model may be the architecture itself
        model = ""
    if model and fixed + len(model) + 2 > DEVICE_TEXT_MAX:
        model = model[:max(0, DEVICE_TEXT_MAX - fixed - 3)].rstrip() + "…"
    return "cpu (" + "".join(f"{p}, " for p in ([model] if model else []) + rest) + tail


def short_cpu_model(model: str) -> str:
    """A CPU model name without trademarks, clock and core-count boilerplate:
    ``Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz`` -> ``Intel Xeon Gold 6338``,
    ``AMD EPYC 7B13 64-Core Processor`` -> ``AMD EPYC 7B13``."""
    model = re.sub(r"\((R|TM|r|tm)\)", "", model)
    model = re.sub(r"@\s*[\d.]+\s*[GM]Hz", "", model)
    model = re.sub(r"\b\d+-Core\b|\bProcessor\b|\bCPU\b", "", model)
    return " ".join(model.split())


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``), else what :func:`platform.processor` says, else ''."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor()


def cpu_capability() -> str:
    """The instruction set PyTorch's CPU kernels dispatch to (``AVX2``, ``AVX512``, ``DEFAULT``...), or ''."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # an older torch: not exposed
        return ""


def git_commit(cwd: Path | None = None) -> str:
    """The commit of the kdcicam checkout (with ``+dirty`` when it has uncommitted changes), or ``unknown``."""
    here = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha[:12] + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(device: torch.device) -> dict[str, str]:
    return {
        "git_commit": git_commit(),
        "device": device_name(device),
        "torch_version": torch.__version__,
        "host": platform.node(),
    }


def crash_point(name: str) -> None:
    """Test hook: kill this process at a named point, to test crash recovery with real signals.

    Inert unless the environment variable ``KDCICAM_CRASH_AT`` is ``<name>`` or ``<name>@<n>``: the
    n-th time (default: the first) the process reaches the point it sends itself SIGKILL (no
    cleanup of any kind), or SIGINT when ``KDCICAM_CRASH_SIGNAL=INT`` (a Ctrl-C at that instant), or
    SIGTERM when it is ``TERM`` (a ``kill PID``).
    Never set it outside tests. Points:

    - ``before-rename:<file>``: the temp copy of ``<file>`` is written and synced, not yet renamed;
    - ``after-rotate``: ``last.pt`` is moved to ``prev.pt``, the new one is not yet written;
    - ``after-step``: an optimizer step is done;
    - ``between-metric-writes``: an epoch's train metrics are stored, its validation metrics not yet;
    - ``after-eval-write``: one checkpoint's test metrics under one protocol are stored.
    """
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] == int(nth or 1):
        how = os.environ.get(CRASH_SIGNAL_ENV, "KILL").upper().removeprefix("SIG")
        os.kill(os.getpid(), {"INT": signal.SIGINT, "TERM": signal.SIGTERM}.get(how, signal.SIGKILL))
