"""What ``kdcicam train``, ``evaluate`` and ``ablate`` share: option checks, the set-up (registry, device,
store, dataset opener, the paper profile's requirements), checks made before any run is stored, and
running a plan with its progress display."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import typer

from kdcicam.cli._common import (
    cache_dir,
    configure_threads,
    db_url,
)
from kdcicam.core.config import BACKBONES, DATASETS, VARIANTS, DataConfig, TeacherRefs
from kdcicam.core.errors import ConfigError, KdcicamError

LAUNCHERS = ("local", "slurm", "submitit-local")
HEADERS_HELP = ("Read every image header before any run is stored (a damaged or cut-short image is refused "
                "there); --no-headers skips it for huge datasets: such an image then fails its run.")


def choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise ConfigError(f"{option} {value!r}: must be one of {', '.join(choices)}")
    return value


def prepare(*, profile: str, dataset: str, data: Path | None, backbone: str, variant: str,
             registry_dir: Path | None, db: str | None, artifacts: Path, device: str, weights: str | None,
             force: bool, sets: dict[str, Any], join: bool = False, read_headers: bool = True,
             quiet: bool = False):
    """Shared set-up: registry, scope, device, store, a cached dataset opener, the checks of the paper profile.

    ``join``: under torchrun, join the process group (its rank's device); only rank 0 opens the store
    and generates data (the others open the data once rank 0 has it). ``read_headers``: the opener reads
    every image header (``--no-headers`` skips it), with a progress line on a terminal unless ``quiet``.
    """
    from kdcicam.core.runtime import pick_device
    from kdcicam.registry.ablations import load_registry
    from kdcicam.registry.resolve import Scope
    from kdcicam.store import open_store

    choice(dataset, DATASETS, "--dataset")
    choice(backbone, BACKBONES, "--backbone")
    choice(variant, VARIANTS, "--variant")
    from kdcicam.store.run_folder import check_artifacts_root

    check_artifacts_root(Path(artifacts))
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
    dctx, dev = join_group(dev) if join else (None, dev)
    scope = Scope(dataset=dataset, backbone=backbone, root=str(data) if data else None)
    store = open_store(db_url(db)) if dctx is None or dctx.is_main else None
    open_data = ranked_opener(cache_dir(), dctx, read_headers, quiet)
    return reg, scope, dev, store, open_data, sets, dctx


def join_group(dev):
    """Under torchrun: join its process group (device ``cuda:LOCAL_RANK`` on GPUs); else (None, dev)."""
    from kdcicam.training.distributed import init_distributed

    joined = init_distributed(os.environ, dev)
    return joined if joined is not None else (None, dev)


def ranked_opener(cache: Path, dctx, read_headers: bool = True, quiet: bool = False):
    """A cached dataset opener; in a process group rank 0 opens (and may generate) first, the others after.

    ``read_headers``: every image header is read when the data is opened (a damaged image is refused
    before any run is stored; a progress line on a terminal unless ``quiet``); ``False`` only checks that
    each image file exists.
    """
    from kdcicam.training.distributed import barrier

    @functools.lru_cache(maxsize=None)
    def open_data(data_cfg: DataConfig):
        from kdcicam.cli.header_progress import header_progress
        from kdcicam.data.source import open_dataset

        if dctx is None:
            with header_progress(quiet):
                return open_dataset(data_cfg, cache, read_headers)
        with header_progress(quiet or not dctx.is_main):
            index = open_dataset(data_cfg, cache, read_headers) if dctx.is_main else None
        barrier(dctx)  # rank 0 has read the headers: the others only open the index
        return index if index is not None else open_dataset(data_cfg, cache, read_headers=False)

    return open_data


def preflight(cfgs) -> None:
    """Catch bad weights before any run is recorded: build each distinct weighted model once."""
    from kdcicam.model.factory import build_model

    seen = set()
    for cfg in cfgs:
        check_input_sizes(cfg)
        key = (cfg.model.weights, cfg.model.backbone, cfg.model.width, cfg.variant)
        if cfg.model.weights is None or key in seen:
            continue
        seen.add(key)
        build_model(cfg.model, cfg.variant, input_size=cfg.data.crop)


def check_teacher_checkpoints(store, refs) -> None:
    """Load each teacher's checkpoint once (checksum, safe unpickling) before the student's run is stored.

    Raises:
        RunError: a teacher is not finished, or its checkpoint is missing or corrupt.
    """
    from kdcicam.core.errors import RunError
    from kdcicam.execution.run_models import run_model_source
    from kdcicam.training.checkpoint import load_checkpoint

    for run_id, selection in ((refs.cls_run, refs.cls_select), (refs.loc_run, refs.loc_select)):
        if run_id:
            if not store.get_run(run_id).artifacts_dir:
                raise RunError(f"teacher run {run_id[:12]} has no artifact folder: it cannot be distilled from")
            load_checkpoint(Path(run_model_source(store, run_id, selection)[1]))


def check_finished_teachers(runs, store) -> None:
    """Load once each checkpoint that a planned student distils from a teacher trained earlier (teachers the
    plan itself trains are checked as they finish), before any run of the plan is stored. A student the
    store holds as finished reads no teacher again: its teachers' checkpoints may be gone (an archive
    imported with ``--checkpoints needed``).

    Raises:
        RunError: such a checkpoint is missing or corrupt.
    """
    finished_runs = {r.id for r in store.list_runs(status="finished")}
    seen = set()
    for run in runs:
        if run.run_id in finished_runs:
            continue
        refs = run.cfg.teachers
        for run_id, selection in ((refs.cls_run, refs.cls_select), (refs.loc_run, refs.loc_select)):
            if not run_id or (run_id, selection) in seen:
                continue
            seen.add((run_id, selection))
            try:
                finished = store.get_run(run_id).status == "finished"
            except KdcicamError:  # not stored yet: the plan trains it
                continue
            if finished:
                check_teacher_checkpoints(store, TeacherRefs(cls_run=run_id, cls_select=selection))


def check_input_sizes(cfg) -> None:
    """Refuse a train or test crop the backbone cannot see (an empty feature map), naming the key."""
    from kdcicam.core.errors import ConfigError
    from kdcicam.model.backbones import build_backbone

    backbone = build_backbone(cfg.model.backbone, min(cfg.model.width, 0.0625), cfg.model.output_stride,
                              cfg.model.nonlocal_blocks, cfg.variant, cfg.model.batch_norm)
    for key, size in (("data.crop", cfg.data.crop), ("eval.test_crop", cfg.eval.test_crop)):
        if size < 1 or backbone.feature_size(size) < 1:
            raise ConfigError(f"{key} = {size}: too small for {cfg.model.backbone} at output_stride "
                              f"{cfg.model.output_stride} (the feature map would be empty)")


def run_context(store, artifacts: Path, dev, progress, dist=None):
    from kdcicam.execution.runner import RunContext

    return RunContext(store=store, artifacts_root=Path(artifacts), device=dev, on_event=progress.event, dist=dist)


def run_plan(runs, ctx_args, quiet: bool, dist=None, execute_one=None):
    from kdcicam.cli.progress import RunProgress
    from kdcicam.execution.runner import execute_plan

    store, artifacts, dev = ctx_args
    quiet = quiet or (dist is not None and not dist.is_main)  # one progress display: rank 0's
    with RunProgress(total_runs=len(runs), quiet=quiet) as progress:
        ctx = run_context(store, artifacts, dev, progress, dist)

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


def outcome_rows(store, runs, outcomes) -> list[dict[str, Any]]:
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

