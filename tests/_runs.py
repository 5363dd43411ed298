"""Helpers of the trainer, resume and concurrency tests: the smoke dataset (generated once per
session), tiny configs, ``python -m kdcicam`` in subprocesses, and what a run stored.

Import the fixture into a test module with ``from _runs import smoke_cache  # noqa: F401``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from kdcicam.core.config import RunConfig
from kdcicam.data.base import DatasetIndex

REPO = Path(__file__).resolve().parents[1]
TIMING_METRICS = {"images_per_s"}  # epoch metrics that measure the machine, not the run


# ------------------------------------------------------------------------------ data and configs

def smoke_config(role: str = "student", **overrides: Any) -> RunConfig:
    """The smoke profile's resolved config (synthetic data, vgg16, reference variant), with ``--set`` overrides."""
    from kdcicam.registry.ablations import load_registry
    from kdcicam.registry.resolve import Scope, resolve_config

    cfg = resolve_config(load_registry(None), scope=Scope(dataset="synthetic", backbone="vgg16"), profile="smoke",
                         variant="reference", role=role, context_pool=True, seed=0, num_classes=2,
                         cli_overrides=overrides)
    return cfg


def smoke_index(cache: Path) -> DatasetIndex:
    """The smoke benchmark from ``cache`` (generated there on first use)."""
    from kdcicam.data.source import open_dataset

    return open_dataset(smoke_config().data, cache)


def with_classes(cfg: RunConfig, index: DatasetIndex) -> RunConfig:
    """``cfg`` with the dataset's class count, as the CLI sets it."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=index.num_classes)).validate()


@pytest.fixture(scope="module")
def one_thread():
    """Run torch on one thread for a test module: on a busy shared 2-core machine, two OpenMP threads
    spin against other processes and a tiny step takes 10-50x longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A KDCICAM_CACHE folder holding the smoke benchmark, shared by every test of the session."""
    root = tmp_path_factory.getbasetemp() / "kdcicam-cache"
    smoke_index(root)
    return root


# ------------------------------------------------------------------------------ subprocesses

def kdcicam_env(cache: Path, crash_at: str | None = None, crash_signal: str | None = None) -> dict[str, str]:
    """The environment of a ``python -m kdcicam`` child: the shared cache, no inherited store or hooks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDCICAM_")}
    # one process per command (ablate --jobs auto would start workers on a multi-core machine) unless a test asks
    env.update(KDCICAM_CACHE=str(cache), COLUMNS="200", PYTHONUNBUFFERED="1", KDCICAM_JOBS="1")
    if crash_at:
        env["KDCICAM_CRASH_AT"] = crash_at
    if crash_signal:
        env["KDCICAM_CRASH_SIGNAL"] = crash_signal
    return env


def _one_core(core: int) -> Callable[[], None]:
    """A preexec_fn pinning the child to one core: the CLI then runs torch on one thread (it uses
    every core it may run on), so results compare bit for bit and a busy machine does not stall it."""
    cores = sorted(os.sched_getaffinity(0))
    core += int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:])  # pytest-xdist's second worker: the other core
    return lambda: os.sched_setaffinity(0, {cores[core % len(cores)]})


def start(args: list[str], cwd: Path, env: dict[str, str], core: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdcicam", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_one_core(core))


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300,
        core: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdcicam", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, preexec_fn=_one_core(core))


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 240,
               what: str = "the condition") -> None:
    """Poll ``condition`` until it holds; fail if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def sigkill(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and reap it (an unreaped child would still look alive to the next run)."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()


# ------------------------------------------------------------------------------ what a run stored

def query(db: Path, sql: str, *params: Any) -> list[tuple]:
    """Rows of a read-only query on a SQLite run store (an empty list while it has no tables yet)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        con.close()


def run_row(db: Path) -> dict[str, Any]:
    """The single run of a store: id, status, message, pid."""
    rows = query(db, "SELECT id, status, message, pid FROM runs")
    assert len(rows) == 1, rows
    return dict(zip(("id", "status", "message", "pid"), rows[0]))


def stored_results(db: Path) -> dict[str, Any]:
    """Everything a run stored that must not depend on interruptions: epoch and final metrics.

    Timing metrics (images/s) are left out; values are compared exactly (floats as stored).
    """
    epochs = query(db, "SELECT epoch, split, name, value FROM epoch_metrics ORDER BY epoch, split, name")
    finals = query(db, "SELECT protocol, selection, threshold_policy, split, name, value FROM final_metrics "
                       "ORDER BY protocol, selection, threshold_policy, split, name")
    records = query(db, "SELECT protocol, selection, split, image_id, top5, top5_scores, box, iou "
                        "FROM image_records ORDER BY protocol, selection, split, image_id")
    return {"epochs": [r for r in epochs if r[2] not in TIMING_METRICS], "finals": finals, "records": records}


def checkpoint(artifacts: Path, name: str = "last.pt") -> dict[str, Any]:
    """A checkpoint of the single run under ``artifacts`` (loaded as the trainer loads it)."""
    from kdcicam.training.checkpoint import load_checkpoint

    (path,) = artifacts.glob(f"*/{name}")
    return load_checkpoint(path)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit-identical state dicts."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
