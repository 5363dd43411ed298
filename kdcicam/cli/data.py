"""``kdcicam data``: generate the embedded benchmark, check a dataset folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Generate the synthetic benchmark and validate dataset folders.", no_args_is_help=True)


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Folder to write the benchmark into (CUB-200-2011 layout)."),
    classes: int = typer.Option(10, help="Number of object classes."),
    per_class: int = typer.Option(200, help="Images per class (train + test)."),
    size: int = typer.Option(64, help="Nominal image side in pixels."),
    context_correlation: float = typer.Option(
        0.9, help="Train split: weight of the class's preferred context, P(own) = corr + (1-corr)/K."),
    test_context_correlation: float = typer.Option(
        0.0, help="Test split: the same weight (0 = context independent of the class)."),
    body_class_evidence: float = typer.Option(
        0.2, help="How far the shared body is tinted toward the class colour (weak cue)."),
    grayscale_fraction: float = typer.Option(0.02, help="Share of images written as grayscale JPEGs."),
    test_fraction: float = typer.Option(0.25, help="Share of each class written as test images."),
    seed: int = typer.Option(0, help="Generator seed (same seed, same bytes)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty OUT folder."),
) -> None:
    """Write the confounded-context benchmark in the CUB-200-2011 file layout."""
    from kdcicam.core.config import SynthConfig
    from kdcicam.data.synthetic import generate

    cfg = SynthConfig(classes=classes, per_class=per_class, size=size,
                      context_correlation=context_correlation,
                      test_context_correlation=test_context_correlation,
                      body_class_evidence=body_class_evidence, grayscale_fraction=grayscale_fraction,
                      test_fraction=test_fraction, seed=seed)
    info = generate(out, cfg, overwrite=force)
    typer.echo(f"wrote {info['num_images']} images ({info['num_classes']} classes) to {out}")


@app.command("check")
def check(
    path: Path = typer.Argument(..., help="Dataset folder (CUB layout, ILSVRC, or wsolevaluation metadata)."),
    format: str = typer.Option("auto", "--format", help="auto | cub | synthetic | ilsvrc | wsol"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    image_root: Path | None = typer.Option(
        None, "--image-root", help="wsol only: folder the metadata's image paths are relative to."),
    headers: bool = typer.Option(
        True, "--headers/--no-headers", help="Read every image header (sizes, boxes inside images)."),
    deep: bool = typer.Option(False, "--deep", help="Also decode every image (finds truncated files)."),
) -> None:
    """Validate a dataset folder and print a summary; every defect is one line naming file and line."""
    from kdcicam.cli.header_progress import header_progress
    from kdcicam.core.errors import EXIT_USER_ERROR
    from kdcicam.data.check import run_check

    with header_progress(quiet=as_json):
        report = run_check(path, format=format, image_root=image_root, read_headers=headers, deep=deep)
    if report.defects:
        for line in report.defects:
            typer.echo(line, err=True)
        raise typer.Exit(EXIT_USER_ERROR)
    summary = report.summary
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console = Console()
    table = Table(title=f"{summary['format']} dataset at {path}")
    table.add_column("field")
    table.add_column("value")
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)


@app.command("stats")
def stats(
    path: Path = typer.Argument(..., help="Dataset folder (CUB layout, ILSVRC, or wsolevaluation metadata)."),
    format: str = typer.Option("auto", "--format", help="auto | cub | synthetic | ilsvrc | wsol"),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
    image_root: Path | None = typer.Option(
        None, "--image-root", help="wsol only: folder the metadata's image paths are relative to."),
) -> None:
    """Box-area share and centre-offset distributions, images and boxes per class, image sizes."""
    from kdcicam.cli.header_progress import header_progress
    from kdcicam.core.errors import EXIT_USER_ERROR
    from kdcicam.data.loader import resolve_format, scan_dataset
    from kdcicam.data.stats import dataset_stats

    with header_progress(quiet=as_json):
        scan = scan_dataset(path, resolve_format(path, format), image_root=image_root, read_headers=True)
    if scan.defects or scan.index is None:
        for line in scan.defects or [f"{path}: dataset could not be indexed"]:
            typer.echo(line, err=True)
        raise typer.Exit(EXIT_USER_ERROR)
    result = dataset_stats(scan.index)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    console = Console()
    for split in ("all", "train", "val", "test"):
        if split not in result:
            continue
        s = result[split]
        table = Table(title=f"{result['name']} at {path}: {split} ({s['images']} images, {s['boxes']} boxes)")
        for col in ("quantity", "mean", "p05", "p25", "p50", "p75", "p95"):
            table.add_column(col)
        for key in ("box_area_share", "centre_offset_x", "centre_offset_y", "centre_distance",
                    "image_width", "image_height", "boxes_per_image"):
            d = s[key]
            table.add_row(key, *(["-"] * 6 if d is None else [f"{d[k]:g}" for k in
                                                               ("mean", "p05", "p25", "p50", "p75", "p95")]))
        per = ", ".join(f"{k} {v:g}" for k, v in s["images_per_class"].items())
        table.caption = f"images per class: {per}"
        console.print(table)
