"""Plan estimates from the store's history (ablate --dry-run): hand-computed schedules and medians."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from kdcicam.execution.eta import device_kind, estimate_plan, makespan, run_cost

CPU1 = "cpu (x86_64, 1 threads)"
CPU2 = "cpu (x86_64, 2 threads)"


def _done(role, epochs, train, evaluation, device=CPU1, profile="quick", status="finished", dataset="synthetic",
          run_id=None):
    return NS(id=run_id or f"{role}{epochs}{train}", role=role, profile=profile, dataset=dataset, status=status,
              device=device, train_seconds=train, eval_seconds=evaluation, config={"train": {"epochs": epochs}})


def _planned(run_id, role, epochs=12, deps=()):
    return NS(run_id=run_id, role=role, deps=tuple(deps),
              cfg=NS(data=NS(dataset="synthetic"), train=NS(epochs=epochs)))


def test_makespan_replays_plan_order_with_students_after_their_teachers():
    # cls teacher 10, loc teacher 20, student 5, distilled 8 (needs both teachers)
    durations, deps = [10, 20, 5, 8], [[], [], [], [0, 1]]
    assert makespan(durations, deps, 1) == 43
    # 2 processes: A cls 0-10, B loc 0-20; A student 10-15, then waits for loc: distilled 20-28
    assert makespan(durations, deps, 2) == 28
    assert makespan(durations, deps, 3) == 28  # the loc teacher then the distilled student are the chain
    # a finished teacher costs nothing: distilled can start at once
    assert makespan([0, 0, 5, 8], deps, 2) == 8
    with pytest.raises(ValueError):
        makespan(durations, deps, 0)


def test_run_cost_is_the_median_per_epoch_prefers_the_same_device_and_falls_back_to_its_kind():
    history = [_done("student", 10, 100, 5), _done("student", 12, 240, 9), _done("student", 4, 60, 7),
               _done("student", 12, 1200, 90, device="NVIDIA H200"),
               _done("student", 12, 12, 1, status="running"), _done("student", 12, 12, 1, profile="smoke")]
    cost = run_cost(history, "quick", "student", "synthetic", CPU1)
    # per epoch 10, 20, 15 -> 15; evaluation 5, 9, 7 -> 7 (the GPU, unfinished and smoke runs left out)
    assert (cost.per_epoch, cost.evaluation, cost.n_runs, cost.device) == (15, 7, 3, CPU1)
    assert cost.seconds(12) == 15 * 12 + 7
    other_threads = run_cost(history, "quick", "student", "synthetic", CPU2)
    assert (other_threads.per_epoch, other_threads.device) == (15, "cpu")
    assert run_cost(history, "quick", "student", "synthetic", "NVIDIA H100 80GB HBM3").per_epoch == 100
    assert run_cost(history, "quick", "loc_teacher", "synthetic", CPU1) is None
    assert run_cost(history, "quick", "student", "cub", CPU1) is None
    assert (device_kind(CPU2), device_kind("NVIDIA H200"), device_kind(None)) == ("cpu", "gpu", "gpu")


def test_estimate_plan_resumes_after_done_epochs_and_names_roles_without_history():
    history = [_done("cls_teacher", 12, 1200, 60, run_id="cls"), _done("student", 12, 600, 60, run_id="old"),
               _done("student", 12, 600, 60, status="failed", run_id="half")]
    plan = [_planned("cls", "cls_teacher"), _planned("loc", "loc_teacher"), _planned("half", "student"),
            _planned("new", "student", epochs=6), _planned("kd", "distilled", deps=["cls", "loc"])]
    est = estimate_plan(plan, history, profile="quick", device=CPU1, jobs=2, epochs_done={"half": 8})
    # finished teacher 0; loc teacher and distilled: no history; the failed student resumes after 8 of
    # 12 epochs: 4 x 50 + 60 = 260; the new 6-epoch student 6 x 50 + 60 = 360
    assert est.seconds == (0.0, None, 260.0, 360.0, None)
    assert est.unknown_roles == ("loc_teacher", "distilled") and est.total == 620.0
    assert est.wall == 360.0  # two processes: 260 and 360 side by side (unknown runs count 0)
    assert est.based_on == ("student: median of 1 run(s) on cpu (x86_64, 1 threads)",)


def test_plan_status_says_new_reused_resumed_after_which_epoch_or_running_elsewhere():
    import os
    import socket

    from kdcicam.cli.plan_view import status_of
    from kdcicam.store import utc_now

    def info(status, pid=None):
        return NS(status=status, pid=pid, host=socket.gethostname(), heartbeat_at=utc_now())

    assert status_of(None, None) == "new" and status_of(info("pending"), 0) == "new"
    assert status_of(info("finished"), 12) == "finished (reuse)"
    assert status_of(info("failed"), 4) == "failed (resume after epoch 4)"
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    assert status_of(info("running", pid_max), 3) == "interrupted (resume after epoch 3)"  # its process is gone
    assert status_of(info("running", pid_max), 0) == "interrupted (resume)"
    alive = status_of(info("running", os.getppid()), 8)
    assert alive == f"running in process {os.getppid()} on {socket.gethostname()} (8 epochs done)"
