"""``kdcicam eval-cams``: score saved CAMs of any method on this harness's evaluator.

Register it on the root app with :func:`register` (``kdcicam/cli/__init__.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from kdcicam.core.errors import EXIT_USER_ERROR, KdcicamError


def eval_cams_cmd(
    cam_dir: Path = typer.Argument(..., help="Folder of saved CAMs: one .npy per test image, "
                                             "<image_id>.npy or the image extension replaced by .npy."),
    metadata: Path = typer.Option(..., "--metadata", help="wsolevaluation metadata folder (train/, test/...)."),
    image_root: Path | None = typer.Option(
        None, "--image-root", help="Folder the metadata's image paths are relative to (default: from kdcicam.json)."),
    theta: list[float] | None = typer.Option(
        None, "--theta", help="CAM threshold in 0-1 for GT-known Loc (repeatable; default: 0.2)."),
    size: int = typer.Option(224, "--size", help="Side of the square frame CAMs are resized to."),
    cam_thresholds: int = typer.Option(100, "--cam-thresholds", help="MaxBoxAccV2: number of CAM thresholds."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Score saved CAMs (any method) on the test split: GT-known Loc, MaxBoxAccV2 (standard protocol)."""
    from kdcicam.core.limits import check_limit
    from kdcicam.data.wsol import load_wsol
    from kdcicam.evaluation.saved_cams import DEFAULT_THETAS, score_cams

    try:
        check_limit("image_side", size, "--size")
        index = load_wsol(metadata, image_root)
        scores = score_cams(cam_dir, index.test, thetas=tuple(theta or DEFAULT_THETAS), size=size,
                            cam_thresholds=cam_thresholds)
    except KdcicamError as exc:  # one line, exit 2, also when this command runs without the root app
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    if as_json:
        typer.echo(json.dumps(scores.to_dict(), indent=2))
        return
    table = Table(title=f"CAMs in {cam_dir}: {scores.images} test images, standard protocol "
                        f"({scores.size}x{scores.size}, IoU >= {scores.iou_threshold:g})")
    table.add_column("metric")
    table.add_column("value (%)", justify="right")
    for t, value in zip(scores.thetas, scores.gt_known_loc):
        table.add_row(f"GT-known Loc (θ = {t:g})", f"{100 * value:.2f}")
    table.add_row("MaxBoxAccV2", f"{100 * scores.maxboxacc_v2:.2f}")
    for level, value in scores.maxboxacc.items():
        table.add_row(f"  MaxBoxAcc, IoU {level[4:]} (best θ = {scores.best_threshold[level]:g})",
                      f"{100 * value:.2f}")
    table.add_row("Top-1/Top-5 Cls, Top-1/Top-5 Loc", "n/a (saved CAMs carry no class predictions)")
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``eval-cams`` to the root app."""
    app.command("eval-cams")(eval_cams_cmd)
