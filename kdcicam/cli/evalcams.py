"""``kdcicam eval-cams``: score saved CAMs of any method as wsolevaluation does.

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
    cam_dir: Path = typer.Argument(..., help="Folder of saved CAMs: one .npy per image, <image_id>.npy "
                                             "(wsolevaluation's name) or the image extension replaced by .npy."),
    metadata: Path = typer.Option(..., "--metadata", help="wsolevaluation split folder (image_ids.txt, "
                                                          "image_sizes.txt, localization.txt), or its parent with --split."),
    split: str | None = typer.Option(None, "--split", help="test or val, when --metadata is the parent folder."),
    masks: Path | None = typer.Option(None, "--masks", help="Mask root of localization.txt's mask paths "
                                                            "(OpenImages layout): also score PxAP."),
    theta: list[float] | None = typer.Option(
        None, "--theta", help="CAM threshold in 0-1 for GT-known Loc (repeatable; default: 0.2)."),
    size: int = typer.Option(224, "--size", help="Side of the square frame CAMs are scored in (wsolevaluation: 224)."),
    cam_thresholds: int = typer.Option(100, "--cam-thresholds", help="Number of CAM thresholds of the curves."),
    box_rule: str = typer.Option("wsolevaluation", "--box-rule",
                                 help="wsolevaluation (its contours, '+1' IoU: comparable with published "
                                      "numbers) or continuous (this harness's components and continuous IoU)."),
    legacy: bool = typer.Option(False, "--legacy", help="Also the legacy MaxBoxAcc (largest contour; ~100x slower)."),
    jobs: int = typer.Option(1, "--jobs", help="Worker processes."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Score saved CAMs (any method) on one split: MaxBoxAccV2, GT-known Loc, PxAP with --masks."""
    from kdcicam.core.limits import check_limit
    from kdcicam.data.wsol_split import read_split, split_folder
    from kdcicam.evaluation.saved_cams import DEFAULT_THETAS, CamProblemsError, score_cams

    try:
        check_limit("image_side", size, "--size")
        meta = read_split(split_folder(metadata, split))
        scores = score_cams(cam_dir, meta, thetas=tuple(theta or DEFAULT_THETAS), size=size,
                            cam_thresholds=cam_thresholds, box_rule=box_rule, mask_root=masks, legacy=legacy,
                            jobs=jobs)
    except CamProblemsError as exc:
        for line in exc.lines:
            typer.echo(line, err=True)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KdcicamError as exc:  # one line, exit 2, also when this command runs without the root app
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    if as_json:
        typer.echo(json.dumps(scores.to_dict(), indent=2))
        return
    rule = "wsolevaluation's contours, '+1' IoU" if scores.box_rule == "wsolevaluation" else \
        "continuous rule: NOT wsolevaluation's numbers"
    table = Table(title=f"CAMs in {cam_dir}: {scores.images} images of {meta.folder}, "
                        f"{scores.size}x{scores.size}, box rule {scores.box_rule} ({rule})")
    table.add_column("metric")
    table.add_column("value (%)", justify="right")
    for t, value in zip(scores.thetas, scores.gt_known_loc):
        table.add_row(f"GT-known Loc (θ = {t:g}, IoU >= {scores.iou_threshold:g})", f"{100 * value:.2f}")
    if scores.maxboxacc_v2 is not None:
        table.add_row("MaxBoxAccV2", f"{100 * scores.maxboxacc_v2:.2f}")
        for level, value in scores.maxboxacc.items():
            table.add_row(f"  BoxAcc, IoU {level[4:]} (best θ = {scores.best_threshold[level]:g})",
                          f"{100 * value:.2f}")
    for level, value in (scores.legacy_maxboxacc or {}).items():
        table.add_row(f"MaxBoxAcc (legacy, largest contour), IoU {level[4:]}", f"{100 * value:.2f}")
    if scores.pxap is not None:
        table.add_row("PxAP", f"{scores.pxap['pxap']:.2f}")
        table.add_row(f"  pixel F1 (best θ = {scores.pxap['pixel_f1_threshold']:g})", f"{scores.pxap['pixel_f1']:.2f}")
        table.add_row(f"  pixel IoU (best θ = {scores.pxap['pixel_iou_threshold']:g})", f"{scores.pxap['pixel_iou']:.2f}")
    for kind, n in scores.adjusted.items():
        if n:
            table.add_row(f"CAMs {kind} to {scores.size}x{scores.size} [0, 1] first", str(n))
    table.add_row("Top-1/Top-5 Cls, Top-1/Top-5 Loc", "n/a (saved CAMs carry no class predictions)")
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``eval-cams`` to the root app."""
    app.command("eval-cams")(eval_cams_cmd)
