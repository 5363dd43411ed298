"""``kdcicam ablate``: plan the runs of registry tables, then run them here (one or several worker
processes), submit them to SLURM / submitit, or show the plan."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from kdcicam.cli._common import (
    DB_HELP,
    REGISTRY_HELP,
    SET_HELP,
    available_cores,
    cache_dir,
    configure_threads,
    echo_json,
    parse_sets,
)
from kdcicam.cli.run_setup import (
    HEADERS_HELP,
    LAUNCHERS,
    check_finished_teachers,
    choice,
    outcome_rows,
    preflight,
    prepare,
    run_plan,
)
from kdcicam.cli.workers import auto_jobs, parse_jobs, split_threads, start_workers, worker_args
from kdcicam.core.config import BACKBONES, DATASETS
from kdcicam.core.errors import ConfigError


def ablate(
    table: list[str] | None = typer.Argument(
        None, help="table3 | table4 | table5 | figure1b | a sweep (context-sweep) | all (the paper's tables and "
                   "figure); several plan as one (see --list)."),
    backbone: str = typer.Option("vgg16", help=f"{', '.join(BACKBONES)}."),
    dataset: str = typer.Option("synthetic", help=f"{', '.join(DATASETS)}."),
    data: Path | None = typer.Option(None, help="Dataset folder (real data); synthetic is generated on first use."),
    profile: str = typer.Option("quick", help="smoke | quick | medium | paper (see ablations/profiles.toml)."),
    variant: str = typer.Option("reference", help="paper (printed equations) | reference (authors' code)."),
    seeds: int = typer.Option(1, min=1, help="Repeat every cell over this many seeds (teachers per seed)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and stop."),
    list_: bool = typer.Option(False, "--list", help="List every table and cell with its scope."),
    weights: str | None = typer.Option(None, help="ImageNet checkpoint file, or 'imagenet' for the hub cache."),
    set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    registry: Path | None = typer.Option(None, help=REGISTRY_HELP),
    db: str | None = typer.Option(None, help=DB_HELP),
    artifacts: Path = typer.Option(Path("runs"), help="Where checkpoints and records go (one folder per run)."),
    force: bool = typer.Option(False, "--force", help="Run a profile even when its requirements are missing."),
    headers: bool = typer.Option(True, "--headers/--no-headers", help=HEADERS_HELP),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan / results as JSON."),
    gpus: int = typer.Option(1, min=1, help="Local launcher: train each run on this many processes of this "
                             "machine (torchrun, one GPU each; train.batch_size stays the global batch)."),
    jobs: str = typer.Option("auto", envvar="KDCICAM_JOBS", help="Local launcher: train up to N independent "
                             "runs of the plan at once (N processes sharing the store and one device; on CPU the "
                             "cores are split between them unless KDCICAM_THREADS is set). auto: on CPU one run "
                             "per core (at most 4, at most the runs that can start), on a GPU 1."),
    launcher: str = typer.Option("local", help="local (runs here, one after another) | slurm (one SLURM job per "
                                 "run, through submitit) | submitit-local (the slurm path as local processes)."),
    partition: str | None = typer.Option(None, help="SLURM partition of every job."),
    time_min: int = typer.Option(24 * 60, "--time", min=1, help="SLURM time limit per job, in minutes "
                                 "(a job that reaches it is requeued and resumes)."),
    gpus_per_job: int = typer.Option(1, min=0, help="SLURM: GPUs per job (= training processes, torchrun)."),
    cpus_per_job: int | None = typer.Option(None, min=1, help="SLURM: --cpus-per-task of every job."),
    slurm_log_dir: Path | None = typer.Option(None, help="submitit's folder (job scripts, logs) "
                                              "(default: ARTIFACTS/slurm)."),
    pack: int = typer.Option(1, min=1, help="Local launcher: train up to N runs that differ only in the seed "
                             "and the context pool in one batched step (each stored as its own run)."),
    retrain_missing: bool = typer.Option(False, "--retrain-missing", help="Local launcher: a finished teacher "
                                         "whose checkpoint is gone and that a student still to train needs is "
                                         "trained again in place, and its new final numbers are compared with "
                                         "the stored ones (the earlier record stays in its run folder)."),
) -> None:
    """Plan, train (or reuse) and evaluate every run an ablation table needs, and store the results."""
    from kdcicam.execution.plan import make_plan
    from kdcicam.registry.ablations import load_registry

    if list_:
        _list_tables(load_registry(registry), as_json)
        return
    if not table:
        raise ConfigError("name a table (table3, table4, table5, figure1b, context-sweep or all), or use --list")
    choice(launcher, LAUNCHERS, "--launcher")
    if launcher != "local" and pack != 1:
        raise ConfigError("--pack is for --launcher local")
    if launcher != "local" and retrain_missing:
        raise ConfigError("--retrain-missing is for --launcher local")
    if launcher != "local" and gpus != 1:
        raise ConfigError("--gpus is for --launcher local; with SLURM give --gpus-per-job")
    requested_jobs = parse_jobs(jobs)  # None: auto
    one_process_per_run = gpus == 1 and launcher == "local"
    if (requested_jobs or 1) > 1 and not one_process_per_run:
        raise ConfigError("--jobs N is for --launcher local with one process per run (not with --gpus)")
    tables = _table_keys(load_registry(registry), table)  # a bad name is refused before any store is opened
    sets = parse_sets(set_)
    reg, scope, dev, store, open_data, sets, _ = prepare(
        profile=profile, dataset=dataset, data=data, backbone=backbone, variant=variant, registry_dir=registry,
        db=db, artifacts=artifacts, device=device, weights=weights, force=force, sets=sets, read_headers=headers,
        quiet=quiet or as_json)
    # "all": the paper's artefacts (tables and figure); a sweep (a study of the benchmark) is run by name
    plan = make_plan(reg, tables, scope=scope, profile=profile, variant=variant, seeds=list(range(seeds)),
                     open_data=open_data, cli_overrides=sets)
    n_jobs = requested_jobs or (auto_jobs(device_type=dev.type, cores=available_cores(),
                                          startable=_startable_runs(plan, store)) if one_process_per_run else 1)
    if n_jobs > 1:  # each process gets its share of the cores (the plan and the data were made on all of them)
        split_threads(n_jobs)
        configure_threads()
    if dry_run:
        from kdcicam.cli.plan_view import print_plan
        from kdcicam.core.runtime import device_name

        print_plan(plan, store, as_json, jobs=n_jobs, device=device_name(dev))
        return
    preflight(r.cfg for r in plan.runs)
    if launcher != "local":
        _submit(plan, store, artifacts, dev, launcher=launcher, device=device, as_json=as_json,
                options=_slurm_options(partition, time_min, gpus_per_job, cpus_per_job, slurm_log_dir, artifacts))
        return
    from kdcicam.core.runtime import set_seed

    set_seed(0)
    execute_one = None
    if pack > 1:
        if gpus > 1:
            raise ConfigError("--pack N trains on one process: not with --gpus")
        from kdcicam.execution.packs import pack_executor

        execute_one = pack_executor(plan.runs, pack)
    if gpus > 1:
        from kdcicam.execution.launch import execute_in_child

        execute_one = execute_in_child(gpus, cache_dir(), device)
    from kdcicam.execution.teacher_restore import check_retrained, missing_teachers, refuse_missing, reopen_teachers
    from kdcicam.store import utc_now

    began = utc_now()
    missing = missing_teachers(plan.runs, store)
    if not retrain_missing:
        refuse_missing(missing)
    earlier = reopen_teachers(store, missing, Path(artifacts))
    check_finished_teachers(plan.runs, store)
    _register_plan(plan, store, artifacts, dev)
    workers = start_workers(n_jobs - 1, worker_args(sys.argv), Path(artifacts))
    try:
        outcomes = run_plan(plan.runs, (store, artifacts, dev), quiet=quiet or as_json, execute_one=execute_one)
    except BaseException:  # Ctrl-C or SIGTERM (run_plan reports it and exits), or a crash: the workers stop
        if workers is not None:  # too, each saving its position, then we go
            workers.interrupt()
        raise
    finally:
        worker_errors = workers.wait() if workers is not None else []
    if workers is not None:  # a run a worker trained is new work, not a reuse
        outcomes = [dataclasses.replace(o, reused=False) if o.reused and _finished_since(store, o.run_id, began) else o
                    for o in outcomes]
    rows = outcome_rows(store, plan.runs, outcomes)
    for message in worker_errors:
        typer.echo(message, err=True)
    failed = [r for r in rows if r["status"] != "finished"]
    checks = check_retrained(store, earlier, Path(artifacts))
    if as_json:
        echo_json({"tables": tables, "scope": scope.__dict__, "profile": profile, "variant": variant, "runs": rows,
                   "retrained_teachers": [c.to_dict() for c in checks]})
    else:
        for check in checks:
            typer.echo(check.describe())
        trained = sum(1 for r in rows if r["status"] == "finished" and not r["reused"])
        reused = sum(1 for r in rows if r["reused"])
        typer.echo(f"{', '.join(tables)} ({scope.dataset}/{scope.backbone}, profile {profile}, variant {variant}): "
                   f"{trained} trained, {reused} reused, {len(failed)} failed or skipped. "
                   f"Next: kdcicam report --format html")
    if failed:
        raise typer.Exit(1)


def _startable_runs(plan, store) -> int:
    """Runs of the plan still to train whose teachers are all finished already (the first ones ``--jobs``
    processes can start at once)."""
    finished = {r.id for r in store.list_runs() if r.status == "finished"}
    return sum(1 for r in plan.runs if r.run_id not in finished and all(d in finished for d in r.deps))


def _table_keys(reg, names: list[str]) -> list[str]:
    """The registry tables named, in order, without repeats; "all" = the paper's tables and figure (a sweep,
    a study of the benchmark, is run by name)."""
    keys: list[str] = []
    for name in names:
        keys += sorted(k for k, t in reg.tables.items() if t.kind != "sweep") if name == "all" else [reg.table(name).key]
    return list(dict.fromkeys(keys))


def _finished_since(store, run_id: str, since) -> bool:
    info = store.get_run(run_id)
    return info.finished_at is not None and info.finished_at >= since


def _slurm_options(partition, time_min, gpus_per_job, cpus_per_job, log_dir, artifacts: Path):
    from kdcicam.execution.launch import SLURM_LOG_DIR, SlurmOptions

    return SlurmOptions(partition=partition, time_min=time_min, gpus_per_job=gpus_per_job, cpus_per_task=cpus_per_job,
                        log_dir=Path(log_dir or Path(artifacts) / SLURM_LOG_DIR).resolve())


def _register_plan(plan, store, artifacts: Path, dev) -> None:
    """Record every planned run (as pending, unless stored already) before any trains, so that the store
    knows which teachers the plan's students will use (``runs delete`` then refuses to delete them)."""
    from kdcicam.execution.runner import RunContext, register_run

    ctx = RunContext(store=store, artifacts_root=Path(artifacts).resolve(), device=dev)
    for run in plan.runs:
        register_run(run, run.dataset, ctx)


