"""The report's numbers: finished runs of the store -> one table per (scope, registry table, protocol).

A *scope* is where runs are comparable: dataset (and its fingerprint), backbone, profile and
variant. A cell's number is the mean over its seeds of the run labelled ``{table: [cell]}`` in
that scope, read at the cell's checkpoint selection (``select``), the fixed θ and the test split.
Our values are fractions in the store and percent here, the unit of the paper's numbers that
stand beside them. Nothing is rendered in this module: templates get these dataclasses.

Beside each mean: what the best of the N seeds would have printed, and "≈" on a change against
the reference row smaller than the two rows' seed spread. The *selection audit*
(:func:`build_audit`) puts each cell's number next to what test-split choices would have printed:
the checkpoint picked on the test split (max over the per-epoch test numbers) and θ chosen on the
validation split or on the test split itself (oracle) (:mod:`kdcicam.evaluation.selection`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from kdcicam.analysis.stats import mean_std_ci
from kdcicam.evaluation.selection import (
    DECISION_METRIC,
    TEACHER_DECISION_METRIC,
    EpochAudit,
    select_on_of,
)
from kdcicam.registry.definitions import Cell, Table
from kdcicam.store import RunInfo

if TYPE_CHECKING:
    from kdcicam.report.sweep import SweepData
from kdcicam.analysis.results import (
    DEFAULT_THRESHOLD_POLICY,
    POINT_METRICS,
    PolicyLookup,
    ScopeKey,
    ablate_command,
    config_value,
)

METRIC_LABELS = {
    "top1_cls": "Top-1 Cls", "top5_cls": "Top-5 Cls", "top1_loc": "Top-1 Loc",
    "top5_loc": "Top-5 Loc", "gt_known_loc": "GT-known Loc", "maxboxacc_v2": "MaxBoxAccV2",
}


EXTRA_METRIC = "maxboxacc_v2"  # shown in every table although the paper's tables lack it


AUDIT_METRICS: tuple[str, ...] = POINT_METRICS  # the selection audit's metrics


AUDIT_PROTOCOL = "paper"  # per-epoch numbers (checkpoint choice) are measured under this protocol


def _distinct(values: Iterable[Any]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        text = "-" if value is None else str(value)
        if text not in out:
            out.append(text)
    return tuple(sorted(out))


def _short_commit(commit: str) -> str:
    """A commit as provenance shows it: 12 hex digits, and "+dirty" when the tree had uncommitted changes."""
    head, plus, tail = commit.partition("+")
    return head[:12] + plus + tail


@dataclass(frozen=True)
class Provenance:
    """What produced a table or figure: shown beside every one of them."""

    dataset: str
    fingerprints: tuple[str, ...]
    backbone: str
    widths: tuple[str, ...]
    image_sizes: tuple[str, ...]
    epochs: tuple[str, ...]
    profile: str
    variant: str
    seeds: tuple[str, ...]
    devices: tuple[str, ...]
    torch_versions: tuple[str, ...]
    git_commits: tuple[str, ...]
    n_runs: int
    generated: str

    def items(self) -> list[tuple[str, str]]:
        """(label, value) pairs in display order."""
        def join(values: tuple[str, ...]) -> str:
            return ", ".join(values) if values else "-"

        return [
            ("dataset", f"{self.dataset} (fingerprint {join(self.fingerprints)})"),
            ("backbone", f"{self.backbone}, width {join(self.widths)}"),
            ("image size", join(self.image_sizes)),
            ("epochs", join(self.epochs)),
            ("profile / variant", f"{self.profile} / {self.variant}"),
            ("seeds", join(self.seeds)),
            ("runs", str(self.n_runs)),
            ("device", join(self.devices)),
            ("torch", join(self.torch_versions)),
            ("git commit", join(self.git_commits)),
            ("generated", self.generated),
        ]

    def line(self) -> str:
        """All of it on one line."""
        return "; ".join(f"{label}: {value}" for label, value in self.items())


def provenance(scope: ScopeKey, runs: Sequence[RunInfo], generated: str) -> Provenance:
    """The provenance of the runs behind one table or figure of ``scope``."""
    def size(run: RunInfo) -> str:
        crop = config_value(run.config, "data.crop")
        resize, test_crop = config_value(run.config, "eval.test_resize"), config_value(run.config, "eval.test_crop")
        return f"crop {crop} (test {resize}→{test_crop})"

    return Provenance(
        dataset=scope.dataset,
        fingerprints=tuple(fp[:12] for fp in _distinct(r.dataset_fingerprint for r in runs)),
        backbone=scope.backbone,
        widths=_distinct(config_value(r.config, "model.width") for r in runs),
        image_sizes=_distinct(size(r) for r in runs),
        epochs=_distinct(config_value(r.config, "train.epochs") for r in runs),
        profile=scope.profile,
        variant=scope.variant,
        seeds=tuple(str(s) for s in sorted({r.seed for r in runs})),
        devices=_distinct(r.device for r in runs),
        torch_versions=_distinct(r.torch_version for r in runs),
        git_commits=_distinct(_short_commit(r.git_commit) if r.git_commit else None for r in runs),
        n_runs=len(runs),
        generated=generated,
    )


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
    def max_seeds(self) -> int:
        """The most seeds any row has (a "best of N" line is shown when it is 2 or more)."""
        return max((len(row.seeds) for row in self.rows), default=0)


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
    reported: float | None  # as the table shows it: the cell's checkpoint, fixed θ
    best_of_n: float | None  # the best seed's reported number (None for n < 2)
    test_selected: float | None  # the best epoch on the test split (max over per-epoch test numbers)
    d_test_selected: float | None
    n_audited: int  # seeds with per-epoch test numbers
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


@dataclass(frozen=True)
class ScopeData:
    key: ScopeKey
    provenance: Provenance
    tables: dict[str, tuple[TableData, ...]]  # protocol -> tables
    points: dict[str, pd.DataFrame]  # protocol -> C-L scatter points
    runs: tuple[RunInfo, ...]
    audit: dict[str, AuditTable] = field(default_factory=dict)  # protocol -> selection audit
    claims: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # protocol -> ClaimResult rows (kdcicam.analysis.claims)
    mechanism: Any = None  # kdcicam.report.mechanism.MechanismTable (synthetic benchmark), or None


@dataclass(frozen=True)
class ReportData:
    generated: str
    store_url: str
    protocols: tuple[str, ...]
    table_keys: tuple[str, ...]
    scopes: tuple[ScopeData, ...]
    n_unfinished: int = 0  # runs in the store not finished (not shown)
    sweeps: tuple[SweepData, ...] = ()  # the registry's sweep tables (kind = "sweep"), across scopes
    threshold_policy: str = DEFAULT_THRESHOLD_POLICY  # whose θ the localization numbers use: fixed | val
    variants: dict[str, Any] = field(default_factory=dict)  # protocol -> VariantAgreement (kdcicam.analysis.variants)


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
        not_run_command=ablate_command(table.key, scope, 1 + max((r.seed for r in scope_runs), default=0))
        if missing else None,
        provenance=provenance(scope, runs, generated) if runs else None, notes=tuple(notes))


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


INERT_AD_NOTE = ("Variant paper: the activation distillation of Eq. 13-15 is numerically inert (at 200 classes, "
                 "14x14 maps and T = 15 its gradient is ~1e-13 against ~0.2 for the cross-entropy), so a row "
                 "with the loc teacher trains as the same row without it (docs/fidelity.md L9).")


AUDIT_NOTES = (
    "Reported: the number the table shows (the cell's checkpoint, fixed θ). Test-selected: the best "
    "per-epoch test number (each metric at its own best epoch; paper protocol, fixed θ): what picking the "
    "checkpoint on the test set would have printed. θ val: θ chosen on the validation split (eval.theta_metric, "
    "GT-known Loc by default), applied to test. θ oracle: θ chosen on the test split itself: an upper bound, "
    "never a headline. S val / S oracle (paper protocol, last checkpoint, when eval.resize_grid is set): the "
    "test resize chosen on the validation split / on the test split. Δ: against the reported number, over the "
    "seeds that have both.",
)


def build_audit(tables: Sequence[Table], protocol: str, values: pd.DataFrame, runs_by_id: Mapping[str, RunInfo],
                lookup: PolicyLookup, audits: Mapping[str, EpochAudit]) -> AuditTable:
    """The selection audit of one scope under one protocol: every run cell of the given tables.

    Args:
        tables: the registry tables to audit (scatter tables are skipped).
        protocol: "paper" | "standard".
        values: the scope's :func:`cell_frame` rows at the fixed θ, one run per seed.
        runs_by_id: the scope's finished runs.
        lookup: :func:`policy_lookup` of the final metrics.
        audits: run id -> its per-epoch test audit (:func:`kdcicam.evaluation.selection.epoch_audit`).

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
    notes = list(AUDIT_NOTES)
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
