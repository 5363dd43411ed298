"""The localization gallery: the same test images under a table's gallery cells (Table 3: Base, +ConPool
and +KD), side by side.

The evaluator writes ``gallery_<selection>.npz`` into a run's artifacts folder: the test crops as
the network saw them, the heatmaps, predicted and ground-truth boxes (xyxy, crop frame), labels
and top-1 predictions. Each gallery row is one image (a fixed sample: the first image ids, sorted,
that every column has); each column one cell, drawn with the heatmap overlaid, the GT box in red
and the predicted box in green: the file's box (the run's own θ), or under the report's θ policy the
box the run's per-image test records hold at that θ (:func:`with_boxes`). A missing or unreadable
file becomes a note, never an error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

from kdcicam.analysis.results import scopes_of
from kdcicam.registry.ablations import Registry
from kdcicam.registry.definitions import Table
from kdcicam.report.figures import new_figure, to_jpeg, wrap_to_width
from kdcicam.store import RunInfo

GALLERY_KEYS = ("image_ids", "images", "heatmaps", "pred_boxes", "gt_boxes", "labels", "top1")
DEFAULT_IMAGES = 4
GALLERY_PROTOCOL = "paper"  # the evaluator writes galleries under this protocol (execution/checkpoint_eval.py)
BOX_NOTES = {"fixed": "the run's own θ (eval.theta: the fixed policy)",
             "val": "θ chosen on the validation split",
             "oracle": "θ chosen on the test split (an upper bound)"}  # what the green box is, per θ policy


@dataclass(frozen=True)
class GalleryColumn:
    title: str  # the cell's name
    run_id: str
    seed: int
    arrays: dict[str, np.ndarray]


def load_gallery(path: Path) -> dict[str, np.ndarray]:
    """Read and check one gallery file.

    Returns:
        The arrays of :data:`GALLERY_KEYS`.

    Raises:
        ValueError: a key is missing or the shapes disagree (the caller turns it into a note).
        OSError: the file cannot be read.
    """
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in GALLERY_KEYS if k not in npz.files]
        if missing:
            raise ValueError(f"missing array {missing[0]!r}")
        arrays = {k: npz[k] for k in GALLERY_KEYS}
    n = len(arrays["image_ids"])
    images, heatmaps = arrays["images"], arrays["heatmaps"]
    if images.ndim != 4 or images.shape[0] != n or images.shape[-1] != 3:
        raise ValueError(f"images has shape {images.shape}, expected ({n}, S, S, 3)")
    if heatmaps.ndim != 3 or heatmaps.shape[0] != n:
        raise ValueError(f"heatmaps has shape {heatmaps.shape}, expected ({n}, S, S)")
    for key in ("pred_boxes", "gt_boxes"):
        if arrays[key].shape != (n, 4):
            raise ValueError(f"{key} has shape {arrays[key].shape}, expected ({n}, 4)")
    for key in ("labels", "top1"):
        if arrays[key].shape != (n,):
            raise ValueError(f"{key} has shape {arrays[key].shape}, expected ({n},)")
    arrays["image_ids"] = arrays["image_ids"].astype(str)
    return arrays


def gallery_table(reg: Registry) -> Table | None:
    """The table whose cells the gallery shows: the first of the registry that names any."""
    return next((t for t in reg.tables.values() if t.gallery), None)


def gallery_run(table: Table, key: str, runs: Sequence[RunInfo]) -> RunInfo | None:
    """The run a gallery column shows for cell ``key``: its lowest seed's (ties: the lowest id)."""
    labelled = sorted((r for r in runs if key in r.labels.get(table.key, [])), key=lambda r: (r.seed, r.id))
    return labelled[0] if labelled else None


def drawn_gallery_files(reg: Registry, runs: Sequence[RunInfo]) -> dict[str, set[str]]:
    """run id -> the gallery files the report draws of it, for finished ``runs`` (any scopes): in each
    scope, the gallery table's cells, each at its lowest seed's run and its checkpoint selection."""
    table = gallery_table(reg)
    if table is None:
        return {}
    by_scope: dict[object, list[RunInfo]] = {}
    scopes = scopes_of(reg, runs)
    for run in runs:
        by_scope.setdefault(scopes[run.id], []).append(run)
    out = {}
    for scope_runs in by_scope.values():
        for cell in table.cells:
            run = gallery_run(table, cell.key, scope_runs) if cell.key in table.gallery else None
            if run is not None:
                out.setdefault(run.id, set()).add(f"gallery_{cell.select}.npz")
    return out


