"""Several processes on one run store: each run trained once, dead holders taken over, live ones
waited for (and replaced if they fail or die), readers never blocked."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import threading
import time
from datetime import timedelta

import pytest
import torch
from _runs import (  # noqa: F401
    kdcicam_env,
    one_thread,
    query,
    smoke_cache,
    smoke_config,
    smoke_index,
    start,
    wait_until,
    with_classes,
)

from kdcicam.data.dataset import WSOLDataset
from kdcicam.data.transforms import train_transform
from kdcicam.execution import lease
from kdcicam.execution.context import RunContext, RunTakenOver
from kdcicam.execution.lease import Heartbeat, acquire, take_over
from kdcicam.store.run_folder import read_attempts
from kdcicam.execution.plan import PlannedRun, run_id_for
from kdcicam.execution.runner import execute, execute_plan, register_run
from kdcicam.model.factory import build_model
from kdcicam.store import open_store, utc_now
from kdcicam.training import epoch as epoch_mod
from kdcicam.training.recipes import recipe_for
from kdcicam.training.trainer import fit

CPU = torch.device("cpu")
HOST = socket.gethostname()


# ----------------------------------------------------------------------------- in-process: one run, two holders

@pytest.fixture
def setup(one_thread, smoke_cache, tmp_path, monkeypatch):  # noqa: F811
    """A store on disk, a context recording its events, and one planned 2-epoch smoke run, registered."""
    monkeypatch.setattr(lease, "TAKEOVER_MARGIN_S", 0.2)  # keep the tests quick (2 s in real use)
    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    events: list[tuple[str, dict]] = []
    ctx = RunContext(store=store, artifacts_root=tmp_path / "runs", device=CPU, wait_poll_s=0.05,
                     heartbeat_s=0.05, stale_after_s=5.0, on_event=lambda kind, data: events.append((kind, data)))
    index = smoke_index(smoke_cache)
    cfg = with_classes(smoke_config(**{"train.epochs": 2}), index)
    planned = PlannedRun(run_id=run_id_for(cfg, index.fingerprint), cfg=cfg, dataset=index)
    register_run(planned, index, ctx)
    yield store, ctx, events, planned
    store.close()


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: the pid names no process now
    return child.pid


def _messages(events, kind: str) -> list[str]:
    return [data.get("message", "") for k, data in events if k == kind]


class _Killed(BaseException):
    """Stands for SIGKILL."""


def _die_after_epoch_one(planned, ctx, monkeypatch) -> None:
    """Train the run as a process that commits epoch 1 of 2 and is killed during epoch 2."""
    cfg = planned.cfg
    steps = {"n": 0}

    def crash_point(name):
        steps["n"] += name == "after-step"
        if steps["n"] == 5:  # 64 images / 16 = 4 steps per epoch: the first step of epoch 2
            raise _Killed

    monkeypatch.setattr(epoch_mod, "crash_point", crash_point)
    data = WSOLDataset(planned.dataset.train, train_transform(cfg.data.train_resize, cfg.data.crop, False))
    model = build_model(cfg.model, cfg.variant, input_size=cfg.data.crop)
    with pytest.raises(_Killed):
        fit(model, recipe_for(cfg.loss, cfg.variant), cfg, data, ctx.artifacts_root / planned.run_id, CPU)
    monkeypatch.setattr(epoch_mod, "crash_point", lambda name: None)


def test_a_run_left_running_by_a_dead_process_here_is_taken_over_and_resumed(setup, monkeypatch):
    store, ctx, events, planned = setup
    _die_after_epoch_one(planned, ctx, monkeypatch)
    dead = _dead_pid()
    assert store.claim_run(planned.run_id, dead, HOST)  # running, fresh heartbeat, pid gone
    outcome = execute(planned, planned.dataset, ctx)
    assert outcome.status == "finished" and not outcome.reused
    assert _messages(events, "warning") == [f"run {planned.run_id[:12]} was left running by process {dead} on this "
                                            "host, which is gone: resuming it from its last checkpoint"]
    assert _messages(events, "resumed") == [f"run {planned.run_id[:12]}: resuming after epoch 1/2"]
    info = store.get_run(planned.run_id)
    assert info.status == "finished" and info.pid == os.getpid()
    (attempt,) = read_attempts(info.artifacts_dir)  # the dead holder claimed through the store alone
    assert (attempt["pid"], attempt["device"], attempt["git_commit"]) == (os.getpid(), info.device, info.git_commit)
    # this process trained epoch 2 only (the dead one would have stored epoch 1's metrics)
    assert query(ctx.artifacts_root.parent / "runs.db", "SELECT DISTINCT epoch FROM epoch_metrics") == [(1,)]


def test_a_run_whose_heartbeat_went_stale_on_another_host_is_taken_over(setup, tmp_path):
    store, ctx, events, planned = setup
    ten_minutes_ago = open_store(f"sqlite:///{tmp_path / 'runs.db'}", clock=lambda: utc_now() - timedelta(minutes=10))
    assert ten_minutes_ago.claim_run(planned.run_id, 4242, "node-17")
    ten_minutes_ago.close()
    assert acquire(planned.run_id, ctx)
    (message,) = _messages(events, "warning")
    assert message.startswith(f"run {planned.run_id[:12]} was left running by process 4242 on node-17, silent for 6")
    assert store.get_run(planned.run_id).pid == os.getpid()


@pytest.fixture
def live_holder(setup):
    """A live process on this host that holds the run (it never trains it: the test decides its fate)."""
    store, ctx, events, planned = setup
    child = subprocess.Popen(["sleep", "20"])  # bounds a hang if a test fails
    assert store.claim_run(planned.run_id, child.pid, HOST)
    yield child
    child.kill()
    child.wait()


def _later(action, delay: float = 0.4) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), action()))
    thread.start()
    return thread


def test_a_live_holder_is_waited_for_and_if_it_fails_this_process_resumes_the_run(setup, live_holder):
    store, ctx, events, planned = setup
    thread = _later(lambda: store.fail_run(planned.run_id, "CUDA out of memory"))
    assert acquire(planned.run_id, ctx)  # returns only once the holder has failed
    thread.join()
    assert [k for k, _ in events] == ["waiting", "warning"]
    assert events[0][1]["holder"] == f"process {live_holder.pid} on {HOST}"
    assert _messages(events, "warning") == [f"run {planned.run_id[:12]}: the process training it stopped "
                                            "(CUDA out of memory); this process resumes it"]
    assert store.get_run(planned.run_id).pid == os.getpid()


def test_a_live_holder_that_dies_while_waited_for_is_replaced(setup, live_holder):
    store, ctx, events, planned = setup
    thread = _later(lambda: (live_holder.kill(), live_holder.wait()))
    assert acquire(planned.run_id, ctx)
    thread.join()
    assert [k for k, _ in events] == ["waiting", "warning"]
    assert "which is gone" in _messages(events, "warning")[0]


def test_a_live_holder_that_finishes_means_the_run_is_reused(setup, live_holder):
    store, ctx, events, planned = setup
    thread = _later(lambda: store.finish_run(planned.run_id, train_seconds=1.0))
    assert acquire(planned.run_id, ctx) is False
    thread.join()
    assert store.get_run(planned.run_id).pid == live_holder.pid  # untouched


def test_taking_over_a_dead_holder_never_steals_from_a_process_that_claimed_it_since(setup, live_holder):
    store, ctx, events, planned = setup
    store.fail_run(planned.run_id, "placeholder")
    assert store.claim_run(planned.run_id, _dead_pid(), HOST)
    seen = store.get_run(planned.run_id)  # a dead holder: this process decides to take over...
    time.sleep(0.3)
    store.fail_run(planned.run_id, "placeholder")  # ...but meanwhile another live process claims it
    assert store.claim_run(planned.run_id, live_holder.pid, HOST)
    assert take_over(seen, ctx, {}) is False
    assert store.get_run(planned.run_id).pid == live_holder.pid


def test_the_heartbeat_thread_beats_and_notices_when_the_run_is_taken(setup):
    store, ctx, events, planned = setup
    assert store.claim_run(planned.run_id, os.getpid(), HOST)
    first = store.get_run(planned.run_id).heartbeat_at
    with Heartbeat(store, planned.run_id, 0.05) as beat:
        time.sleep(0.3)
        assert store.get_run(planned.run_id).heartbeat_at > first
        beat.check()  # still ours
        store.fail_run(planned.run_id, "placeholder")
        assert store.claim_run(planned.run_id, 4242, "node-17")  # judged dead and taken by another host
        time.sleep(0.3)
        with pytest.raises(RunTakenOver, match="taken over by another process"):
            beat.check()


def test_a_plan_puts_off_a_run_held_elsewhere_and_trains_the_others_first(setup, live_holder):
    store, ctx, events, held = setup
    cfg = dataclasses.replace(held.cfg, train=dataclasses.replace(held.cfg.train, seed=1, epochs=1))
    free = PlannedRun(run_id=run_id_for(cfg, held.dataset.fingerprint), cfg=cfg, dataset=held.dataset)
    started = []

    def on_start(run):
        started.append(run.run_id)
        if run is free:  # once this process trains the free run, the holder of the other finishes
            _later(lambda: store.finish_run(held.run_id, train_seconds=1.0), delay=0.2)

    outcomes = execute_plan([held, free], ctx, on_run_start=on_start)
    assert started == [free.run_id, held.run_id]
    assert [(o.run_id, o.status, o.reused) for o in outcomes] == [(held.run_id, "finished", True),
                                                                  (free.run_id, "finished", False)]


# ----------------------------------------------------------------------------- two real ablate commands

@pytest.mark.slow
def test_two_ablates_at_once_train_each_run_once_and_readers_keep_working(smoke_cache, tmp_path):  # noqa: F811
    db = tmp_path / "runs.db"
    common = ["--profile", "smoke", "--device", "cpu", "--db", f"sqlite:///{db}", "--artifacts", str(tmp_path / "runs")]
    env = kdcicam_env(smoke_cache)
    a = start(["ablate", "table3", "--json", *common], tmp_path, env, core=0)
    b = start(["ablate", "table3", *common], tmp_path, env, core=1)  # with progress output
    # while they write: the read commands work (the first run finished, the others not yet)
    wait_until(lambda: query(db, "SELECT COUNT(*) FROM runs WHERE status = 'finished'") not in ([], [(0,)]), a,
               what="a first finished run")
    assert a.poll() is None and b.poll() is None  # both still writing
    readers = [start(["runs", "list", "--db", f"sqlite:///{db}"], tmp_path, env, core=0),
               start(["report", "--format", "md", "--db", f"sqlite:///{db}"], tmp_path, env, core=1)]
    (list_out, list_err), (report_out, report_err) = (r.communicate(timeout=600) for r in readers)
    assert readers[0].returncode == 0, list_out + list_err
    assert readers[1].returncode == 0 and "Table 3" in report_out, report_out + report_err
    out_a, err_a = a.communicate(timeout=600)
    out_b, err_b = b.communicate(timeout=600)
    for proc, out, err in ((a, out_a, err_a), (b, out_b, err_b)):
        assert proc.returncode == 0, out + err
    assert all("locked" not in text.lower() for text in (out_a, err_a, out_b, err_b, list_out, list_err,
                                                          report_out, report_err))

    rows = json.loads(out_a)["runs"]
    assert len(rows) == 5 and all(r["status"] == "finished" for r in rows)
    by_a = {r["run_id"] for r in rows if not r["reused"]}
    holder = dict(query(db, "SELECT id, pid FROM runs"))
    assert set(holder) == {r["run_id"] for r in rows}
    # the last process to claim each run trained it: A's own runs are exactly those it says it trained
    assert {rid for rid, pid in holder.items() if pid == a.pid} == by_a
    assert {rid for rid, pid in holder.items() if pid == b.pid} == set(holder) - by_a
    summary = out_b.strip().splitlines()[-1]  # "table3 (...): N trained, M reused, 0 failed or skipped..."
    assert f"{5 - len(by_a)} trained, {len(by_a)} reused, 0 failed" in summary, summary
    # one epoch each: a second training of a run would have rotated its last.pt into prev.pt
    assert not list((tmp_path / "runs").glob("*/prev.pt"))
    assert len(list((tmp_path / "runs").glob("*/last.pt"))) == 5


def test_a_claim_the_attempts_log_cannot_hold_is_a_warning_and_the_run_is_held(setup):
    store, ctx, events, planned = setup
    folder = ctx.artifacts_root / planned.run_id
    (folder / "attempts.jsonl").mkdir(parents=True)  # not a file: the log cannot be appended to
    assert acquire(planned.run_id, ctx, device="cpu", artifacts_dir=str(folder))
    assert store.get_run(planned.run_id).status == "running"
    (message,) = _messages(events, "warning")
    assert message.startswith(f"run {planned.run_id[:12]}: this attempt is not in its attempts log (cannot write")
    assert read_attempts(folder) == []
