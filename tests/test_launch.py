"""Runs outside the planning process (kdcicam.execution.launch): run specs, child commands, SLURM submission
through submitit, pre-emption and requeue.

What these tests prove:

- a spec round-trips to the same PlannedRun, and a job refuses a spec whose data or config changed;
- submission goes teachers first and gives each student ``afterok`` on its teachers' jobs (SLURM), or
  (an executor without dependencies) submits a student only once its teachers' jobs succeeded, and
  never one whose teacher failed; runs finished earlier get no job;
- a pre-empted job (submitit's USR2) interrupts its training child and requeues the same command;
- end to end with submitit's local executor: ``kdcicam ablate table3 --profile smoke --launcher
  submitit-local`` ends with every run finished, the distilled student claimed only after both teachers
  finished, and its job, pre-empted mid-training (USR2, as SLURM signals a time-out), requeued and
  resumed from its checkpoint (its log says so, and every epoch is stored once).

Not testable here: a real SLURM cluster (sbatch, ``scontrol requeue``, ``afterok`` held by the
scheduler), jobs on several nodes, and GPUs (NCCL, torch's SyncBatchNorm).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from _runs import kdcicam_env, smoke_cache, smoke_config, smoke_index, with_classes  # noqa: F401

from kdcicam.core.errors import ConfigError, RunError
from kdcicam.execution.launch import (
    TrainJob,
    absolute_db_url,
    planned_run,
    read_spec,
    spec_for,
    submit_plan,
    train_args,
    write_spec,
)
from kdcicam.execution.plan import PlannedRun, run_id_for
from kdcicam.training.distributed import launch_command


def _run(cache: Path, role: str = "student", deps: tuple[str, ...] = (), **sets) -> PlannedRun:
    index = smoke_index(cache)
    cfg = with_classes(smoke_config(role, **sets), index)
    run = PlannedRun(run_id=run_id_for(cfg, index.fingerprint), cfg=cfg, dataset=index, deps=deps)
    run.labels.append(("table3", "conpool", 0, ""))
    return run


# ------------------------------------------------------------------------------ specs

def test_a_spec_round_trips_to_the_same_run(smoke_cache, tmp_path):  # noqa: F811
    run = _run(smoke_cache)
    path = write_spec(spec_for(run, smoke_cache), tmp_path / "art")
    assert path == (tmp_path / "art" / "jobs" / f"{run.run_id}.json").resolve()
    back = planned_run(read_spec(path), lambda data: smoke_index(smoke_cache))
    assert (back.run_id, back.cfg, back.labels, back.deps) == (run.run_id, run.cfg, run.labels, run.deps)


def test_a_job_refuses_a_spec_whose_config_or_data_changed(smoke_cache, tmp_path):  # noqa: F811
    spec = spec_for(_run(smoke_cache), smoke_cache)
    edited = dataclasses.replace(spec, config={**spec.config, "train": {**spec.config["train"], "lr": 0.1}})
    with pytest.raises(ConfigError, match=f"not the run id {spec.run_id}"):
        planned_run(edited, lambda data: smoke_index(smoke_cache))
    moved = dataclasses.replace(spec, dataset_fingerprint="0" * 16)
    with pytest.raises(ConfigError, match="planned on dataset 0000000000000000"):
        planned_run(moved, lambda data: smoke_index(smoke_cache))


def test_read_spec_names_the_file_and_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="run spec not found"):
        read_spec(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match=r"bad.json: not a run spec \(invalid JSON"):
        read_spec(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"version": 0}))
    with pytest.raises(ConfigError, match="old.json: not a version-1 run spec"):
        read_spec(tmp_path / "old.json")


def test_job_commands_are_absolute_and_use_torchrun_for_several_processes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_db_url("sqlite:///runs.db") == f"sqlite:///{tmp_path / 'runs.db'}"
    assert absolute_db_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    args = train_args(Path("jobs/a.json"), "sqlite:///runs.db", Path("art"), "cuda")
    assert args == ["train", "--run-spec", str(tmp_path / "jobs/a.json"), "--db", f"sqlite:///{tmp_path / 'runs.db'}",
                    "--artifacts", str(tmp_path / "art"), "--device", "cuda"]
    assert launch_command(1, ["train"], "py") == ["py", "-m", "kdcicam", "train"]
    assert launch_command(4, ["train"], "py") == ["py", "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc_per_node=4", "-m", "kdcicam", "train"]


# ------------------------------------------------------------------------------ submission

class FakeExecutors:
    """An ``executor_for`` recording each job's (command, dependency) as submitit would receive them;
    a job fails when its command says so."""

    def __init__(self) -> None:
        self.submitted: list[tuple[list[str], str | None]] = []

    def __call__(self, name: str, dependency: str | None):
        def submit(job: TrainJob):
            self.submitted.append((job.command, dependency))

            def result():
                if "fail" in job.command:
                    raise RuntimeError("job failed")

            return SimpleNamespace(job_id=str(100 + len(self.submitted)), result=result)

        return SimpleNamespace(submit=submit)


def _plan() -> list[PlannedRun]:
    mk = lambda rid, deps=(): PlannedRun(run_id=rid, cfg=SimpleNamespace(loss=SimpleNamespace(role="r")),  # noqa: E731
                                         dataset=None, deps=deps)
    return [mk("cls"), mk("loc"), mk("base"), mk("kd", ("cls", "loc")), mk("kd_cls", ("cls",))]


def test_slurm_students_wait_for_their_teachers_jobs_by_afterok():
    ex = FakeExecutors()
    items = submit_plan(_plan(), "slurm", ex, lambda run: [run.run_id])
    assert [cmd for cmd, _ in ex.submitted] == [["cls"], ["loc"], ["base"], ["kd"], ["kd_cls"]]
    deps = {cmd[0]: dep for cmd, dep in ex.submitted}
    assert deps == {"cls": None, "loc": None, "base": None, "kd": "afterok:101:102", "kd_cls": "afterok:101"}
    assert items[3].note == "after jobs 101, 102"


def test_a_run_finished_earlier_gets_no_job_and_its_students_no_dependency():
    ex = FakeExecutors()
    items = submit_plan(_plan(), "slurm", ex, lambda run: [run.run_id],
                        skip=lambda run: "reused" if run.run_id == "cls" else "")
    assert items[0].job is None and items[0].note == "reused"
    deps = {cmd[0]: dep for cmd, dep in ex.submitted}
    assert deps["kd"] == "afterok:101" and deps["kd_cls"] is None  # loc's job is 101 now


def test_without_scheduler_dependencies_a_student_of_a_failed_teacher_is_never_submitted():
    ex = FakeExecutors()
    plan = _plan()
    plan[0].run_id = "cls-fail"
    plan[3].deps = ("cls-fail", "loc")
    items = submit_plan(plan, "local", ex, lambda run: [run.run_id, "fail"] if "fail" in run.run_id else [run.run_id])
    assert [cmd[0] for cmd, _ in ex.submitted] == ["cls-fail", "loc", "base", "kd_cls"]
    assert items[3].job is None and items[3].note == "not submitted: teacher job 101 failed"


def test_slurm_job_scripts_ask_for_the_options_and_only_their_own_dependency(tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="the SLURM launcher's optional dependency (pip install -e '.[slurm]')")
    from kdcicam.execution.launch import SlurmOptions, make_executor

    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit only checks that srun exists
    (tmp_path / "srun").chmod(0o755)
    options = SlurmOptions(partition="gpu", time_min=90, gpus_per_job=2, cpus_per_task=8, log_dir=tmp_path / "logs")
    script = make_executor("slurm", options.log_dir, options, "kdcicam-kd", "afterok:11:12")._executor \
        ._make_submission_file_text("CMD", "uid").splitlines()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=2", "#SBATCH --nodes=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --dependency=afterok:11:12", "#SBATCH --job-name=kdcicam-kd",
                 "#SBATCH --kill-on-invalid-dep=yes", "#SBATCH --signal=USR2@90"):
        assert line in script, line
    plain = make_executor("slurm", options.log_dir, options, "kdcicam-base")._executor \
        ._make_submission_file_text("CMD", "uid")
    assert "--dependency" not in plain


def test_launcher_slurm_without_slurm_is_one_line_naming_the_alternative(tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="the SLURM launcher's optional dependency (pip install -e '.[slurm]')")
    from kdcicam.execution.launch import SlurmOptions, make_executor

    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    with pytest.raises(ConfigError, match="--launcher slurm: .*srun.*--launcher submitit-local"):
        make_executor("slurm", tmp_path, SlurmOptions())


@pytest.mark.parametrize("parent_sigint", [signal.default_int_handler, signal.SIG_IGN],
                         ids=["foreground", "background-job"])
def test_a_preempted_job_interrupts_its_child_and_requeues_the_same_command(tmp_path, parent_sigint):
    pytest.importorskip("submitit", reason="the SLURM launcher's optional dependency (pip install -e '.[slurm]')")
    marker = tmp_path / "got-sigint"
    # Python's own Ctrl-C (KeyboardInterrupt), as `kdcicam train` hears it; a child that inherits an
    # ignored SIGINT never raises it and is killed after the grace period (-9).
    # 'ready' is printed inside the try: a Ctrl-C sent as soon as it is read is caught, not a race
    code = (f"import sys, time, pathlib\n"
            f"try:\n    print('ready', flush=True)\n    time.sleep(60)\n"
            f"except KeyboardInterrupt:\n    pathlib.Path({str(marker)!r}).touch()\n    sys.exit(130)\n")
    job = TrainJob([sys.executable, "-c", code], grace_s=5)
    previous = signal.signal(signal.SIGINT, parent_sigint)  # a background shell job ignores SIGINT
    try:
        job.start(stdout=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert job._child.stdout.readline().strip() == "ready"
    again = job.checkpoint()
    assert job._child.returncode == 130 and marker.exists()  # the child got Ctrl-C and stopped on its own
    assert isinstance(again.function, TrainJob) and again.function.command == job.command
    assert again.function._child is None  # picklable: no process handle travels with the requeued job


def test_a_failing_child_fails_the_job_so_afterok_holds_its_students(tmp_path):
    with pytest.raises(RunError, match="exited with 3"):
        TrainJob([sys.executable, "-c", "raise SystemExit(3)"])()


# ------------------------------------------------------------------------------ submitit, end to end

def _rows(db: Path) -> dict[str, tuple]:
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {role: (rid, status, pid, started, finished) for rid, role, status, pid, started, finished in
                con.execute("SELECT id, role, status, pid, started_at, finished_at FROM runs")}
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow
def test_table3_through_submitit_local_with_a_preempted_student(smoke_cache, tmp_path):  # noqa: F811
    pytest.importorskip("submitit", reason="the SLURM launcher's optional dependency (pip install -e '.[slurm]')")
    db, art = tmp_path / "runs.db", tmp_path / "art"
    env = {**kdcicam_env(smoke_cache), "KDCICAM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kdcicam", "ablate", "table3", "--profile", "smoke", "--device", "cpu",
           "--set", "train.epochs=2", "--launcher", "submitit-local", "--gpus-per-job", "0", "--time", "30",
           "--db", f"sqlite:///{db}", "--artifacts", str(art)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Pre-empt the distilled student once its first epoch is checkpointed: USR2 to its submitit task
    # (the parent of the training process the store names), as SLURM signals a job before its time limit.
    deadline = time.monotonic() + 500
    while True:
        kd = _rows(db).get("distilled")
        if kd and kd[1] == "running" and (art / kd[0] / "last.pt").exists():
            break
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the distilled run never checkpointed"
        time.sleep(0.05)
    task = _parent_pid(kd[2])
    os.kill(task, signal.SIGUSR2)
    out, err = proc.communicate(timeout=500)
    assert proc.returncode == 0, out + err
    rows = _rows(db)  # by role (table3's base and +ConPool are both students: one of them is kept)
    con = sqlite3.connect(db)
    statuses = [s for (s,) in con.execute("SELECT status FROM runs")]
    epochs = con.execute("SELECT epoch, COUNT(*) FROM epoch_metrics WHERE run_id = ? AND split = 'train' "
                         "AND name = 'total' GROUP BY epoch", (rows["distilled"][0],)).fetchall()
    con.close()
    assert statuses == ["finished"] * 5  # base, +ConPool, both teachers, +KD
    assert rows["distilled"][3] >= max(rows["cls_teacher"][4], rows["loc_teacher"][4])  # claimed after both
    assert epochs == [(0, 1), (1, 1)]
    logs = "".join(p.read_text() for p in (art / "slurm").glob("*_0_log.*"))
    assert "Calling checkpoint method" in logs and "Requeued job" in logs
    assert f"run {rows['distilled'][0][:12]}: resuming" in logs  # the requeued job resumed, not restarted
