"""``kdcicam baselines``: the trivial localization baselines of a dataset under both protocols."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from kdcicam.cli._common import REGISTRY_HELP, cache_dir, echo_json, parse_sets
from kdcicam.core.config import PROTOCOLS


def baselines_cmd(
    dataset: str = typer.Option("synthetic", help="synthetic, cub, ilsvrc, wsol."),
    data: Path | None = typer.Option(None, help="Dataset folder (real data)."),
    backbone: str = typer.Option("vgg16", help="vgg16 | inceptionv3 (sets the test sizes)."),
    profile: str = typer.Option("quick", help="Profile whose data and test sizes to use."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override config keys, e.g. --set eval.test_crop=224."),
    registry: Path | None = typer.Option(None, help=REGISTRY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Whole-image box and best centred box (size chosen on validation): GT-known Loc on test."""
    from kdcicam.core.errors import ConfigError
    from kdcicam.data.source import open_dataset
    from kdcicam.evaluation.baselines import trivial_baselines
    from kdcicam.registry.ablations import load_registry
    from kdcicam.registry.resolve import Scope, resolve_config

    if dataset != "synthetic" and data is None:
        raise ConfigError(f"--dataset {dataset} needs --data PATH")
    reg = load_registry(registry)
    cfg = resolve_config(reg, scope=Scope(dataset, backbone, str(data) if data else None), profile=profile,
                         variant="reference", role="student", context_pool=True, seed=0, num_classes=2,
                         cli_overrides=parse_sets(set_))
    index = open_dataset(cfg.data, cache_dir())
    results = [trivial_baselines(index.val, index.test, cfg, p) for p in PROTOCOLS]
    if as_json:
        echo_json({"dataset": index.name, "fingerprint": index.fingerprint, "test_images": len(index.test),
                   "results": [dataclasses.asdict(r) for r in results]})
        return
    t = Table(title=f"trivial baselines: {index.name} ({index.fingerprint}), {len(index.test)} test images, "
                    f"GT-known Loc at IoU >= {cfg.eval.iou_threshold}")
    for col in ("protocol", "whole image", "centred box (size from val)", "size", "val"):
        t.add_column(col)
    for r in results:
        t.add_row(r.protocol, f"{100 * r.whole_image:.1f}", f"{100 * r.centred:.1f}", f"{r.centred_size:.2f}",
                  f"{100 * r.centred_val:.1f}")
    Console().print(t)
