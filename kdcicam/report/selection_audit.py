"""The selection audit: each cell's reported number beside what test-split choices would have printed: the
checkpoint picked on the test split (max over the per-epoch test numbers), θ chosen on the validation split
or on the test split itself (oracle), and the test resize chosen likewise
(:mod:`kdcicam.evaluation.selection`). Values in percent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from kdcicam.analysis.results import POINT_METRICS, PolicyLookup
from kdcicam.evaluation.selection import (
    DECISION_METRIC,
    TEACHER_DECISION_METRIC,
    EpochAudit,
    select_on_of,
)
from kdcicam.registry.definitions import Cell, Table
from kdcicam.store import RunInfo

AUDIT_METRICS: tuple[str, ...] = POINT_METRICS  # the selection audit's metrics


AUDIT_PROTOCOL = "paper"  # per-epoch numbers (checkpoint choice) are measured under this protocol


@dataclass(frozen=True)
class AuditRow:
    """One (cell, metric) of the selection audit: the cell's number beside what test-split choices give.

    Values in percent, means over the cell's seeds; each Δ is the mean over the seeds that have
    both numbers of (that number − the reported one).
    """

    table: str
    cell: str
    name: str
    select: str  # the cell's checkpoint criterion
    metric: str
    n: int  # seeds with a reported number
    reported: float | None  # as the table shows it: the cell's checkpoint, the report's θ policy
    best_of_n: float | None  # the best seed's reported number (None for n < 2)
    test_selected: float | None  # the best epoch on the test split (max over per-epoch test numbers)
    d_test_selected: float | None
    n_audited: int  # seeds with per-epoch test numbers
    fixed_theta: float | None  # at the run's own θ (eval.theta)
    d_fixed_theta: float | None
    val_theta: float | None  # at the θ chosen on the validation split
    d_val_theta: float | None
    oracle_theta: float | None  # at the θ chosen on the test split (upper bound)
    d_oracle_theta: float | None
    thetas: tuple[float | None, float | None, float | None]  # mean θ: fixed, val-chosen, oracle
    val_resize: float | None  # at the test resize S chosen on the validation split (eval.resize_grid)
    d_val_resize: float | None
    oracle_resize: float | None  # at the S chosen on the test split (upper bound)
    d_oracle_resize: float | None
    select_on: str  # the runs' eval.select_on: "val", "test" or "val+test"
    test_decisions: float | None  # mean over seeds: epochs whose test numbers picked a checkpoint (+ teachers')


@dataclass(frozen=True)
class AuditTable:
    """The selection audit of one scope under one protocol (the registry's tables, not scatters)."""

    protocol: str
    rows: tuple[AuditRow, ...]
    notes: tuple[str, ...] = ()

    @property
    def has_data(self) -> bool:
        """Whether any row has a number beyond the reported one (else only a note is shown)."""
        return any(r.test_selected is not None or r.val_theta is not None or r.oracle_theta is not None
                   for r in self.rows)


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _mean_delta(pairs: Sequence[tuple[float | None, float | None]]) -> float | None:
    """Mean of (b - a) over the pairs where both are known."""
    return _mean([b - a for a, b in pairs if a is not None and b is not None])


def _audit_row(table: Table, cell: Cell, metric: str, protocol: str, runs: dict[int, str],
               reported: dict[int, float], runs_by_id: Mapping[str, RunInfo], lookup: PolicyLookup,
               audits: Mapping[str, EpochAudit]) -> AuditRow:
    """One (cell, metric) of the audit from the cell's runs (one per seed)."""
    def policy(run_id: str, name: str, which: str, scale: float = 100.0) -> float | None:
        value = lookup.get((run_id, protocol, cell.select, which), {}).get(name)
        return None if value is None else scale * value

    seeds = sorted(runs)
    rep = {s: reported.get(s) for s in seeds}
    test_sel: dict[int, float | None] = {}
    for s in seeds:
        audit = audits.get(runs[s]) if protocol == AUDIT_PROTOCOL else None
        test_sel[s] = 100.0 * audit.best[metric] if audit is not None and metric in audit.best else None
    fixed = {s: policy(runs[s], metric, "fixed") for s in seeds}
    val = {s: policy(runs[s], metric, "val") for s in seeds}
    oracle = {s: policy(runs[s], metric, "oracle") for s in seeds}
    def resize(run_id: str, which: str) -> float | None:  # the resize audit is stored for the last checkpoint
        if protocol != "paper" or cell.select != "last":
            return None
        value = lookup.get((run_id, protocol, "last", "fixed"), {}).get(f"{metric}@{which}")
        return None if value is None else 100.0 * value

    val_s = {s: resize(runs[s], "resize_val") for s in seeds}
    oracle_s = {s: resize(runs[s], "resize_oracle") for s in seeds}
    thetas = tuple(_mean([t for t in (policy(runs[s], "theta", which, 1.0) for s in seeds) if t is not None])
                   for which in ("fixed", "val", "oracle"))
    decisions = []
    for s in seeds:
        got = [policy(runs[s], name, "fixed", 1.0) for name in (DECISION_METRIC, TEACHER_DECISION_METRIC)]
        if got[0] is not None:
            decisions.append(sum(v for v in got if v is not None))
    known = [v for v in rep.values() if v is not None]
    select_on = "+".join(sorted({select_on_of(runs_by_id[r].config) for r in runs.values() if r in runs_by_id}))
    return AuditRow(
        table=table.key, cell=cell.key, name=cell.name, select=cell.select, metric=metric, n=len(known),
        reported=_mean(known), best_of_n=max(known) if len(known) >= 2 else None,
        test_selected=_mean([v for v in test_sel.values() if v is not None]),
        d_test_selected=_mean_delta([(rep[s], test_sel[s]) for s in seeds]),
        n_audited=sum(v is not None for v in test_sel.values()),
        fixed_theta=_mean([v for v in fixed.values() if v is not None]),
        d_fixed_theta=_mean_delta([(rep[s], fixed[s]) for s in seeds]),
        val_theta=_mean([v for v in val.values() if v is not None]),
        d_val_theta=_mean_delta([(rep[s], val[s]) for s in seeds]),
        oracle_theta=_mean([v for v in oracle.values() if v is not None]),
        d_oracle_theta=_mean_delta([(rep[s], oracle[s]) for s in seeds]),
        thetas=thetas,  # type: ignore[arg-type]
        val_resize=_mean([v for v in val_s.values() if v is not None]),
        d_val_resize=_mean_delta([(rep[s], val_s[s]) for s in seeds]),
        oracle_resize=_mean([v for v in oracle_s.values() if v is not None]),
        d_oracle_resize=_mean_delta([(rep[s], oracle_s[s]) for s in seeds]),
        select_on=select_on or "val", test_decisions=_mean(decisions))


REPORTED_AT = {"fixed": "the run's own θ (eval.theta)", "val": "θ chosen on the validation split",
               "oracle": "θ chosen on the test split: an upper bound"}  # the Reported column's θ, per policy


def audit_notes(threshold_policy: str) -> tuple[str, ...]:
    """The audit's legend; its Reported column is at the report's θ policy."""
    return (
        f"Reported: the number the table shows (the cell's checkpoint, {REPORTED_AT[threshold_policy]}). "
        "Test-selected: the best per-epoch test number (each metric at its own best epoch; paper protocol, the "
        "run's own θ): what picking the checkpoint on the test set would have printed. θ fixed: at the run's own θ "
        "(eval.theta). θ val: θ chosen on the validation split (eval.theta_metric, GT-known Loc by default), applied "
        "to test. θ oracle: θ chosen on the test split itself: an upper bound, never a headline. S val / S oracle "
        "(paper protocol, last checkpoint, when eval.resize_grid is set): the test resize chosen on the validation "
        "split / on the test split. Δ: against the reported number, over the seeds that have both.",
    )


def build_audit(tables: Sequence[Table], protocol: str, values: pd.DataFrame, runs_by_id: Mapping[str, RunInfo],
                lookup: PolicyLookup, audits: Mapping[str, EpochAudit], threshold_policy: str = "fixed") -> AuditTable:
    """The selection audit of one scope under one protocol: every run cell of the given tables.

    Args:
        tables: the registry tables to audit (scatter tables are skipped).
        protocol: "paper" | "standard".
        values: the scope's :func:`cell_frame` rows at ``threshold_policy``, one run per seed.
        runs_by_id: the scope's finished runs.
        lookup: :func:`policy_lookup` of the final metrics.
        audits: run id -> its per-epoch test audit (:func:`kdcicam.evaluation.selection.epoch_audit`).
        threshold_policy: whose θ ``values`` hold ("fixed", "val" or "oracle"), named in the legend.

    Returns:
        One row per (cell that ran, metric of :data:`AUDIT_METRICS`).
    """
    rows = []
    here = values[values["protocol"] == protocol] if not values.empty else values
    for table in tables:
        if table.kind != "table":
            continue
        for cell in table.cells:
            cell_rows = here[(here["table"] == table.key) & (here["cell"] == cell.key)]
            if cell_rows.empty:
                continue
            runs = {int(seed): str(run_id) for seed, run_id in zip(cell_rows["seed"], cell_rows["run_id"])}
            for metric in AUDIT_METRICS:
                m = cell_rows[cell_rows["metric"] == metric]
                reported = {int(seed): float(v) for seed, v in zip(m["seed"], m["value"])}
                rows.append(_audit_row(table, cell, metric, protocol, runs, reported, runs_by_id, lookup, audits))
    notes = list(audit_notes(threshold_policy))
    if protocol != AUDIT_PROTOCOL:
        notes.append(f"Per-epoch test numbers are measured under the {AUDIT_PROTOCOL} protocol only: no "
                     "test-selected column here.")
    elif rows and any(r.n_audited < r.n for r in rows):
        notes.append("Cells without a test-selected number ran with eval.audit_epochs = false (the quick and "
                     "paper profiles' default; medium audits) or before the audit existed.")
    if any("test" in r.select_on.split("+") for r in rows):
        notes.append("select_on test: the run picked its checkpoints on the TEST split (the authors' behaviour); "
                     "its reported number is already test-selected.")
    return AuditTable(protocol=protocol, rows=tuple(rows), notes=tuple(notes))
