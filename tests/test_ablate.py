"""``kdcicam ablate`` end to end: every table and Figure 1(b) at the smoke profile, then again.

The first invocation trains every planned run (teachers once, shared by Tables 3, 4 and 5); the
second finds everything finished and trains nothing; --dry-run shows each run's status.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _runs import REPO, kdcicam_env, query, smoke_cache  # noqa: F401


def _ablate(args, cache, tmp_path, timeout=900):
    env = {**kdcicam_env(cache), "KDCICAM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "kdcicam", "ablate", *args, "--db", f"sqlite:///{tmp_path / 'runs.db'}",
                           "--artifacts", str(tmp_path / "runs")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=timeout)
    return proc


@pytest.mark.slow
def test_ablate_all_smoke_then_again_trains_nothing(smoke_cache, tmp_path):  # noqa: F811
    first = _ablate(["all", "--profile", "smoke", "--json"], smoke_cache, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = json.loads(first.stdout)["runs"]
    assert runs and all(r["status"] == "finished" for r in runs)
    roles = [r["role"] for r in runs]
    # shared by every table; under reference, Table 5's Top-1 Loc teacher is the authors' second run
    assert roles.count("cls_teacher") == 1 and roles.count("loc_teacher") == 2
    assert not any(r["reused"] for r in runs)
    labels = {label for r in runs for label in r["labels"]}
    for needed in ("table3/base@0", "table4/student@0", "table5/loc_teacher_by_gt_known@0", "figure1b/ci-cam@0"):
        assert needed in labels
    # Table 3's +ConPool and Table 4's Stu are one run
    assert any({"table3/conpool@0", "table4/student@0"} <= set(r["labels"]) for r in runs)
    # the smoke profile sets eval.resize_grid: every run stores its test-resize audit (S in the grid)
    rows = query(tmp_path / "runs.db", "select run_id, name, value from final_metrics where name like 'resize_%'")
    chosen = {(rid, name): value for rid, name, value in rows}
    for r in runs:
        for name in ("resize_val_S", "resize_oracle_S"):
            assert chosen.get((r["run_id"], name)) in (32.0, 36.0, 49.0), (r["run_id"], name)

    second = _ablate(["all", "--profile", "smoke", "--json"], smoke_cache, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)["runs"]
    assert [r["run_id"] for r in again] == [r["run_id"] for r in runs]
    assert all(r["reused"] for r in again), "a finished run was trained again"

    plan = _ablate(["table3", "--profile", "smoke", "--dry-run", "--json"], smoke_cache, tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    statuses = {r["status"] for r in json.loads(plan.stdout)["runs"]}
    assert statuses == {"finished (reuse)"}
    assert json.loads(plan.stdout)["estimate"]["total_seconds"] == 0
    # a second seed: new runs, each estimated from the finished runs of its role (this store's own history)
    more = _ablate(["table3", "--profile", "smoke", "--dry-run", "--json", "--seeds", "2", "--jobs", "2"],
                   smoke_cache, tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    plan2 = json.loads(more.stdout)
    new = [r for r in plan2["runs"] if r["status"] == "new"]
    assert len(new) == 5 and all(r["estimated_seconds"] > 0 for r in new)
    est = plan2["estimate"]
    assert est["jobs"] == 2 and est["not_estimated_roles"] == []
    assert 0 < est["wall_seconds"] < est["total_seconds"] == pytest.approx(sum(r["estimated_seconds"] for r in new))


@pytest.mark.slow
def test_more_seeds_train_only_the_new_seeds_runs(smoke_cache, tmp_path):  # noqa: F811
    args = ["table3", "--profile", "smoke", "--json", "--set", "train.epochs=1"]
    first = _ablate(args, smoke_cache, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    seed0 = {r["run_id"] for r in json.loads(first.stdout)["runs"]}
    assert len(seed0) == 5
    finished = dict(query(tmp_path / "runs.db", "select id, finished_at from runs"))
    second = _ablate([*args, "--seeds", "2"], smoke_cache, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    runs = json.loads(second.stdout)["runs"]
    assert all(r["status"] == "finished" for r in runs)
    trained = [r for r in runs if not r["reused"]]
    # seed 0's five runs are reused as they were; only seed 1's five (teachers included) train
    assert {r["run_id"] for r in runs if r["reused"]} == seed0
    seeds = dict(query(tmp_path / "runs.db", "select id, seed from runs"))
    assert len(trained) == 5 and {seeds[r["run_id"]] for r in trained} == {1}
    after = dict(query(tmp_path / "runs.db", "select id, finished_at from runs"))
    assert {run_id: after[run_id] for run_id in seed0} == finished and len(after) == 10


def test_worker_args_drop_jobs_and_output_flags():
    from kdcicam.cli.workers import worker_args

    argv = ["/x/kdcicam", "ablate", "table3", "--jobs", "3", "--json", "--db", "sqlite:///r.db", "--jobs=2",
            "--set", "train.epochs=1"]
    assert worker_args(argv) == ["ablate", "table3", "--db", "sqlite:///r.db", "--set", "train.epochs=1", "--jobs", "1",
                                 "--quiet"]
    assert worker_args(["python", "-m", "kdcicam", "ablate", "all", "--quiet"]) == ["ablate", "all", "--jobs", "1",
                                                                                     "--quiet"]


def test_jobs_is_a_number_or_auto():
    from kdcicam.cli.workers import parse_jobs
    from kdcicam.core.errors import ConfigError

    assert parse_jobs("3") == 3 and parse_jobs("auto") is None and parse_jobs(" AUTO ") is None
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ConfigError, match="expected a whole number >= 1, or auto"):
            parse_jobs(bad)


@pytest.mark.parametrize(("device", "cores", "startable", "expected"), [
    ("cpu", 2, 4, 2),     # Table 3 from nothing on 2 cores: two teachers and two students can start
    ("cpu", 16, 4, 4),    # no more processes than runs that can start
    ("cpu", 16, 30, 4),   # at most MAX_AUTO_JOBS
    ("cpu", 2, 1, 1),     # one run to train (or a chain): all cores to it
    ("cpu", 2, 0, 1),     # nothing to train
    ("cpu", 1, 4, 1),
    ("cuda", 16, 4, 1),   # runs on one accelerator are not split
])
def test_auto_jobs(device, cores, startable, expected):
    from kdcicam.cli.workers import MAX_AUTO_JOBS, auto_jobs

    assert MAX_AUTO_JOBS == 4
    assert auto_jobs(device_type=device, cores=cores, startable=startable) == expected


def test_jobs_auto_is_the_default_and_counts_the_runs_that_can_start(smoke_cache, tmp_path):  # noqa: F811
    from kdcicam.cli._common import available_cores

    env = {**kdcicam_env(smoke_cache), "KDCICAM_THREADS": "1"}
    env.pop("KDCICAM_JOBS")  # the tests' one-process default
    proc = subprocess.run([sys.executable, "-m", "kdcicam", "ablate", "table3", "--profile", "smoke", "--dry-run",
                           "--json", "--db", f"sqlite:///{tmp_path / 'runs.db'}"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # from nothing: both teachers, Base and +ConPool can start; the distilled student waits for the teachers
    assert json.loads(proc.stdout)["estimate"]["jobs"] == min(available_cores(), 4)
    bad = subprocess.run([sys.executable, "-m", "kdcicam", "ablate", "table3", "--jobs", "none"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "--jobs 'none': expected a whole number >= 1, or auto" in bad.stderr


@pytest.mark.slow
def test_ablate_jobs_2_shares_the_plan_between_two_processes(smoke_cache, tmp_path):  # noqa: F811
    # 15 runs of a few seconds each: the worker (started ~1 s later, then Python start-up) surely finds work
    proc = _ablate(["table3", "--profile", "smoke", "--jobs", "2", "--seeds", "3", "--json", "--set",
                    "train.epochs=2"], smoke_cache, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout)["runs"]
    assert runs and all(r["status"] == "finished" and not r["reused"] for r in runs)
    # both processes trained: the runs were claimed by two different pids, each at most once
    pids = {pid for (pid,) in query(tmp_path / "runs.db", "select pid from runs")}
    assert len(pids) == 2, pids
    assert "Traceback" not in (tmp_path / "runs" / "workers" / "worker-1.log").read_text()


@pytest.mark.slow
def test_artifacts_folder_is_stored_relative_to_the_store_and_follows_a_resumed_run(smoke_cache, tmp_path):  # noqa: F811
    # A relative --artifacts is stored relative to the store's folder, not to the working directory (a
    # distilled student reads its teachers' checkpoints from the stored folder, whatever its own working
    # directory; the project folder can be moved); a run resumed under another --artifacts
    # records the folder it now writes to (it used to keep the old one: the student then found no file).
    env = {**kdcicam_env(smoke_cache), "KDCICAM_THREADS": "1"}
    db = tmp_path / "runs.db"

    def train(artifacts: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "kdcicam", "train", "--profile", "smoke", "--no-context-pool",
                               "--db", f"sqlite:///{db}", "--artifacts", artifacts, "--json"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout)

    run_id = train("first")["run_id"]
    [(stored,)] = query(db, "select artifacts_dir from runs where id = ?", run_id)
    assert stored == f"first/{run_id}"
    # the folder moves and the run must be trained again (failed): it resumes from the moved checkpoint
    (tmp_path / "first").rename(tmp_path / "second")
    con = sqlite3.connect(db)
    con.execute("update runs set status = 'failed' where id = ?", (run_id,))
    con.commit()
    con.close()
    assert train("second")["run_id"] == run_id
    [(stored, status)] = query(db, "select artifacts_dir, status from runs where id = ?", run_id)
    assert status == "finished" and stored == f"second/{run_id}"
    assert (tmp_path / "second" / run_id / "last.pt").exists()


def test_interrupting_ablate_stops_its_workers(tmp_path, monkeypatch):
    # the parent forwards an interrupt (Ctrl-C or SIGTERM) to its workers as SIGTERM: a worker of a
    # background job ignores SIGINT, so that one would otherwise train the rest of the plan on its own
    import kdcicam.cli.workers as workers_mod

    real_popen = workers_mod.subprocess.Popen
    monkeypatch.setattr(workers_mod, "WORKER_STAGGER_S", 0.0)
    monkeypatch.setattr(workers_mod.subprocess, "Popen", lambda argv, **kw: real_popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], **kw))
    workers = workers_mod.start_workers(1, ["ablate", "table3"], tmp_path)
    deadline = time.monotonic() + 10
    while not workers.started and time.monotonic() < deadline:
        time.sleep(0.05)
    start = time.monotonic()
    workers.interrupt()
    errors = workers.wait()
    assert time.monotonic() - start < 10  # not the 60 s the worker would have run
    assert len(errors) == 1 and "worker 1 exited with status -15" in errors[0]


def test_several_tables_plan_as_one_and_a_bad_name_creates_no_store(smoke_cache, tmp_path, capsys):  # noqa: F811
    from kdcicam.cli import main

    both = _ablate(["table3", "context-sweep", "--profile", "smoke", "--dry-run", "--json"], smoke_cache, tmp_path)
    assert both.returncode == 0, both.stderr[-3000:]
    runs = json.loads(both.stdout)["runs"]
    # Table 3's 5 runs and the sweep's 8 (Base and +ConPool at 4 correlations) share Base and +ConPool at 0.9
    assert len(runs) == 5 + 8 - 2
    labels = {label.split("@")[0] for r in runs for label in r["cells"]}
    assert {"table3/conpool+kd", "context-sweep/base"} <= labels
    with pytest.raises(SystemExit) as bad:
        main(["ablate", "table3", "table9", "--db", str(tmp_path / "new.db")])
    assert bad.value.code == 2 and "unknown table 'table9'" in capsys.readouterr().err
    assert not (tmp_path / "new.db").exists()


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the worker processes through /proc")
def test_sigterm_to_ablate_stops_its_workers_and_both_save_their_position(smoke_cache, tmp_path):  # noqa: F811
    # the parent's run_plan turns the signal into an exit: the workers must be stopped on that path too,
    # not left to train the rest of the plan while the parent waits for them
    env = {**kdcicam_env(smoke_cache), "KDCICAM_THREADS": "1"}
    db = tmp_path / "runs.db"
    proc = subprocess.Popen([sys.executable, "-m", "kdcicam", "ablate", "table3", "--profile", "smoke", "--jobs", "2",
                             "--set", "train.epochs=200", "--quiet", "--db", f"sqlite:///{db}", "--artifacts",
                             str(tmp_path / "runs")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(query(db, "select id from runs where status = 'running'")) < 2:
        time.sleep(0.5)
    assert len(query(db, "select id from runs where status = 'running'")) == 2, "the worker never started a run"
    assert len(_processes_naming(str(db))) == 2
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=120)
        left = _processes_naming(str(db))
    finally:  # a failing run of this test leaves no trainer behind
        for pid in _processes_naming(str(db)):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert left == []  # the worker is gone too
    failed = query(db, "select message from runs where status = 'failed'")
    assert len(failed) == 2 and all("rerun the same command to resume" in m for (m,) in failed)
