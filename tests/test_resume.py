"""Crash safety of ``kdcicam train`` end to end: real processes, real SIGKILL / SIGINT, one store.

Every interrupted run below is rerun with the same command and must end with exactly what an
uninterrupted run stores (deterministic CPU mode): every epoch metric, every final metric and
per-image record, the final weights and the best checkpoints.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from _runs import (  # noqa: F401
    checkpoint,
    kdcicam_env,
    query,
    run,
    run_row,
    same_weights,
    sigkill,
    smoke_cache,
    start,
    stored_results,
    wait_until,
)

from kdcicam.store.run_folder import read_attempts

# every test reads the module's `references`: trained once, on one pytest-xdist worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("resume-references")]
EPOCHS = 3  # smoke: 64 training images in batches of 16 -> 4 steps per epoch


def _train_args(where: Path) -> list[str]:
    return ["train", "--profile", "smoke", "--role", "student", "--device", "cpu", "--deterministic",
            "--set", f"train.epochs={EPOCHS}", "--db", f"sqlite:///{where / 'runs.db'}",
            "--artifacts", str(where / "runs")]


def _outcome(where: Path) -> dict:
    """What a finished run left: stored metrics and records, final weights, best checkpoints."""
    runs = where / "runs"
    return {"stored": stored_results(where / "runs.db"), "weights": checkpoint(runs)["model"],
            "best": {c: checkpoint(runs, f"best_{c}.pt")["model"] for c in ("top1_loc", "gt_known_loc", "top1_cls")}}


def _assert_same(got: dict, want: dict) -> None:
    assert got["stored"]["epochs"] == want["stored"]["epochs"]
    assert got["stored"]["finals"] == want["stored"]["finals"]
    assert got["stored"]["records"] == want["stored"]["records"]
    assert same_weights(got["weights"], want["weights"])
    for criterion, weights in want["best"].items():
        assert same_weights(got["best"][criterion], weights), criterion


@pytest.fixture(scope="module")
def references(smoke_cache, tmp_path_factory):  # noqa: F811
    """Two uninterrupted runs of the same command, side by side on the two cores."""
    env = kdcicam_env(smoke_cache)
    dirs = [tmp_path_factory.mktemp(f"reference{i}") for i in range(2)]
    procs = [start(_train_args(d) + ["--quiet"], d, env, core=i) for i, d in enumerate(dirs)]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out + err
    return [_outcome(d) for d in dirs]


def test_two_deterministic_runs_store_bit_identical_results(references):
    first, second = references
    assert len(first["stored"]["epochs"]) > 0 and len(first["stored"]["finals"]) > 0
    assert {e for e, *_ in first["stored"]["epochs"]} == set(range(EPOCHS))
    _assert_same(second, first)


def test_sigkill_at_every_stage_then_the_same_command_ends_as_if_never_interrupted(references, smoke_cache,
                                                                                   tmp_path):
    env = kdcicam_env(smoke_cache)
    args = _train_args(tmp_path) + ["--quiet"]
    db = tmp_path / "runs.db"

    # 1. during an epoch: killed from outside once epoch 1's checkpoint is on disk
    proc = start(args, tmp_path, env)
    wait_until(lambda: any((tmp_path / "runs").glob("*/last.pt")), proc, what="the first checkpoint")
    sigkill(proc)
    row = run_row(db)
    assert row["status"] == "running"  # left behind by a dead process

    # 2. during a checkpoint write: the new last.pt is a synced temp file, not yet renamed
    killed = run(args, tmp_path, kdcicam_env(smoke_cache, crash_at="before-rename:last.pt"))
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert list(run_dir.glob(".last.pt.*.tmp")), "the temp file of the killed write"

    # 3. during the DB write of an epoch's metrics (the second epoch this process finishes)
    killed = run(args, tmp_path, kdcicam_env(smoke_cache, crash_at="between-metric-writes@2"))
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    splits = dict(query(db, "SELECT split, MAX(epoch) FROM epoch_metrics GROUP BY split"))
    assert splits["train"] == splits["val"] + 1  # the last epoch's train metrics are in, its val ones not
    assert not list(run_dir.glob(".last.pt.*.tmp"))  # the resumed run cleared the killed writer's temp

    # 4. during evaluation, after the first checkpoint's test metrics are stored
    killed = run(args, tmp_path, kdcicam_env(smoke_cache, crash_at="after-eval-write"))
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert run_row(db)["status"] == "running" and query(db, "SELECT COUNT(*) FROM final_metrics")[0][0] > 0

    # 5. the same command, uninterrupted: takes the dead process's run over and finishes it
    done = run(_train_args(tmp_path), tmp_path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "was left running by process" in done.stderr and "which is gone" in done.stderr
    assert run_row(db)["status"] == "finished"
    _assert_same(_outcome(tmp_path), references[0])
    attempts = read_attempts(run_dir)  # one line per process that claimed the run: the 4 killed, then this one
    assert len(attempts) == 5 and len({a["pid"] for a in attempts}) == 5
    assert {a["device"] for a in attempts} == {query(db, "SELECT device FROM runs")[0][0]}


@pytest.mark.parametrize(("signal_name", "how"), [("INT", "Ctrl-C"), ("TERM", "SIGTERM")])
def test_ctrl_c_stops_at_a_step_saves_the_position_and_the_rerun_ends_the_same(references, smoke_cache,
                                                                              tmp_path, signal_name, how):
    args = _train_args(tmp_path) + ["--quiet"]
    # SIGINT (Ctrl-C) or SIGTERM (kill PID) right after the 6th optimizer step: epoch 2, step 2 of 4
    stopped = run(args, tmp_path, kdcicam_env(smoke_cache, crash_at="after-step@6", crash_signal=signal_name))
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    (line,) = stopped.stderr.strip().splitlines()  # one line, naming the run, where, and what to do
    assert line.startswith("interrupted: run ") and line.endswith(
        "at epoch 2/3, step 2/4 (position saved); rerun the same command to resume from the last checkpoint"), line
    row = run_row(tmp_path / "runs.db")
    assert row["status"] == "failed"
    assert f"interrupted ({how}) at epoch 2/3, step 2/4 (position saved); rerun the same command" in row["message"]
    state = checkpoint(tmp_path / "runs")
    assert (state["epoch"], state["step"], state["epoch_done"]) == (1, 2, False)

    done = run(args, tmp_path, kdcicam_env(smoke_cache))
    assert done.returncode == 0, done.stdout + done.stderr
    assert run_row(tmp_path / "runs.db")["status"] == "finished"
    _assert_same(_outcome(tmp_path), references[0])
