"""Runs outside this process: a run as a file (:class:`RunSpec`), run by ``kdcicam train --run-spec FILE``
in a child process (``ablate --gpus N``: torchrun on this machine) or in a SLURM job (``ablate
--launcher slurm``, through submitit).

A spec holds the run's resolved config (teacher run ids included), its id and dataset fingerprint,
its table labels, and where the synthetic benchmark is cached: the job re-resolves nothing, and
refuses to start when the data it finds is not the data the plan was made for. Every file a job
writes is under ``--artifacts`` (``jobs/<run_id>.json`` specs, ``<run_id>/`` checkpoints and
galleries, ``slurm/`` logs unless ``--slurm-log-dir`` says otherwise); the store is ``--db``.

SLURM jobs are submitted in plan order, each student after the teachers it learns from, as
``--dependency=afterok:<teacher jobs>`` (with ``--kill-on-invalid-dep=yes``: a student whose teacher
failed is cancelled). Executors without dependencies (submitit's local executor, for trying the path
on one machine) get the same order by submitting a dependant only once its teachers' jobs succeeded.

A job is pre-empted or reaches its time limit: SLURM sends USR2, submitit calls
:meth:`TrainJob.checkpoint`, which sends Ctrl-C (SIGINT) to the training child (it saves its position
at the next step boundary) and returns the job to requeue; the requeued job claims the run and resumes
from that checkpoint. A job killed outright (SIGKILL, a dead node) leaves the run ``running``; the next
attempt takes it over once its heartbeat is stale (docs/postgres.md) and resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdcicam.core.errors import ConfigError, RunError

if TYPE_CHECKING:
    from kdcicam.data.base import DatasetIndex
    from kdcicam.execution.plan import PlannedRun

# A job's process unpickles TrainJob from this module: its imports stay light (no torch) so a job
# starts in a fraction of a second; the training child imports what it needs.

SPEC_VERSION = 1
JOBS_DIR = "jobs"  # under --artifacts: one spec per run
SLURM_LOG_DIR = "slurm"  # under --artifacts unless --slurm-log-dir
INTERRUPT_GRACE_S = 60.0  # a pre-empted job waits this long for the trainer to save its position


@dataclass(frozen=True)
class RunSpec:
    """One planned run as plain data: what ``kdcicam train --run-spec`` needs to run exactly it."""

    run_id: str
    config: dict[str, Any]  # the resolved RunConfig (to_dict), teacher run ids included
    dataset_fingerprint: str  # the data the plan was made for
    data_cache: str  # absolute folder of the synthetic benchmark's cache (unused for real data)
    labels: list[list[Any]] = field(default_factory=list)  # [table, cell, seed, grid point] per cell
    deps: list[str] = field(default_factory=list)  # teacher run ids
    version: int = SPEC_VERSION


def spec_for(run: PlannedRun, data_cache: Path) -> RunSpec:
    """The spec of a planned run."""
    from kdcicam.core.config import to_dict

    return RunSpec(run_id=run.run_id, config=to_dict(run.cfg), dataset_fingerprint=run.dataset.fingerprint,
                   data_cache=str(Path(data_cache).resolve()), labels=[list(label) for label in run.labels],
                   deps=list(run.deps))


def spec_path(artifacts: Path, run_id: str) -> Path:
    return Path(artifacts).resolve() / JOBS_DIR / f"{run_id}.json"


def write_spec(spec: RunSpec, artifacts: Path) -> Path:
    """Write ``spec`` atomically as ``<artifacts>/jobs/<run_id>.json``; returns the absolute path."""
    from kdcicam.training.checkpoint import atomic_write_bytes

    path = spec_path(artifacts, spec.run_id)
    atomic_write_bytes(path, json.dumps(asdict(spec), indent=1, sort_keys=True).encode())
    return path


def read_spec(path: Path) -> RunSpec:
    """Read a spec file.

    Raises:
        ConfigError: missing, not JSON, or not a spec of this version (naming the file).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: run spec not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a run spec (invalid JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("version") != SPEC_VERSION:
        raise ConfigError(f"{path}: not a version-{SPEC_VERSION} run spec (written by another kdcicam?)")
    try:
        spec = RunSpec(**data)
    except TypeError as exc:
        raise ConfigError(f"{path}: not a run spec ({exc})") from None
    _check_spec_shape(spec, path)
    return spec


def _check_spec_shape(spec: RunSpec, path: Path) -> None:
    """Refuse fields of the wrong type: a config that is no table, labels that are not [table, cell, seed, point].

    Raises:
        ConfigError: naming the file and the field.
    """
    for name, value, kind in (("run_id", spec.run_id, str), ("config", spec.config, dict),
                              ("dataset_fingerprint", spec.dataset_fingerprint, str),
                              ("data_cache", spec.data_cache, str), ("labels", spec.labels, list),
                              ("deps", spec.deps, list)):
        if not isinstance(value, kind):
            raise ConfigError(f"{path}: {name} = {value!r:.60}: expected a {kind.__name__}")
    for i, label in enumerate(spec.labels):
        if not (isinstance(label, list) and len(label) == 4 and all(isinstance(v, str) for v in (label[0], label[1]))
                and isinstance(label[2], int) and not isinstance(label[2], bool)):
            raise ConfigError(f"{path}: labels[{i}] = {label!r:.60}: expected [table, cell, seed, grid point]")
    if not all(isinstance(dep, str) for dep in spec.deps):
        raise ConfigError(f"{path}: deps: expected a list of run ids")


def planned_run(spec: RunSpec, open_data: Callable[[Any], DatasetIndex], where: str = "run spec") -> PlannedRun:
    """The PlannedRun a spec describes, on the data ``open_data(cfg.data)`` opens.

    Raises:
        ConfigError: the config does not parse, or the data (hence the run id) is not the one planned.
    """
    from kdcicam.core.config import RunConfig, from_dict
    from kdcicam.execution.plan import PlannedRun, run_id_for

    cfg = from_dict(RunConfig, spec.config, where=f"{where} config").validate()
    index = open_data(cfg.data)
    if index.fingerprint != spec.dataset_fingerprint:
        raise ConfigError(f"{where}: the run was planned on dataset {spec.dataset_fingerprint}, but "
                          f"{cfg.data.root or spec.data_cache} now holds {index.fingerprint}")
    if run_id_for(cfg, index.fingerprint) != spec.run_id:
        raise ConfigError(f"{where}: its config hashes to {run_id_for(cfg, index.fingerprint)}, not the run id "
                          f"{spec.run_id} it names (edited by hand?)")
    labels = [(str(t), str(c), int(s), str(p)) for t, c, s, p in spec.labels]
    return PlannedRun(run_id=spec.run_id, cfg=cfg, dataset=index, deps=tuple(spec.deps), labels=labels)


# ------------------------------------------------------------------------------ one run in a child

def absolute_db_url(url: str) -> str:
    """``url`` with a relative SQLite file made absolute (a job may start in another folder)."""
    from kdcicam.store import sqlite_file

    path = sqlite_file(url)
    if path is None or Path(path).is_absolute():
        return url
    return f"sqlite:///{Path(path).resolve()}"


def train_args(spec_file: Path, db_url: str, artifacts: Path, device: str, quiet: bool = False) -> list[str]:
    """``kdcicam`` arguments that run one spec against the store and artifacts folder (all absolute)."""
    return ["train", "--run-spec", str(Path(spec_file).resolve()), "--db", absolute_db_url(db_url),
            "--artifacts", str(Path(artifacts).resolve()), "--device", device] + (["--quiet"] if quiet else [])


def execute_in_child(nproc: int, data_cache: Path, device: str,
                     python: str = sys.executable) -> Callable[[PlannedRun, Any], Any]:
    """An ``execute_one`` for :func:`kdcicam.execution.runner.execute_plan`: each run in a child process, on
    ``nproc`` processes (torchrun) when ``nproc > 1``; the outcome is read back from the store."""
    from kdcicam.execution.context import RunOutcome
    from kdcicam.training.distributed import launch_command

    def run_one(run: PlannedRun, ctx: Any) -> RunOutcome:
        spec_file = write_spec(spec_for(run, data_cache), ctx.artifacts_root)
        cmd = launch_command(nproc, train_args(spec_file, ctx.store.url, ctx.artifacts_root, device, quiet=True),
                             python)
        child = subprocess.Popen(cmd)
        try:
            code = child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the child too: let it save its position and stop
            code = child.wait()
        if code in (-signal.SIGINT, 130):
            raise KeyboardInterrupt(f"run {run.run_id[:12]} (its position is saved; rerun to resume)")
        try:
            info = ctx.store.get_run(run.run_id)
        except RunError:
            info = None
        if info is not None and info.status == "finished":
            return RunOutcome(run.run_id, "finished")
        why = info.message if info is not None and info.message else f"{' '.join(cmd[1:3])} exited with {code}"
        return RunOutcome(run.run_id, "failed", message=why)

    return run_one


# ------------------------------------------------------------------------------ SLURM (submitit)

class TrainJob:
    """The body of one submitted job: run ``command`` (``kdcicam train --run-spec ...``) as a child.

    Checkpointable the way submitit expects (a ``checkpoint`` method returning what to requeue):
    on pre-emption or time-out the child is asked to stop (SIGINT: it saves its position at the next
    step boundary) and the same command is requeued, to resume from there.
    """

    def __init__(self, command: Sequence[str], grace_s: float = INTERRUPT_GRACE_S) -> None:
        self.command = list(command)
        self.grace_s = grace_s
        self._child: subprocess.Popen | None = None

    def start(self, **popen: Any) -> subprocess.Popen:
        """Start the command as this job's child, SIGINT at its default there (see :func:`_hear_sigint`)."""
        self._child = subprocess.Popen(self.command, preexec_fn=_hear_sigint, **popen)
        return self._child

    def __call__(self) -> int:
        """Run the command; raises RunError unless it exits 0 (so SLURM's ``afterok`` holds back dependants)."""
        code = self.start().wait()
        if code != 0:
            raise RunError(f"{' '.join(self.command[:6])} ... exited with {code}")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Stop the child at its next step (position saved) and return the job to requeue."""
        from submitit.helpers import DelayedSubmission

        if self._child is not None:
            _stop(self._child, self.grace_s)
        return DelayedSubmission(TrainJob(self.command, self.grace_s))

    def __getstate__(self) -> dict[str, Any]:
        return {"command": self.command, "grace_s": self.grace_s, "_child": None}


def _hear_sigint() -> None:
    """In the child, before it runs the command: SIGINT back to its default disposition.

    A process started from a background shell job ignores SIGINT, and so would every child it starts:
    the child would not hear the Ctrl-C :func:`_stop` sends on pre-emption and would be killed after the
    grace period, losing the steps since its last checkpoint.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(child: subprocess.Popen, grace_s: float) -> None:
    """SIGINT ``child`` and reap it (SIGKILL after ``grace_s``), from inside a signal handler.

    The handler interrupts ``child.wait()``, which holds the Popen's wait lock: calling ``wait`` again
    would deadlock, so the child is reaped with ``os.waitpid`` directly.
    """
    try:
        os.kill(child.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    try:
        while True:
            pid, status = os.waitpid(child.pid, 0 if time.monotonic() > deadline + 5 else os.WNOHANG)
            if pid:
                child.returncode = os.waitstatus_to_exitcode(status)
                return
            if time.monotonic() > deadline:
                os.kill(child.pid, signal.SIGKILL)  # the next waitpid blocks until it is gone
            time.sleep(0.1)
    except ChildProcessError:  # reaped already
        return


@dataclass(frozen=True)
class SlurmOptions:
    """What every submitted job asks the scheduler for."""

    partition: str | None = None  # --partition
    time_min: int = 24 * 60  # --time, minutes
    gpus_per_job: int = 1  # GPUs (= training processes) per job; one node per job
    cpus_per_task: int | None = None  # --cpus-per-task
    log_dir: Path | None = None  # submitit's folder (default <artifacts>/slurm)


def make_executor(cluster: str, folder: Path, options: SlurmOptions, name: str = "kdcicam",
                  dependency: str | None = None) -> Any:
    """A submitit executor for one job on ``cluster`` ("slurm", or "local": the jobs as local processes).

    A new executor per job: a dependency set on a shared one would carry over to the next job.

    Args:
        dependency: SLURM ``--dependency`` (e.g. ``afterok:12:13``), or None.
    """
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher slurm needs submitit: pip install -e '.[slurm]'") from None
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    except RuntimeError as exc:  # e.g. "Could not detect srun": not on a SLURM node
        raise ConfigError(f"--launcher slurm: {exc} (submit from a SLURM login node, or try the path here "
                          "with --launcher submitit-local)") from None
    params: dict[str, Any] = dict(name=name, timeout_min=options.time_min, nodes=1, tasks_per_node=1,
                                  slurm_additional_parameters={"kill-on-invalid-dep": "yes"})
    if dependency:
        params["slurm_dependency"] = dependency
    if options.gpus_per_job > 0:
        params["gpus_per_node"] = options.gpus_per_job
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.cpus_per_task:
        params["cpus_per_task"] = options.cpus_per_task
    executor.update_parameters(**params)
    return executor


@dataclass
class Submitted:
    run: PlannedRun
    job: Any = None  # the submitit job (None: not submitted)
    note: str = ""  # why not submitted, or what it waits for


def submit_plan(runs: Sequence[PlannedRun], cluster: str, executor_for: Callable[[str, str | None], Any],
                command_for: Callable[[PlannedRun], list[str]], *, skip: Callable[[PlannedRun], str] = lambda run: "",
                on_submit: Callable[[Submitted], None] | None = None) -> list[Submitted]:
    """Submit one job per run, in plan order (teachers first), each after the jobs of its teachers.

    Args:
        runs: the plan's runs, teachers before the students that learn from them.
        cluster: how a dependency is kept: "slurm" holds the job (``afterok``); otherwise this call
            waits for the teachers' jobs and submits the student only if they succeeded.
        executor_for: (job name, dependency or None) -> a submitit executor (:func:`make_executor`).
        command_for: the command a run's job runs (``kdcicam train --run-spec ...``).
        skip: a reason not to submit a run (e.g. it finished earlier), or "".
        on_submit: called for each run once it is submitted or skipped.

    Returns:
        One :class:`Submitted` per run, in plan order.
    """
    by_id: dict[str, Submitted] = {}
    out = []
    holds_jobs = cluster == "slurm"
    for run in runs:
        item = Submitted(run)
        reason = skip(run)
        teacher_jobs = [by_id[d].job for d in run.deps if d in by_id and by_id[d].job is not None]
        failed = [d for d in run.deps if d in by_id and by_id[d].note.startswith("not submitted")]
        if reason:
            item.note = reason
        elif failed:
            item.note = f"not submitted: teacher run {failed[0][:12]} was not trained"
        else:
            if not holds_jobs:
                failed = [j.job_id for j in teacher_jobs if not _succeeded(j)]
            if failed:
                item.note = f"not submitted: teacher job {failed[0]} failed"
            else:
                ids = ":".join(str(j.job_id) for j in teacher_jobs)
                executor = executor_for(f"kdcicam-{run.role}-{run.run_id[:8]}", f"afterok:{ids}" if ids else None)
                item.job = executor.submit(TrainJob(command_for(run)))
                item.note = f"after jobs {ids.replace(':', ', ')}" if ids else ""
        by_id[run.run_id] = item
        out.append(item)
        if on_submit is not None:
            on_submit(item)
    return out


def _succeeded(job: Any) -> bool:
    """Wait for a job and say whether it succeeded (the ``afterok`` of an executor without dependencies)."""
    try:
        job.result()
    except Exception:  # noqa: BLE001 - submitit re-raises the job's failure, whatever it was
        return False
    return True


__all__ = ["RunSpec", "SlurmOptions", "Submitted", "TrainJob", "absolute_db_url", "execute_in_child",
           "make_executor", "planned_run", "read_spec", "spec_for", "submit_plan", "train_args", "write_spec"]
