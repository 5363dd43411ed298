"""``kdcicam train``, ``kdcicam evaluate`` and ``kdcicam ablate``: build the plan, run it, store it."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kdcicam.cli._common import (
    DB_HELP,
    REGISTRY_HELP,
    SET_HELP,
    available_cores,
    cache_dir,
    configure_threads,
    db_url,
    echo_json,
    parse_sets,
    read_config_file,
)
from kdcicam.cli.workers import auto_jobs, parse_jobs, split_threads, start_workers, worker_args
from kdcicam.core.config import PROTOCOLS, ROLES, SELECTIONS, VARIANTS, DataConfig, TeacherRefs
from kdcicam.core.errors import ConfigError

ablate_app = typer.Typer()
DATASETS = ("synthetic", "cub", "ilsvrc", "wsol")
BACKBONES = ("vgg16", "inceptionv3")
LAUNCHERS = ("local", "slurm", "submitit-local")


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise ConfigError(f"{option} {value!r}: must be one of {', '.join(choices)}")
    return value


def _prepare(*, profile: str, dataset: str, data: Path | None, backbone: str, variant: str,
             registry_dir: Path | None, db: str | None, artifacts: Path, device: str, weights: str | None,
             force: bool, sets: dict[str, Any], join: bool = False):
    """Shared set-up: registry, scope, device, store, a cached dataset opener, the checks of the paper profile.

    ``join``: under torchrun, join the process group (its rank's device); only rank 0 opens the store
    and generates data (the others open the data once rank 0 has it).
    """
    from kdcicam.core.runtime import pick_device
    from kdcicam.registry.ablations import Scope, load_registry
    from kdcicam.store import open_store

    _choice(dataset, DATASETS, "--dataset")
    _choice(backbone, BACKBONES, "--backbone")
    _choice(variant, VARIANTS, "--variant")
    reg = load_registry(registry_dir)
    prof = reg.profile(profile)
    if dataset != "synthetic" and data is None:
        raise ConfigError(f"--dataset {dataset} needs --data PATH (real data is read from disk, never downloaded)")
    if weights is not None:
        sets = {**sets, "model.weights": weights}
    if "train.device" not in sets:
        sets = {**sets, "train.device": device}
    dev = pick_device(sets["train.device"])
    missing = []
    if prof.needs_real_data and dataset == "synthetic":
        missing.append("real data (--dataset cub|ilsvrc --data PATH)")
    if prof.needs_weights and not sets.get("model.weights"):
        missing.append("pretrained weights (--weights PATH, or --weights imagenet for the torch hub cache)")
    if prof.needs_gpu and dev.type != "cuda":
        missing.append("a GPU")
    if missing and not force:
        raise ConfigError(f"profile {profile!r} needs {'; '.join(missing)} (or pass --force to run anyway)")
    configure_threads()
    dctx, dev = _join_group(dev) if join else (None, dev)
    scope = Scope(dataset=dataset, backbone=backbone, root=str(data) if data else None)
    store = open_store(db_url(db)) if dctx is None or dctx.is_main else None
    open_data = _ranked_opener(cache_dir(), dctx)
    return reg, scope, dev, store, open_data, sets, dctx


def _join_group(dev):
    """Under torchrun: join its process group (device ``cuda:LOCAL_RANK`` on GPUs); else (None, dev)."""
    from kdcicam.training.distributed import init_distributed

    joined = init_distributed(os.environ, dev)
    return joined if joined is not None else (None, dev)


def _ranked_opener(cache: Path, dctx):
    """A cached dataset opener; in a process group rank 0 opens (and may generate) first, the others after."""
    from kdcicam.training.distributed import barrier

    @functools.lru_cache(maxsize=None)
    def open_data(data_cfg: DataConfig):
        from kdcicam.data.source import open_dataset

        if dctx is None:
            return open_dataset(data_cfg, cache)
        index = open_dataset(data_cfg, cache) if dctx.is_main else None
        barrier(dctx)
        return index if index is not None else open_dataset(data_cfg, cache)

    return open_data


def _preflight(cfgs) -> None:
    """Catch bad weights before any run is recorded: build each distinct weighted model once."""
    from kdcicam.model.factory import build_model

    seen = set()
    for cfg in cfgs:
        key = (cfg.model.weights, cfg.model.backbone, cfg.model.width, cfg.variant)
        if cfg.model.weights is None or key in seen:
            continue
        seen.add(key)
        build_model(cfg.model, cfg.variant, input_size=cfg.data.crop)


def _context(store, artifacts: Path, dev, progress, dist=None):
    from kdcicam.execution.runner import RunContext

    return RunContext(store=store, artifacts_root=Path(artifacts), device=dev, on_event=progress.event, dist=dist)


def _run_plan(runs, ctx_args, quiet: bool, dist=None, execute_one=None):
    from kdcicam.cli.progress import RunProgress
    from kdcicam.execution.runner import execute_plan

    store, artifacts, dev = ctx_args
    quiet = quiet or (dist is not None and not dist.is_main)  # one progress display: rank 0's
    with RunProgress(total_runs=len(runs), quiet=quiet) as progress:
        ctx = _context(store, artifacts, dev, progress, dist)

        def start(run):
            label = ", ".join(f"{t}/{c}" for t, c, *_ in run.labels[:2]) or run.role
            progress.start_run(run.run_id, f"{run.role} [{label}]", run.cfg.train.epochs)

        def end(run, outcome):
            progress.end_run(outcome.status)
            if outcome.status == "finished" and outcome.reused:
                progress.log(f"  {run.run_id[:12]} {run.role}: finished earlier, reused")
            elif outcome.status == "finished":
                m = outcome.metrics
                progress.log(f"  {run.run_id[:12]} {run.role}: done in {outcome.seconds:.0f}s  "
                             f"top1_cls={m.get('top1_cls', float('nan')):.3f} top1_loc={m.get('top1_loc', float('nan')):.3f} "
                             f"gt_known={m.get('gt_known_loc', float('nan')):.3f} (paper protocol, last epoch)")
            else:
                progress.log(f"  [red]{run.run_id[:12]} {run.role}: {outcome.status}[/]: {outcome.message}")

        try:
            return execute_plan(runs, ctx, on_run_start=start, on_run_end=end, execute_one=execute_one)
        except KeyboardInterrupt as exc:  # Typer would exit 130 silently: say what happened, in one line
            interrupted = exc
    from kdcicam.core.errors import EXIT_INTERRUPTED
    from kdcicam.execution.runner import RunInterrupted

    typer.echo(f"interrupted: {interrupted}" if isinstance(interrupted, RunInterrupted) else "interrupted", err=True)
    raise typer.Exit(EXIT_INTERRUPTED)


def _outcome_rows(store, runs, outcomes) -> list[dict[str, Any]]:
    rows = []
    for run, out in zip(runs, outcomes):
        finals = store.final_metrics([run.run_id])
        sel = finals[(finals.protocol == "paper") & (finals.selection == "last")] if len(finals) else finals
        metrics = {r.name: r.value for r in sel.itertuples()} if len(sel) else {}
        rows.append({"run_id": run.run_id, "role": run.role, "status": out.status, "reused": out.reused,
                     "message": out.message, "labels": [f"{t}/{c}@{s}" for t, c, s, _ in run.labels],
                     "metrics_paper_last": metrics})
    return rows


# ------------------------------------------------------------------------------------- train

def train(
    role: str = typer.Option("student", help=f"Loss recipe: {', '.join(ROLES)}."),
    context_pool: bool = typer.Option(True, "--context-pool/--no-context-pool",
                                      help="CI-CAM's causal context pool (off = Base, NL-CCAM)."),
    dataset: str = typer.Option("synthetic", help=f"{', '.join(DATASETS)}."),
    data: Path | None = typer.Option(None, help="Dataset folder (real data); synthetic is generated on first use."),
    backbone: str = typer.Option("vgg16", help=f"{', '.join(BACKBONES)}."),
    profile: str = typer.Option("quick", help="smoke | quick | medium | paper (see ablations/profiles.toml)."),
    variant: str = typer.Option("reference", help="paper (printed equations) | reference (authors' code)."),
    seed: int = typer.Option(0, help="Seed of everything random in the run."),
    teacher_cls: str | None = typer.Option(None, help="Distilled role: classification-teacher run (id/prefix)."),
    teacher_loc: str | None = typer.Option(None, help="Distilled role: localization-teacher run (id/prefix)."),
    cls_select: str = typer.Option("top1_cls", help="Checkpoint of the cls teacher to distil from."),
    loc_select: str = typer.Option("gt_known_loc", help="Checkpoint of the loc teacher to distil from."),
    weights: str | None = typer.Option(None, help="ImageNet checkpoint file (torchvision), or 'imagenet' for the hub cache."),
    config: Path | None = typer.Option(None, help="TOML file of config overrides."),
    set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    deterministic: bool = typer.Option(False, "--deterministic", help="Bit-identical CPU runs for the same seed."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    registry: Path | None = typer.Option(None, help=REGISTRY_HELP),
    db: str | None = typer.Option(None, help=DB_HELP),
    artifacts: Path = typer.Option(Path("runs"), help="Where checkpoints and records go (one folder per run)."),
    force: bool = typer.Option(False, "--force", help="Run a profile even when its requirements are missing."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    run_spec: Path | None = typer.Option(None, "--run-spec", help="Run exactly the run this file describes "
                                         "(written by ablate --gpus / --launcher slurm); config options are ignored."),
) -> None:
    """Train (or resume, or reuse) one run, evaluate it under both protocols, store it.

    Under ``torchrun --nproc_per_node N -m kdcicam train ...`` the run trains on N processes
    (DistributedDataParallel; train.batch_size is the global batch); rank 0 alone writes.
    """
    from kdcicam.execution.plan import PlannedRun, run_id_for
    from kdcicam.registry.ablations import resolve_config

    if run_spec is not None:
        _train_spec(run_spec, db=db, artifacts=artifacts, device=device, quiet=quiet, as_json=as_json)
        return
    _choice(role, ROLES, "--role")
    sets = {**read_config_file(config), **parse_sets(set_)}
    if deterministic:
        sets["train.deterministic"] = True
    reg, scope, dev, store, open_data, sets, dctx = _prepare(
        profile=profile, dataset=dataset, data=data, backbone=backbone, variant=variant, registry_dir=registry,
        db=db, artifacts=artifacts, device=device, weights=weights, force=force, sets=sets, join=True)
    refs = None
    if role == "distilled":
        if not teacher_cls and not teacher_loc:
            raise ConfigError("--role distilled needs --teacher-cls RUN and/or --teacher-loc RUN")
        _choice(cls_select, SELECTIONS, "--cls-select")
        _choice(loc_select, SELECTIONS, "--loc-select")
        from kdcicam.training.distributed import broadcast_object

        if store is not None:  # rank 0 (or the only process) resolves; the others get its answer
            refs = TeacherRefs(cls_run=store.resolve_run(teacher_cls).id if teacher_cls else None,
                               cls_select=cls_select, loc_select=loc_select,
                               loc_run=store.resolve_run(teacher_loc).id if teacher_loc else None)
        refs = broadcast_object(refs, dctx)
    elif teacher_cls or teacher_loc:
        raise ConfigError("--teacher-cls/--teacher-loc are only for --role distilled")
    cfg = resolve_config(reg, scope=scope, profile=profile, variant=variant, role=role, context_pool=context_pool,
                         seed=seed, num_classes=2, teachers=refs, cli_overrides=sets)
    index = open_data(cfg.data)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=index.num_classes)).validate()
    from kdcicam.model.shipped import pin_shipped_weights

    cfg = dataclasses.replace(cfg, model=pin_shipped_weights(cfg.model))
    from kdcicam.core.runtime import set_seed

    set_seed(cfg.train.seed, cfg.train.deterministic)
    _preflight([cfg])
    run = PlannedRun(run_id=run_id_for(cfg, index.fingerprint), cfg=cfg, dataset=index)
    _finish_train(run, store, artifacts, dev, dctx, quiet=quiet, as_json=as_json)


def _finish_train(run, store, artifacts: Path, dev, dctx, *, quiet: bool, as_json: bool) -> None:
    """Run one planned run (on every rank of a process group), then report it (rank 0)."""
    from kdcicam.training.distributed import shutdown

    outcomes = _run_plan([run], (store, artifacts, dev), quiet=quiet or as_json, dist=dctx)
    shutdown(dctx)  # reached by every rank only when none failed mid-run
    if store is None:  # a rank other than 0: rank 0 reports
        return
    role, profile, variant = run.role, run.cfg.profile, run.cfg.variant
    rows = _outcome_rows(store, [run], outcomes)
    if as_json:
        echo_json(rows[0])
    else:
        typer.echo(f"run {run.run_id} ({role}, {profile}, {variant}): {outcomes[0].status}"
                   + (f" — {outcomes[0].message}" if outcomes[0].message else ""))
    if outcomes[0].status != "finished":
        raise typer.Exit(1)


def _train_spec(path: Path, *, db: str | None, artifacts: Path, device: str, quiet: bool, as_json: bool) -> None:
    """``train --run-spec``: the run a spec file describes, exactly (nothing re-resolved)."""
    from kdcicam.core.runtime import pick_device, set_seed
    from kdcicam.execution.launch import planned_run, read_spec
    from kdcicam.store import open_store

    spec = read_spec(path)
    configure_threads()
    dctx, dev = _join_group(pick_device(device))
    store = open_store(db_url(db)) if dctx is None or dctx.is_main else None
    run = planned_run(spec, _ranked_opener(Path(spec.data_cache), dctx), where=str(path))
    set_seed(run.cfg.train.seed, run.cfg.train.deterministic)
    _preflight([run.cfg])
    _finish_train(run, store, artifacts, dev, dctx, quiet=quiet, as_json=as_json)


# ---------------------------------------------------------------------------------- evaluate

def evaluate_cmd(
    run: str = typer.Argument(..., help="Run id or unique prefix."),
    selection: str = typer.Option("last", help=f"Checkpoint: {', '.join(SELECTIONS)}."),
    protocol: str = typer.Option("both", help="paper | standard | both"),
    db: str | None = typer.Option(None, help=DB_HELP),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Evaluate a stored run's checkpoint on the test split (both protocols) and store the metrics."""
    from kdcicam.core.config import RunConfig, from_dict
    from kdcicam.core.runtime import pick_device
    from kdcicam.data.source import open_dataset
    from kdcicam.evaluation.evaluator import evaluate
    from kdcicam.execution.runner import load_run_model
    from kdcicam.store import open_store

    _choice(selection, SELECTIONS, "--selection")
    protocols = PROTOCOLS if protocol == "both" else (_choice(protocol, PROTOCOLS, "--protocol"),)
    configure_threads()
    store = open_store(db_url(db))
    info = store.resolve_run(run)
    dev = pick_device(device)
    cfg = from_dict(RunConfig, info.config, where=f"run {info.id[:12]} config")
    index = open_dataset(cfg.data, cache_dir())
    if index.fingerprint != info.dataset_fingerprint:
        raise ConfigError(f"run {info.id[:12]} was trained on dataset {info.dataset_fingerprint}, but "
                          f"{cfg.data.root or 'the synthetic cache'} now holds {index.fingerprint}")
    model = load_run_model(store, info.id, selection, dev)
    out: dict[str, dict[str, float]] = {}
    for proto in protocols:
        res = evaluate(model, index.test, cfg, proto, dev)
        store.set_final_metrics(info.id, proto, selection, "fixed", "test", res.metrics)
        store.add_image_records(info.id, proto, selection, "test", res.records)
        out[proto] = res.metrics
    if as_json:
        echo_json({"run_id": info.id, "selection": selection, "metrics": out})
        return
    table = Table(title=f"run {info.id[:12]} ({info.role}, {info.variant}) at checkpoint '{selection}', test split")
    table.add_column("metric")
    for proto in out:
        table.add_column(f"{proto} protocol", justify="right")
    for name in next(iter(out.values())):
        table.add_row(name, *(f"{out[p][name] * (1 if name == 'theta' else 100):.2f}" for p in out))
    Console().print(table)


# ------------------------------------------------------------------------------------ ablate

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
) -> None:
    """Plan, train (or reuse) and evaluate every run an ablation table needs, and store the results."""
    from kdcicam.execution.plan import make_plan
    from kdcicam.registry.ablations import load_registry

    if list_:
        _list_tables(load_registry(registry), as_json)
        return
    if not table:
        raise ConfigError("name a table (table3, table4, table5, figure1b, context-sweep or all), or use --list")
    _choice(launcher, LAUNCHERS, "--launcher")
    if launcher != "local" and gpus != 1:
        raise ConfigError("--gpus is for --launcher local; with SLURM give --gpus-per-job")
    requested_jobs = parse_jobs(jobs)  # None: auto
    one_process_per_run = gpus == 1 and launcher == "local"
    if (requested_jobs or 1) > 1 and not one_process_per_run:
        raise ConfigError("--jobs N is for --launcher local with one process per run (not with --gpus)")
    tables = _table_keys(load_registry(registry), table)  # a bad name is refused before any store is opened
    sets = parse_sets(set_)
    reg, scope, dev, store, open_data, sets, _ = _prepare(
        profile=profile, dataset=dataset, data=data, backbone=backbone, variant=variant, registry_dir=registry,
        db=db, artifacts=artifacts, device=device, weights=weights, force=force, sets=sets)
    # "all": the paper's artefacts (tables and figure); a sweep (a study of the benchmark) is run by name
    plan = make_plan(reg, tables, scope=scope, profile=profile, variant=variant, seeds=list(range(seeds)),
                     open_data=open_data, cli_overrides=sets)
    n_jobs = requested_jobs or (auto_jobs(device_type=dev.type, cores=available_cores(),
                                          startable=_startable_runs(plan, store)) if one_process_per_run else 1)
    if n_jobs > 1:  # each process gets its share of the cores (the plan and the data were made on all of them)
        split_threads(n_jobs)
        configure_threads()
    if dry_run:
        from kdcicam.core.runtime import device_name

        _print_plan(plan, store, as_json, jobs=n_jobs, device=device_name(dev))
        return
    _preflight(r.cfg for r in plan.runs)
    if launcher != "local":
        _submit(plan, store, artifacts, dev, launcher=launcher, device=device, as_json=as_json,
                options=_slurm_options(partition, time_min, gpus_per_job, cpus_per_job, slurm_log_dir, artifacts))
        return
    from kdcicam.core.runtime import set_seed

    set_seed(0)
    execute_one = None
    if gpus > 1:
        from kdcicam.execution.launch import execute_in_child

        execute_one = execute_in_child(gpus, cache_dir(), device)
    from kdcicam.store import utc_now

    began = utc_now()
    workers = start_workers(n_jobs - 1, worker_args(sys.argv), Path(artifacts))
    try:
        outcomes = _run_plan(plan.runs, (store, artifacts, dev), quiet=quiet or as_json, execute_one=execute_one)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the workers stop too (each saves its position), then we go
        if workers is not None:
            workers.interrupt()
        raise
    finally:
        worker_errors = workers.wait() if workers is not None else []
    if workers is not None:  # a run a worker trained is new work, not a reuse
        outcomes = [dataclasses.replace(o, reused=False) if o.reused and _finished_since(store, o.run_id, began) else o
                    for o in outcomes]
    rows = _outcome_rows(store, plan.runs, outcomes)
    for message in worker_errors:
        typer.echo(message, err=True)
    failed = [r for r in rows if r["status"] != "finished"]
    if as_json:
        echo_json({"tables": tables, "scope": scope.__dict__, "profile": profile, "variant": variant, "runs": rows})
    else:
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


