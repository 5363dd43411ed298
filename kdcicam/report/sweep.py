"""Sweep tables (registry ``kind = "sweep"``): each cell's metric, and its gap to the reference cell, against a swept setting.

A sweep sets one config key (e.g. ``data.synth.context_correlation``) to each of its values in every
cell. Runs at different values may train on different datasets (another synthetic benchmark per
correlation), so a sweep is grouped by dataset name, backbone, profile, variant and checkpoint policy,
not by dataset fingerprint, and read from each run's own config (the value it actually ran at).

The gap of a cell at one value is paired by seed: ``cell(seed) - reference(seed)`` over the seeds
that have both, with its mean and Student-t 95 % interval (:func:`kdcicam.analysis.stats.mean_std_ci`).
Whether the gap grows with the swept value is a least-squares line through every (value, seed) gap
(:func:`kdcicam.analysis.stats.linear_trend`), given as the change it predicts from the lowest swept
value to the highest, with its 95 % interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from kdcicam.analysis.results import config_value, latest_per
from kdcicam.analysis.stats import linear_trend, mean_std_ci
from kdcicam.evaluation.selection import select_on_of
from kdcicam.registry.ablations import Registry
from kdcicam.registry.definitions import Table
from kdcicam.store import RunInfo

SWEEP_THRESHOLD_POLICY = "fixed"


@dataclass(frozen=True)
class SweepPoint:
    """One cell at one value of the swept key: mean ± std over seeds, or the paired gap to the reference."""

    x: float
    cell: str
    name: str
    metric: str
    n: int
    mean: float | None
    std: float | None
    ci: tuple[float, float] | None = None  # 95 % Student-t interval (gaps; n >= 2)


@dataclass(frozen=True)
class SweepTrend:
    """How a cell's gap to the reference changes across the sweep: the least-squares line through every
    seed-paired gap, as the change it predicts from ``x_lo`` to ``x_hi`` (points) with a 95 % interval."""

    cell: str
    name: str
    metric: str
    n: int  # seed-paired gaps the line is fitted to
    x_lo: float
    x_hi: float
    change: float | None
    ci: tuple[float, float] | None


@dataclass(frozen=True)
class SweepData:
    key: str
    title: str
    caption: str
    protocol: str
    group: str  # "synthetic / vgg16 / quick / reference" (+ "select_on test")
    x_key: str
    reference: str  # reference cell's display name
    metrics: tuple[str, ...]
    values: tuple[SweepPoint, ...]  # every (x, cell, metric)
    gaps: tuple[SweepPoint, ...]  # every (x, non-reference cell, metric)
    missing: tuple[str, ...]  # "x=0.7: +ConPool" for values a cell has no finished run at
    reduced: bool
    trends: tuple[SweepTrend, ...] = ()  # every (non-reference cell, metric) with gaps at two or more values


def _group(run: RunInfo) -> tuple[str, str, str, str, str]:
    backbone = str(config_value(run.config, "model.backbone") or "?")
    return run.dataset, backbone, run.profile, run.variant, select_on_of(run.config)


def sweep_frame(table: Table, runs: Sequence[RunInfo], finals: pd.DataFrame,
                threshold_policy: str = SWEEP_THRESHOLD_POLICY) -> pd.DataFrame:
    """Long format: group, x, cell, seed, run_id, finished, protocol, metric, value (percent).

    The latest finished run per (group, x, cell, seed) is kept (a rerun supersedes).
    """
    cells = {c.key: c for c in table.cells}
    test = finals[(finals["split"] == "test") & (finals["threshold_policy"] == threshold_policy)] \
        if not finals.empty else finals
    by_run = {rid: g for rid, g in test.groupby("run_id")} if not test.empty else {}
    rows = []
    for run in runs:
        if run.status != "finished" or table.key not in run.labels or table.sweep_key is None:
            continue
        x = config_value(run.config, table.sweep_key)
        if x is None:
            continue
        group = by_run.get(run.id)
        if group is None:
            continue
        for cell_key in run.labels[table.key]:
            cell = cells.get(cell_key)
            if cell is None:
                continue
            chosen = group[group["selection"] == cell.select]
            for r in chosen.itertuples():
                if r.name in table.metrics:
                    rows.append((_group(run), float(x), cell_key, run.seed, run.id,
                                 run.finished_at.isoformat() if run.finished_at else "", r.protocol, r.name,
                                 100.0 * float(r.value)))
    frame = pd.DataFrame(rows, columns=["group", "x", "cell", "seed", "run_id", "finished", "protocol", "metric",
                                        "value"])
    return latest_per(frame, ["group", "x", "cell", "seed"])


def _nan_to_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def build_sweeps(reg: Registry, keys: Sequence[str], runs: Sequence[RunInfo], finals: pd.DataFrame,
                 protocols: Sequence[str], threshold_policy: str = SWEEP_THRESHOLD_POLICY) -> tuple[SweepData, ...]:
    """Every sweep table of ``keys``, per group of runs and protocol."""
    out = []
    for key in keys:
        table = reg.tables[key]
        frame = sweep_frame(table, runs, finals, threshold_policy)
        if frame.empty:
            continue
        names = {c.key: c.name for c in table.cells}
        ref = table.reference_cell
        for group, gframe in frame.groupby("group", sort=True):
            dataset, backbone, profile, variant, select_on = group
            label = " / ".join((dataset, backbone, profile, variant)) + (
                f" (select_on {select_on})" if select_on != "val" else "")
            for protocol in protocols:
                pframe = gframe[gframe["protocol"] == protocol]
                if pframe.empty:
                    continue
                values, gaps, missing = [], [], []
                paired: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (cell, metric) -> (x, gap) per seed
                for x in table.sweep_values:
                    at = pframe[pframe["x"] == x]
                    for cell in table.cells:
                        if at[at["cell"] == cell.key].empty:
                            missing.append(f"{x:g}: {cell.name}")
                    for metric in table.metrics:
                        m = at[at["metric"] == metric]
                        per_cell = {c: dict(zip(g["seed"], g["value"])) for c, g in m.groupby("cell")}
                        for cell in table.cells:
                            seeds = per_cell.get(cell.key, {})
                            mean, std, n, _, _ = mean_std_ci(list(seeds.values()))
                            values.append(SweepPoint(x, cell.key, cell.name, metric, n, _nan_to_none(mean),
                                                     _nan_to_none(std)))
                            if cell.key == ref:
                                continue
                            base = per_cell.get(ref, {})
                            diffs = [seeds[s] - base[s] for s in sorted(set(seeds) & set(base))]
                            paired.setdefault((cell.key, metric), []).extend((x, d) for d in diffs)
                            mean, std, n, lo, hi = mean_std_ci(diffs)
                            ci = None if math.isnan(lo) else (lo, hi)
                            gaps.append(SweepPoint(x, cell.key, cell.name, metric, n, _nan_to_none(mean),
                                                   _nan_to_none(std), ci))
                out.append(SweepData(key=table.key, title=table.title, caption=table.caption, protocol=protocol,
                                     group=label, x_key=table.sweep_key or "", reference=names.get(ref, ref or ""),
                                     metrics=table.metrics, values=tuple(values), gaps=tuple(gaps),
                                     missing=tuple(missing), reduced=profile != "paper" or dataset == "synthetic",
                                     trends=_trends(paired, names)))
    return tuple(out)


def _trends(paired: dict[tuple[str, str], list[tuple[float, float]]], names: dict[str, str]) -> tuple[SweepTrend, ...]:
    out = []
    for (cell, metric), points in paired.items():
        xs = [x for x, _ in points]
        if len(set(xs)) < 2:
            continue
        slope, n, lo, hi = linear_trend(xs, [g for _, g in points])
        span = max(xs) - min(xs)
        out.append(SweepTrend(cell, names.get(cell, cell), metric, n, min(xs), max(xs), _nan_to_none(slope * span),
                              None if math.isnan(lo) else (lo * span, hi * span)))
    return tuple(out)


def sweep_figure(sweep: SweepData, metrics: Sequence[str], labels: dict[str, str]) -> bytes | None:
    """Two rows of panels per localization metric: each cell's value, and each cell's gap to the reference,
    against the swept value (error bars: std over seeds for values, 95 % interval for gaps)."""
    from kdcicam.report.figures import new_figure, to_png

    shown = [m for m in metrics if any(p.metric == m and p.mean is not None for p in sweep.values)]
    if not shown:
        return None
    fig = new_figure(4.2 * len(shown), 6.4)
    axes = fig.subplots(2, len(shown), squeeze=False)
    colour = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(p.name for p in sweep.values))}  # one per cell
    for col, metric in enumerate(shown):
        top, bottom = axes[0, col], axes[1, col]
        for name in dict.fromkeys(p.name for p in sweep.values):
            pts = [p for p in sweep.values if p.metric == metric and p.name == name and p.mean is not None]
            if pts:
                top.errorbar([p.x for p in pts], [p.mean for p in pts], yerr=[p.std or 0.0 for p in pts],
                             marker="o", capsize=3, label=name, color=colour[name])
        for name in dict.fromkeys(p.name for p in sweep.gaps):
            pts = [p for p in sweep.gaps if p.metric == metric and p.name == name and p.mean is not None]
            if pts:
                err = [[p.mean - p.ci[0] if p.ci else 0.0 for p in pts], [p.ci[1] - p.mean if p.ci else 0.0 for p in pts]]
                bottom.errorbar([p.x for p in pts], [p.mean for p in pts], yerr=err, marker="s", capsize=3,
                                label=f"{name} − {sweep.reference}", color=colour.get(name))
        bottom.axhline(0.0, color="0.4", linewidth=0.8, linestyle="--")
        label = labels.get(metric, metric)
        top.set_title(label, fontsize=10)
        top.set_ylabel(f"{label} (%)")
        bottom.set_ylabel("gap (points)")
        bottom.set_xlabel(sweep.x_key)
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"{sweep.title}\n{sweep.group}, {sweep.protocol} protocol"
                 + (" — REDUCED SETTING" if sweep.reduced else ""), fontsize=9)
    return to_png(fig)
