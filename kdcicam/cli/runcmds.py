"""``kdcicam train`` and ``kdcicam evaluate``: one run, trained (or resumed) and stored, or evaluated again."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from kdcicam.cli._common import (
    DB_HELP,
    REGISTRY_HELP,
    SET_HELP,
    cache_dir,
    configure_threads,
    db_url,
    echo_json,
    parse_sets,
    read_config_file,
)
from kdcicam.cli.run_setup import (
    HEADERS_HELP,
    check_teacher_checkpoints,
    choice,
    join_group,
    outcome_rows,
    preflight,
    prepare,
    ranked_opener,
    run_plan,
)
from kdcicam.core.config import BACKBONES, DATASETS, PROTOCOLS, ROLES, SELECTIONS, TeacherRefs
from kdcicam.core.errors import ConfigError


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
    headers: bool = typer.Option(True, "--headers/--no-headers", help=HEADERS_HELP),
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
    from kdcicam.registry.resolve import resolve_config

    if run_spec is not None:
        _train_spec(run_spec, db=db, artifacts=artifacts, device=device, quiet=quiet, as_json=as_json)
        return
    choice(role, ROLES, "--role")
    sets = {**read_config_file(config), **parse_sets(set_)}
    if deterministic:
        sets["train.deterministic"] = True
    reg, scope, dev, store, open_data, sets, dctx = prepare(
        profile=profile, dataset=dataset, data=data, backbone=backbone, variant=variant, registry_dir=registry,
        db=db, artifacts=artifacts, device=device, weights=weights, force=force, sets=sets, join=True,
        read_headers=headers, quiet=quiet or as_json)
    refs = None
    if role == "distilled":
        if not teacher_cls and not teacher_loc:
            raise ConfigError("--role distilled needs --teacher-cls RUN and/or --teacher-loc RUN")
        choice(cls_select, SELECTIONS, "--cls-select")
        choice(loc_select, SELECTIONS, "--loc-select")
        from kdcicam.training.distributed import broadcast_object

        if store is not None:  # rank 0 (or the only process) resolves; the others get its answer
            refs = TeacherRefs(cls_run=store.resolve_run(teacher_cls).id if teacher_cls else None,
                               cls_select=cls_select, loc_select=loc_select,
                               loc_run=store.resolve_run(teacher_loc).id if teacher_loc else None)
            check_teacher_checkpoints(store, refs)
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
    preflight([cfg])
    run = PlannedRun(run_id=run_id_for(cfg, index.fingerprint), cfg=cfg, dataset=index)
    _finish_train(run, store, artifacts, dev, dctx, quiet=quiet, as_json=as_json)


def _finish_train(run, store, artifacts: Path, dev, dctx, *, quiet: bool, as_json: bool) -> None:
    """Run one planned run (on every rank of a process group), then report it (rank 0)."""
    from kdcicam.training.distributed import shutdown

    outcomes = run_plan([run], (store, artifacts, dev), quiet=quiet or as_json, dist=dctx)
    shutdown(dctx)  # reached by every rank only when none failed mid-run
    if store is None:  # a rank other than 0: rank 0 reports
        return
    role, profile, variant = run.role, run.cfg.profile, run.cfg.variant
    rows = outcome_rows(store, [run], outcomes)
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
    dctx, dev = join_group(pick_device(device))
    store = open_store(db_url(db)) if dctx is None or dctx.is_main else None
    # the process that planned the run read every image header before it wrote the spec
    run = planned_run(spec, ranked_opener(Path(spec.data_cache), dctx, read_headers=False), where=str(path))
    set_seed(run.cfg.train.seed, run.cfg.train.deterministic)
    preflight([run.cfg])
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
    from kdcicam.evaluation.context_swap import with_context_swap
    from kdcicam.evaluation.evaluator import evaluate
    from kdcicam.execution.runner import load_run_model
    from kdcicam.store import open_store

    choice(selection, SELECTIONS, "--selection")
    protocols = PROTOCOLS if protocol == "both" else (choice(protocol, PROTOCOLS, "--protocol"),)
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
        res = with_context_swap(evaluate(model, index.test, cfg, proto, dev), model, index.test, cfg, dev)
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

