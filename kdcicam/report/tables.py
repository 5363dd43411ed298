"""The report's numbers: finished runs of the store -> one table per (scope, registry table, protocol).

A *scope* is where runs are comparable: dataset (and its fingerprint), backbone, profile and
variant. A cell's number is the mean over its seeds of the run labelled ``{table: [cell]}`` in
that scope, read at the cell's checkpoint selection (``select``), the fixed θ and the test split.
Our values are fractions in the store and percent here, the unit of the paper's numbers that
stand beside them. Nothing is rendered in this module: templates get these dataclasses.

Beside each mean: what the best of the N seeds would have printed, and "≈" on a change against
the reference row smaller than the two rows' seed spread. Provenance is :mod:`kdcicam.report.provenance`,
the selection audit :mod:`kdcicam.report.selection_audit`, the report around the tables
:mod:`kdcicam.report.report_data`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from kdcicam.analysis.results import ScopeKey, ablate_command
from kdcicam.analysis.stats import mean_std_ci
from kdcicam.registry.definitions import Table
from kdcicam.report.provenance import Provenance, provenance
from kdcicam.store import RunInfo

METRIC_LABELS = {
    "top1_cls": "Top-1 Cls", "top5_cls": "Top-5 Cls", "top1_loc": "Top-1 Loc",
    "top5_loc": "Top-5 Loc", "gt_known_loc": "GT-known Loc", "maxboxacc_v2": "MaxBoxAccV2",
}


EXTRA_METRIC = "maxboxacc_v2"  # shown in every table although the paper's tables lack it


@dataclass(frozen=True)
class MetricValue:
    """One (cell, metric) of a table, in percent."""

    mean: float | None  # our mean over seeds (the best run for a scatter table); None = no value
    std: float | None  # sample std over seeds; None for n < 2
    n: int  # seeds (runs) with a value
    ci: tuple[float, float] | None  # 95% t interval of the mean; None for n < 2
    paper: float | None  # the paper's number for the scope's paper scope
    delta: float | None  # ours minus the reference row's ours
    paper_delta: float | None  # the paper's number minus the paper's reference row
    agree: bool | None  # do the two deltas have the same sign; None = not applicable
    best: float | None = None  # what the best of the n seeds would have printed; None for n < 2
    within_noise: bool = False  # |delta| < the seed spread (larger std over seeds of the two rows)


@dataclass(frozen=True)
class RowData:
    cell: str
    name: str
    select: str
    reference: bool
    seeds: tuple[int, ...]
    run_ids: tuple[str, ...]
    values: dict[str, MetricValue]

    @property
    def ran(self) -> bool:
        return bool(self.run_ids)

    @property
    def has_paper(self) -> bool:
        """Whether the paper reports any number for this row (else no "paper" line is drawn)."""
        return any(v.paper is not None for v in self.values.values())


@dataclass(frozen=True)
class TableData:
    key: str
    title: str
    caption: str
    kind: str  # "table" | "scatter"
    protocol: str
    reference_cell: str | None
    reference_name: str | None
    metrics: tuple[str, ...]
    rows: tuple[RowData, ...]
    not_run_command: str | None  # set when some cell has no finished run
    provenance: Provenance | None  # None when no cell has run
    notes: tuple[str, ...] = ()

    @property
    def n_not_run(self) -> int:
        return sum(not row.ran for row in self.rows)

    @property
    def ran(self) -> bool:
        """Whether any cell has a finished run in this scope."""
        return any(row.ran for row in self.rows)

    @property
    def short_title(self) -> str:
        """The title up to its colon: "Table 4", "Figure 1(b)"."""
        return self.title.split(":")[0]

    @property
    def max_seeds(self) -> int:
        """The most seeds any row has (a "best of N" line is shown when it is 2 or more)."""
        return max((len(row.seeds) for row in self.rows), default=0)


@dataclass(frozen=True)
class NotRunTables:
    """A scope's tables with no finished run in any cell: the report names them on one line instead of
    drawing them."""

    keys: tuple[str, ...]  # registry table keys, in the report's order
    names: tuple[str, ...]  # their short titles ("Table 4", "Figure 1(b)")
    command: str  # the one ``kdcicam ablate`` command that runs all of them in the scope


def seeds_to_run(scope_runs: Sequence[RunInfo]) -> int:
    """How many seeds (0..n-1) a scope's missing cells should run at: as many as its runs reached."""
    return 1 + max((r.seed for r in scope_runs), default=0)


def not_run_tables(tables: Mapping[str, Sequence[TableData]], scope: ScopeKey,
                   scope_runs: Sequence[RunInfo]) -> NotRunTables | None:
    """The tables of a scope that no finished run labels, under every protocol.

    Args:
        tables: protocol -> the scope's tables (:func:`build_table`).
        scope: the scope.
        scope_runs: the scope's finished runs (for ``--seeds``, as :func:`build_table` counts them).

    Returns:
        The tables to collapse, with the command that runs them; None when every table has a run.
    """
    ran = {t.key for items in tables.values() for t in items if t.ran}
    empty = {t.key: t.short_title for items in tables.values() for t in items if t.key not in ran}
    if not empty:
        return None
    return NotRunTables(keys=tuple(empty), names=tuple(empty.values()),
                        command=ablate_command(tuple(empty), scope, seeds_to_run(scope_runs)))


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


NOISE_NOTE = ("≈: the change is smaller than the seed spread (the larger std over seeds of the two rows): "
              "seeds alone move the numbers this much.")