def _submit(plan, store, artifacts: Path, dev, *, launcher: str, device: str, options, as_json: bool) -> None:
    """``ablate --launcher slurm|submitit-local``: record every run, submit one job per unfinished run.

    SLURM: returns once submitted (follow with ``kdcicam runs list``). submitit-local: waits for the jobs.
    """
    from kdcicam.execution.launch import make_executor, spec_for, submit_plan, train_args, write_spec
    from kdcicam.execution.runner import RunContext, register_run
    from kdcicam.training.distributed import launch_command

    ctx = RunContext(store=store, artifacts_root=Path(artifacts).resolve(), device=dev)
    finished = {r.run_id for r in plan.runs if register_run(r, r.dataset, ctx).status == "finished"}
    cluster = "slurm" if launcher == "slurm" else "local"
    make_executor(cluster, options.log_dir, options)  # fails here, before any job, when SLURM is not there

    def command_for(run) -> list[str]:
        spec_file = write_spec(spec_for(run, cache_dir()), ctx.artifacts_root)
        return launch_command(max(options.gpus_per_job, 1), train_args(spec_file, store.url, ctx.artifacts_root,
                                                                       device), sys.executable)

    def said(item) -> None:
        if not as_json:
            job = f"job {item.job.job_id}" if item.job is not None else "no job"
            typer.echo(f"  {item.run.run_id[:12]} {item.run.role:<12} {job}" + (f" ({item.note})" if item.note else ""))

    executor_for = lambda name, dep: make_executor(cluster, options.log_dir, options, name, dep)  # noqa: E731
    items = submit_plan(plan.runs, cluster, executor_for, command_for, on_submit=said,
                        skip=lambda run: "finished earlier, reused" if run.run_id in finished else "")
    if launcher == "submitit-local":
        for item in items:
            if item.job is not None:
                item.job.wait()
    rows = [{"run_id": i.run.run_id, "role": i.run.role, "job_id": i.job.job_id if i.job is not None else None,
             "note": i.note, "status": store.get_run(i.run.run_id).status} for i in items]
    if as_json:
        echo_json({"launcher": launcher, "log_dir": str(options.log_dir), "runs": rows})
    else:
        submitted = sum(1 for i in items if i.job is not None)
        typer.echo(f"{submitted} job(s) submitted ({launcher}), logs in {options.log_dir}. "
                   "Follow with: kdcicam runs list; then kdcicam report")
    if launcher == "submitit-local" and any(r["status"] != "finished" for r in rows):
        raise typer.Exit(1)


def _list_tables(reg, as_json: bool) -> None:
    rows = []
    for table in reg.tables.values():
        for cell in table.cells:
            what = cell.role or f"teacher {cell.teacher} at {cell.select}"
            if cell.teachers:
                ts = [f"{n}:{getattr(cell.teachers, n)}@{getattr(cell.teachers, n + '_select')}"
                      for n in ("cls", "loc") if getattr(cell.teachers, n)]
                what += " <- " + ", ".join(ts)
            rows.append({"table": table.key, "cell": cell.key, "name": cell.name, "runs": what,
                         "pool": cell.context_pool, "grid": {k: list(v) for k, v in cell.grid.items()},
                         "paper_scopes": sorted(cell.paper)})
    if as_json:
        echo_json(rows)
        return
    t = Table(title="ablation registry (every cell runs on any dataset/backbone; the paper printed these scopes)")
    for col in ("table", "cell", "name", "trains", "pool", "paper scopes"):
        t.add_column(col)
    for r in rows:
        grid = f" grid {r['grid']}" if r["grid"] else ""
        t.add_row(r["table"], r["cell"], r["name"], r["runs"] + grid, "on" if r["pool"] else "off",
                  ", ".join(r["paper_scopes"]) or "-")
    Console(width=160).print(t)