def gallery_columns(table: Table, runs: Sequence[RunInfo],
                    cells: Sequence[str] | None = None) -> tuple[list[GalleryColumn], list[str]]:
    """The gallery file of each of ``cells`` (the lowest seed's run) among a scope's finished runs.

    Args:
        table: the registry table the cells belong to (for names and checkpoint selections).
        runs: the scope's finished runs.
        cells: cell keys, one column each, in order (default: the table's ``gallery``).

    Returns:
        (columns found, notes on the cells whose gallery is missing or unreadable).
    """
    columns, notes = [], []
    for key in (table.gallery if cells is None else cells):
        cell = next((c for c in table.cells if c.key == key), None)
        if cell is None:
            notes.append(f"{table.key} has no cell {key!r}")
            continue
        run = gallery_run(table, key, runs)
        if run is None:
            notes.append(f"{cell.name}: not run")
            continue
        name = f"gallery_{cell.select}.npz"
        if not run.artifacts_dir:
            notes.append(f"{cell.name}: run {run.short_id} has no artifacts folder")
            continue
        path = Path(run.artifacts_dir) / name
        if not path.is_file():
            notes.append(f"{cell.name}: no {name} in run {run.short_id}'s artifacts")
            continue
        try:
            arrays = load_gallery(path)
        except (OSError, ValueError) as exc:
            notes.append(f"{cell.name}: {path.name} of run {run.short_id} is unreadable ({exc})")
            continue
        columns.append(GalleryColumn(title=cell.name, run_id=run.id, seed=run.seed, arrays=arrays))
    return columns, notes


def with_boxes(columns: Sequence[GalleryColumn], image_ids: Sequence[str],
               boxes: Mapping[str, Mapping[str, Sequence[float]]]) -> list[GalleryColumn] | None:
    """The columns with their predicted boxes replaced by ``boxes`` (run id -> image id -> xyxy box, crop
    frame), or None when any column lacks a box for any of ``image_ids`` (the figure then keeps the files'
    boxes: one θ for every panel)."""
    out = []
    for col in columns:
        theirs = boxes.get(col.run_id, {})
        if any(image_id not in theirs for image_id in image_ids):
            return None
        pred = col.arrays["pred_boxes"].copy()  # (n, 4)
        for k, image_id in enumerate(col.arrays["image_ids"]):
            if image_id in theirs:
                pred[k] = np.asarray(theirs[image_id], dtype=np.float32)
        out.append(dataclasses.replace(col, arrays={**col.arrays, "pred_boxes": pred}))
    return out


def common_sample(columns: Sequence[GalleryColumn], n_images: int = DEFAULT_IMAGES) -> list[str]:
    """The fixed sample of image ids: the first ``n_images`` (sorted) that every column has."""
    if not columns:
        return []
    common = set(columns[0].arrays["image_ids"])
    for col in columns[1:]:
        common &= set(col.arrays["image_ids"])
    return sorted(common)[:n_images]


def gallery_figure(columns: Sequence[GalleryColumn], image_ids: Sequence[str], title: str = "",
                   box_note: str = BOX_NOTES["fixed"]) -> bytes:
    """One row per image, one column per cell: heatmap overlay, GT box (red), predicted box (green).

    Args:
        columns: from :func:`gallery_columns` (or :func:`with_boxes`).
        image_ids: from :func:`common_sample` (each must be in every column).
        title: figure title.
        box_note: whose θ the predicted boxes are at (one of :data:`BOX_NOTES`).

    Returns:
        JPEG bytes (photographs and heatmaps: a fifth of the PNG's size).
    """
    n_rows, n_cols = len(image_ids), len(columns)
    width = 2.6 * n_cols + 0.4
    heading = wrap_to_width(f"{title}\nred: ground truth, green: predicted box at {box_note}", width)
    fig = new_figure(width, 2.6 * n_rows + 0.4 + 0.2 * heading.count("\n"))
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))  # (rows, cols)
    for j, col in enumerate(columns):
        where = {image_id: i for i, image_id in enumerate(col.arrays["image_ids"])}
        for i, image_id in enumerate(image_ids):
            k = where[image_id]
            _draw_one(axes[i, j], col.arrays, k)
            if i == 0:
                axes[i, j].set_title(f"{col.title}\n(seed {col.seed})", fontsize=10)
            if j == 0:
                axes[i, j].set_ylabel(f"{_short(image_id)}\nclass {int(col.arrays['labels'][k])}", fontsize=8)
    fig.suptitle(heading, fontsize=10)
    return to_jpeg(fig, dpi=90)


def _short(image_id: str, width: int = 22) -> str:
    """An image id short enough for a row label: its file name, cut to ``width`` characters."""
    name = image_id.rsplit("/", 1)[-1]
    return name if len(name) <= width else name[:width - 1] + "…"


def _draw_one(ax, arrays: dict[str, np.ndarray], k: int) -> None:
    image = arrays["images"][k]  # (S, S, 3) uint8
    height, width = image.shape[:2]
    ax.imshow(image)
    ax.imshow(arrays["heatmaps"][k], cmap="jet", alpha=0.4, vmin=0, vmax=255,
              extent=(0, width, height, 0))  # (S', S') stretched over the crop
    for box, colour in ((arrays["gt_boxes"][k], "red"), (arrays["pred_boxes"][k], "lime")):
        x0, y0, x1, y1 = (float(v) for v in box)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.8))
    label, top1 = int(arrays["labels"][k]), int(arrays["top1"][k])
    ax.set_xlabel(f"pred {top1} ({'right' if top1 == label else 'wrong'})", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