def within_seed_spread(delta: float, std_a: float | None, std_b: float | None) -> bool:
    """Whether a change between two rows is smaller than their seed spread.

    The spread is the larger of the two rows' sample std over seeds (a row with one seed has
    none); with no spread on either side nothing can be said (False).
    """
    spreads = [s for s in (std_a, std_b) if s is not None and not math.isnan(s)]
    return bool(spreads) and abs(delta) < max(spreads)


def build_table(table: Table, scope: ScopeKey, protocol: str, values: pd.DataFrame,
                scope_runs: Sequence[RunInfo], generated: str, superseded: bool = False) -> TableData:
    """One registry table in one scope under one protocol.

    Args:
        table: the registry table.
        scope: where the runs come from.
        protocol: "paper" | "standard".
        values: this (scope, table)'s rows of :func:`cell_frame` (one run per seed unless the
            table is a scatter, whose every run is a point).
        scope_runs: the scope's finished runs (for provenance).
        generated: the report's timestamp.
        superseded: some seed of a cell had several runs (only the last finished is in ``values``).

    Returns:
        The table: mean ± std over seeds for ordinary tables, the best setting's mean for scatter tables,
        each beside the paper's number, with deltas against the reference row.
    """
    metrics = table.metrics + (() if EXTRA_METRIC in table.metrics else (EXTRA_METRIC,))
    here = values[values["protocol"] == protocol]
    scatter = table.kind == "scatter"
    stats: dict[str, dict[str, tuple[float | None, float | None, int, tuple[float, float] | None]]] = {}
    bests: dict[tuple[str, str], float | None] = {}
    for cell in table.cells:
        rows = here[here["cell"] == cell.key]
        per_metric = {}
        for metric in metrics:
            vals = rows.loc[rows["metric"] == metric, "value"].to_numpy(float)
            if scatter:  # the best training setting, each setting at its mean over seeds (as the claims judge)
                by_setting = rows[rows["metric"] == metric].groupby("setting")["value"].mean()
                per_metric[metric] = (float(by_setting.max()) if vals.size else None, None, int(vals.size), None)
                continue
            mean, std, n, lo, hi = mean_std_ci(vals)
            per_metric[metric] = (None if n == 0 else mean, None if n < 2 else std, n,
                                  None if n < 2 or math.isnan(lo) else (lo, hi))  # no interval without spread
            bests[(cell.key, metric)] = float(vals.max()) if n >= 2 else None  # "best of N seeds"
        stats[cell.key] = per_metric
    ref = None if scatter else table.reference_cell
    ref_cell = table.cell(ref) if ref else None
    out_rows = []
    for cell in table.cells:
        paper = cell.paper.get(scope.paper_scope, {})
        ref_paper = ref_cell.paper.get(scope.paper_scope, {}) if ref_cell else {}
        metric_values = {}
        for metric in metrics:
            mean, std, n, ci = stats[cell.key][metric]
            delta = paper_delta = agree = None
            noise = False
            if ref_cell is not None and cell.key != ref:
                ref_mean, ref_std = stats[ref][metric][0], stats[ref][metric][1]
                if mean is not None and ref_mean is not None:
                    delta = mean - ref_mean
                    noise = within_seed_spread(delta, std, ref_std)
                if metric in paper and metric in ref_paper:
                    paper_delta = paper[metric] - ref_paper[metric]
                if delta is not None and paper_delta is not None and _sign(paper_delta) != 0:
                    agree = _sign(delta) == _sign(paper_delta)
            metric_values[metric] = MetricValue(mean=mean, std=std, n=n, ci=ci, paper=paper.get(metric),
                                                delta=delta, paper_delta=paper_delta, agree=agree,
                                                best=bests.get((cell.key, metric)), within_noise=noise)
        cell_rows = values[values["cell"] == cell.key]  # any protocol: a run is a run
        out_rows.append(RowData(
            cell=cell.key, name=cell.name, select=cell.select, reference=cell.key == ref,
            seeds=tuple(sorted(set(int(s) for s in cell_rows["seed"]))),
            run_ids=tuple(sorted(set(cell_rows["run_id"]))), values=metric_values))
    used = set(values["run_id"])
    runs = [r for r in scope_runs if r.id in used]
    missing = any(not row.ran for row in out_rows)
    notes = []
    if scatter:
        notes.append("Each value is the cell's best training setting, at its mean over seeds (every run is a point "
                     "of the C-L figure).")
    if protocol == "standard" and any(c.paper for c in table.cells):
        notes.append("The paper's numbers were measured with the paper's protocol.")
    if superseded:
        notes.append("Some seeds have several runs; the one finished last is shown.")
    if any(v.within_noise for row in out_rows for v in row.values.values()):
        notes.append(NOISE_NOTE)
    if any(r.variant == "paper" for r in runs) and any(c.teachers and c.teachers.loc for c in table.cells):
        notes.append(INERT_AD_NOTE)
    return TableData(
        key=table.key, title=table.title, caption=table.caption, kind=table.kind, protocol=protocol,
        reference_cell=ref, reference_name=ref_cell.name if ref_cell else None, metrics=metrics,
        rows=tuple(out_rows),
        not_run_command=ablate_command(table.key, scope, seeds_to_run(scope_runs)) if missing else None,
        provenance=provenance(scope, runs, generated) if runs else None, notes=tuple(notes))


INERT_AD_NOTE = ("Variant paper: the activation distillation of Eq. 13-15 is numerically inert (at 200 classes, "
                 "14x14 maps and T = 15 its gradient is ~1e-13 against ~0.2 for the cross-entropy), so a row "
                 "with the loc teacher trains as the same row without it (docs/fidelity.md L9).")