def _status_of(info, done: int | None) -> str:
    """A planned run's status as the plan shows it: new, reused, resumed (after how many epochs), or being
    trained by another live process."""
    from kdcicam.execution.holders import holder_gone

    if info is None or info.status == "pending":
        return "new"
    if info.status == "finished":
        return "finished (reuse)"
    after = f" after epoch {done}" if done else ""
    if info.status == "running" and holder_gone(info) is None:
        return f"running in process {info.pid} on {info.host}" + (f" ({done} epochs done)" if done else "")
    return f"interrupted (resume{after})" if info.status == "running" else f"{info.status} (resume{after})"


def _print_plan(plan, store, as_json: bool, *, jobs: int = 1, device: str = "cpu") -> None:
    from kdcicam.execution.eta import estimate_plan

    history = store.list_runs()
    by_id = {r.id: r for r in history}
    done = _epochs_done(store, history, {r.run_id for r in plan.runs})
    est = estimate_plan(plan.runs, history, profile=plan.profile, device=device, jobs=jobs, epochs_done=done)
    rows = []
    for i, (run, seconds) in enumerate(zip(plan.runs, est.seconds), 1):
        rows.append({"order": i, "run_id": run.run_id, "role": run.role, "pool": run.cfg.model.context_pool,
                     "seed": run.cfg.train.seed, "epochs": run.cfg.train.epochs, "status": _status_of(by_id.get(run.run_id), done.get(run.run_id)),
                     "needs": [d[:12] for d in run.deps], "estimated_seconds": seconds,
                     "cells": [f"{t}/{c}@{s}" + (f" [{p}]" if p else "") for t, c, s, p in run.labels]})
    estimate = {"total_seconds": est.total, "wall_seconds": est.wall, "jobs": jobs, "device": device,
                "not_estimated_roles": list(est.unknown_roles), "based_on": list(est.based_on)}
    if as_json:
        echo_json({"profile": plan.profile, "variant": plan.variant, "scope": plan.scope.__dict__, "runs": rows,
                   "estimate": estimate})
        return
    t = Table(title=f"plan: {plan.scope.dataset}/{plan.scope.backbone}, profile {plan.profile}, variant {plan.variant}; "
                    f"{jobs} run{'s' if jobs > 1 else ''} at a time")
    for col in ("#", "run", "role", "pool", "seed", "epochs", "status", "est.", "needs", "cells"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(str(r["order"]), r["run_id"][:12], r["role"], "on" if r["pool"] else "off", str(r["seed"]),
                  str(r["epochs"]), r["status"], _duration(r["estimated_seconds"]), " ".join(r["needs"]),
                  escape("\n".join(r["cells"])) or "(teacher)")
    console = Console(width=160)
    console.print(t)
    console.print(_estimate_line(est, plan.profile, device), highlight=False, soft_wrap=True)


def _epochs_done(store, history, run_ids: set[str]) -> dict[str, int]:
    """Epochs each unfinished run of the plan has completed (it resumes after its last checkpoint)."""
    out = {}
    for run in history:
        if run.id in run_ids and run.status != "finished":
            curves = store.epoch_metrics(run.id)
            trained = curves[curves["split"] == "train"]["epoch"]
            out[run.id] = int(trained.max()) + 1 if len(trained) else 0
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds == 0:
        return "-"
    if seconds < 60:
        return "<1 min"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _estimate_line(est, profile: str, device: str) -> str:
    if not any(est.seconds) and not est.unknown_roles:
        return "Estimate: nothing left to train (every run is finished)."
    if not est.based_on:
        return (f"Estimate: none yet: this store has no finished {profile}-profile run of "
                f"{', '.join(est.unknown_roles)} to time the plan by.")
    line = (f"Estimate: {_duration(est.total)} of training and evaluation left; about {_duration(est.wall)} wall "
            f"with --jobs {est.jobs} (runs in plan order, students after their teachers), from this store's "
            f"finished runs of the same profile, role and dataset ({'; '.join(est.based_on)}), "
            f"on this invocation's device: {device}.")
    if est.unknown_roles:
        line += (f" Left out (no finished {profile}-profile run of that role in this store): "
                 f"{', '.join(est.unknown_roles)}.")
    return line


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
