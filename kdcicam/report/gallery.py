"""The localization gallery: the same test images under a table's gallery cells (Table 3: Base, +ConPool
and +KD), side by side.

The evaluator writes ``gallery_<selection>.npz`` into a run's artifacts folder: the test crops as
the network saw them, the heatmaps, predicted and ground-truth boxes (xyxy, crop frame), labels
and top-1 predictions. Each gallery row is one image (a fixed sample: the first image ids, sorted,
that every column has); each column one cell, drawn with the heatmap overlaid, the GT box in red
and the predicted box in green. A missing or unreadable file becomes a note, never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

from kdcicam.registry.definitions import Table
from kdcicam.report.figures import new_figure, to_jpeg
from kdcicam.store import RunInfo

GALLERY_KEYS = ("image_ids", "images", "heatmaps", "pred_boxes", "gt_boxes", "labels", "top1")
DEFAULT_IMAGES = 4


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
        labelled = sorted((r for r in runs if key in r.labels.get(table.key, [])), key=lambda r: (r.seed, r.id))
        if not labelled:
            notes.append(f"{cell.name}: not run")
            continue
        run = labelled[0]
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


def common_sample(columns: Sequence[GalleryColumn], n_images: int = DEFAULT_IMAGES) -> list[str]:
    """The fixed sample of image ids: the first ``n_images`` (sorted) that every column has."""
    if not columns:
        return []
    common = set(columns[0].arrays["image_ids"])
    for col in columns[1:]:
        common &= set(col.arrays["image_ids"])
    return sorted(common)[:n_images]


def gallery_figure(columns: Sequence[GalleryColumn], image_ids: Sequence[str], title: str = "") -> bytes:
    """One row per image, one column per cell: heatmap overlay, GT box (red), predicted box (green).

    Args:
        columns: from :func:`gallery_columns`.
        image_ids: from :func:`common_sample` (each must be in every column).
        title: figure title.

    Returns:
        JPEG bytes (photographs and heatmaps: a fifth of the PNG's size).
    """
    n_rows, n_cols = len(image_ids), len(columns)
    fig = new_figure(2.6 * n_cols + 0.4, 2.6 * n_rows + 0.6)
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
    fig.suptitle(title + "\nred: ground truth, green: predicted box at the run's own θ (eval.theta: the fixed policy)", fontsize=10)
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
