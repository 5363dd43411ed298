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
validation split or on the test split itself (oracle) (:mod:`kdcicam.selection`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

import math
import re
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from kdcicam.config import IDENTITY_IF_SET_KEYS, NON_IDENTITY_KEYS, RunConfig, to_dict
from kdcicam.registry import METRICS, Cell, Registry, Scope, Table
from kdcicam.report.stats import mean_std_ci
from kdcicam.selection import DECISION_METRIC, TEACHER_DECISION_METRIC, EpochAudit, select_on_of
from kdcicam.store import RunInfo

if TYPE_CHECKING:
    from kdcicam.report.sweep import SweepData

PROTOCOL_NAMES: tuple[str, ...] = ("paper", "standard")
METRIC_LABELS = {
    "top1_cls": "Top-1 Cls", "top5_cls": "Top-5 Cls", "top1_loc": "Top-1 Loc",
    "top5_loc": "Top-5 Loc", "gt_known_loc": "GT-known Loc", "maxboxacc_v2": "MaxBoxAccV2",
}
EXTRA_METRIC = "maxboxacc_v2"  # shown in every table although the paper's tables lack it
METHODS: tuple[str, ...] = ("Base (NL-CCAM)", "CI-CAM", "KD-CI-CAM", "cls teacher", "loc teacher")
POINT_METRICS: tuple[str, ...] = ("top1_cls", "top1_loc", "gt_known_loc")
AUDIT_METRICS: tuple[str, ...] = POINT_METRICS  # the selection audit's metrics
AUDIT_PROTOCOL = "paper"  # per-epoch numbers (checkpoint choice) are measured under this protocol
_DATASET_LABELS = {"cub": "CUB", "ilsvrc": "ILSVRC", "synthetic": "synthetic", "wsol": "WSOL"}
_BACKBONE_LABELS = {"vgg16": "VGG16", "inceptionv3": "InceptionV3"}
_DEFAULT_VARIANT = "reference"  # RunConfig's default: the ablate command need not name it
_THRESHOLD_POLICY = "fixed"
_SPLIT = "test"


# ------------------------------------------------------------------------------------ scopes

@dataclass(frozen=True)
class ScopeKey:
    """Where runs are comparable: same data, backbone, profile, variant and checkpoint-selection split."""

    dataset: str
    backbone: str
    profile: str
    variant: str
    fingerprint: str | None = None
    select_on: str = "val"  # eval.select_on: "test" runs picked checkpoints on the test split

    @property
    def paper_scope(self) -> str:
        """The paper's scope whose numbers stand beside ours ("cub/vgg16" for synthetic/vgg16)."""
        return Scope(self.dataset, self.backbone).paper_scope

    @property
    def paper_label(self) -> str:
        """The paper scope in words, e.g. "CUB, VGG16"."""
        dataset, backbone = self.paper_scope.split("/")
        return f"{_DATASET_LABELS.get(dataset, dataset)}, {_BACKBONE_LABELS.get(backbone, backbone)}"

    @property
    def reduced(self) -> bool:
        """Only the paper profile on real data is the paper's setting; everything else is reduced."""
        return self.profile != "paper" or self.dataset == "synthetic"

    @property
    def title(self) -> str:
        fp = f" (data {self.fingerprint[:10]})" if self.fingerprint else ""
        selected = "" if self.select_on == "val" else f" / checkpoints selected on {self.select_on.upper()}"
        return (f"{self.dataset}{fp} / {self.backbone} / profile {self.profile} / "
                f"variant {self.variant}{selected}")

    @property
    def slug(self) -> str:
        """A file-name-safe identifier of the scope."""
        parts = [self.dataset, self.backbone, self.profile, self.variant]
        if self.fingerprint:
            parts.append(self.fingerprint[:10])
        if self.select_on != "val":
            parts.append(f"selected-on-{self.select_on}")
        return re.sub(r"[^A-Za-z0-9]+", "-", "-".join(parts)).strip("-").lower()

    def sort_key(self) -> tuple[str, ...]:
        return (self.dataset, self.backbone, self.profile, self.variant, self.fingerprint or "", self.select_on)


def scope_of(run: RunInfo) -> ScopeKey:
    """The scope a run belongs to (backbone from its resolved config)."""
    backbone = str(run.config.get("model", {}).get("backbone", "?"))
    return ScopeKey(dataset=run.dataset, backbone=backbone, profile=run.profile, variant=run.variant,
                    fingerprint=run.dataset_fingerprint, select_on=select_on_of(run.config))


def ablate_command(table: str, scope: ScopeKey, n_seeds: int = 1) -> str:
    """The ``kdcicam ablate`` command that would run a table's cells in a scope.

    Args:
        table: registry table key.
        scope: where the cells are missing.
        n_seeds: seeds 0..n-1 the scope's other cells ran at (``--seeds``; 1 is the default).
    """
    cmd = f"kdcicam ablate {table}"
    if scope.dataset != "synthetic":
        cmd += f" --dataset {scope.dataset} --data PATH"
    cmd += f" --backbone {scope.backbone} --profile {scope.profile}"
    if scope.variant != _DEFAULT_VARIANT:
        cmd += f" --variant {scope.variant}"
    if scope.select_on != "val":
        cmd += f" --set eval.select_on={scope.select_on}"
    if n_seeds > 1:
        cmd += f" --seeds {n_seeds}"
    return cmd


def method_of(role: str | None, context_pool: bool = True) -> str:
    """The method a run (or a registry cell) stands for, as the C-L scatter colours it."""
    if role == "cls_teacher":
        return "cls teacher"
    if role == "loc_teacher":
        return "loc teacher"
    if role == "distilled":
        return "KD-CI-CAM"
    return "CI-CAM" if context_pool else "Base (NL-CCAM)"


def run_method(run: RunInfo) -> str:
    return method_of(run.role, bool(run.config.get("model", {}).get("context_pool", True)))


# -------------------------------------------------------------------------------- provenance

def _distinct(values: Iterable[Any]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        text = "-" if value is None else str(value)
        if text not in out:
            out.append(text)
    return tuple(sorted(out))


def config_value(config: dict[str, Any], dotted: str) -> Any:
    """A stored run config's value at a dotted key (None where it has none)."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


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


# ------------------------------------------------------------------------------ cell values

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
    claims: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # protocol -> ClaimResult rows (kdcicam.claims)


@dataclass(frozen=True)
class ReportData:
    generated: str
    store_url: str
    protocols: tuple[str, ...]
    table_keys: tuple[str, ...]
    scopes: tuple[ScopeData, ...]
    n_unfinished: int = 0  # runs in the store not finished (not shown)
    sweeps: tuple[SweepData, ...] = ()  # the registry's sweep tables (kind = "sweep"), across scopes
    threshold_policy: str = _THRESHOLD_POLICY  # whose θ the localization numbers use: fixed | val
    variants: dict[str, Any] = field(default_factory=dict)  # protocol -> VariantAgreement (kdcicam.variants)


def _finals_index(finals: pd.DataFrame,
                  threshold_policy: str = _THRESHOLD_POLICY) -> dict[tuple[str, str, str], dict[str, float]]:
    """(run_id, protocol, selection) -> {metric: value in percent} under a θ policy on the test split."""
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    if finals.empty:
        return out
    rows = finals[(finals["threshold_policy"] == threshold_policy) & (finals["split"] == _SPLIT)]
    for run_id, protocol, selection, name, value in rows[
            ["run_id", "protocol", "selection", "name", "value"]].itertuples(index=False):
        if name in METRICS and not math.isnan(value):
            out.setdefault((run_id, protocol, selection), {})[name] = 100.0 * float(value)
    return out


def cell_frame(reg: Registry, runs: Sequence[RunInfo], finals: pd.DataFrame,
               threshold_policy: str = _THRESHOLD_POLICY) -> pd.DataFrame:
    """Every labelled cell value of every finished run, in long format.

    Args:
        reg: the registry (cells give the checkpoint selection to read).
        runs: finished runs.
        finals: :meth:`Store.final_metrics` of those runs.
        threshold_policy: which θ policy's numbers ("fixed", "val", "oracle").

    Returns:
        Columns scope (ScopeKey), table, cell, seed, run_id, finished (ISO time), protocol, metric,
        value (percent), setting (:func:`training_setting`: the same for every seed of one training).
        Labels naming a table or cell the registry lacks are skipped.
    """
    index = _finals_index(finals, threshold_policy)
    rows = []
    for run in runs:
        scope = scope_of(run)
        finished = run.finished_at.isoformat() if run.finished_at else ""
        setting = training_setting(run.config)
        for table_key, cells in run.labels.items():
            table = reg.tables.get(table_key)
            if table is None:
                continue
            for cell_key in cells:
                cell = next((c for c in table.cells if c.key == cell_key), None)
                if cell is None:
                    continue
                for protocol in PROTOCOL_NAMES:
                    for metric, value in index.get((run.id, protocol, cell.select), {}).items():
                        rows.append((scope, table_key, cell_key, run.seed, run.id, finished, protocol,
                                     metric, value, setting))
    return pd.DataFrame(rows, columns=["scope", "table", "cell", "seed", "run_id", "finished", "protocol",
                                       "metric", "value", "setting"])


def latest_per(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Keep the rows of one run per ``keys`` (e.g. cell and seed): the run finished last (a rerun
    supersedes; ties by run id). ``frame`` has columns ``finished`` and ``run_id``, any rows per run."""
    if frame.empty:
        return frame
    latest = frame.sort_values(["finished", "run_id"]).drop_duplicates(list(keys), keep="last")[[*keys, "run_id"]]
    return frame.merge(latest, on=[*keys, "run_id"])


def latest_per_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep one run per (scope, table, cell, seed): the one finished last (a rerun supersedes)."""
    return latest_per(frame, ["scope", "table", "cell", "seed"])


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
                                  None if n < 2 else (lo, hi))
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
    return TableData(
        key=table.key, title=table.title, caption=table.caption, kind=table.kind, protocol=protocol,
        reference_cell=ref, reference_name=ref_cell.name if ref_cell else None, metrics=metrics,
        rows=tuple(out_rows),
        not_run_command=ablate_command(table.key, scope, 1 + max((r.seed for r in scope_runs), default=0))
        if missing else None,
        provenance=provenance(scope, runs, generated) if runs else None, notes=tuple(notes))


def scatter_points(runs: Sequence[RunInfo], finals: pd.DataFrame, reg: Registry, protocol: str,
                   threshold_policy: str = _THRESHOLD_POLICY) -> pd.DataFrame:
    """One C-L scatter point per (run, checkpoint selection) the run is reported at.

    A run is read at the selections its labelled cells use (a loc teacher at both Table 5
    selections), else at its last checkpoint; selections without Top-1 Cls are skipped.

    Returns:
        Columns run_id, method, seed, selection, setting (:func:`training_setting`), top1_cls,
        top1_loc, gt_known_loc (percent; NaN where missing).
    """
    index = _finals_index(finals, threshold_policy)
    rows = []
    for run in runs:
        selections = set()
        for table_key, cells in run.labels.items():
            table = reg.tables.get(table_key)
            for cell in (table.cells if table else ()):
                if cell.key in cells:
                    selections.add(cell.select)
        if not selections:
            selections = {"last"}
        for selection in sorted(selections):
            values = index.get((run.id, protocol, selection), {})
            if "top1_cls" not in values:
                continue
            rows.append((run.id, run_method(run), f"seed {run.seed}", selection, training_setting(run.config),
                         *(values.get(m, math.nan) for m in POINT_METRICS)))
    return pd.DataFrame(rows, columns=["run_id", "method", "seed", "selection", "setting", *POINT_METRICS])


# what differs between the seeds of one training setting: the seed, and the teacher runs of that seed
# (whether a teacher is there is part of the setting)
_SEED_KEY = "train.seed"
_TEACHER_RUN_KEYS = ("teachers.cls_run", "teachers.loc_run")


@functools.cache
def _default_config() -> dict[str, Any]:
    return to_dict(RunConfig())


def training_setting(config: dict[str, Any]) -> str:
    """A short key naming a run's training setting, the same for every seed of it: the hash of its
    stored config without the seed, with each teacher run reduced to whether there is one, and
    without what is not part of a run's identity (:data:`kdcicam.config.NON_IDENTITY_KEYS`, and
    :data:`kdcicam.config.IDENTITY_IF_SET_KEYS` at their defaults or not stored)."""
    defaults = _default_config()

    def strip(node: Any, prefix: str) -> Any:
        if not isinstance(node, dict):
            return node
        out = {}
        for k, v in node.items():
            dotted = f"{prefix}{k}"
            if dotted == _SEED_KEY or dotted in NON_IDENTITY_KEYS:
                continue
            if dotted in IDENTITY_IF_SET_KEYS and v == config_value(defaults, dotted):
                continue
            out[k] = (v is not None) if dotted in _TEACHER_RUN_KEYS else strip(v, f"{dotted}.")
        return out

    text = json.dumps(strip(config, ""), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def paper_points(reg: Registry, paper_scope: str, table_keys: Sequence[str]) -> pd.DataFrame:
    """The paper's (Top-1 Cls, Top-1 Loc, GT-known Loc) points for a scope, one per distinct cell.

    Returns:
        Columns name, method, top1_cls, top1_loc, gt_known_loc (percent; NaN where missing),
        without duplicate points (Table 3's "+KD" is Table 4's last row).
    """
    rows = []
    for key in table_keys:
        for cell in reg.tables[key].cells:
            numbers = cell.paper.get(paper_scope, {})
            if "top1_cls" not in numbers:
                continue
            role = reg.teachers[cell.teacher].role if cell.teacher else cell.role
            rows.append((cell.name, method_of(role, cell.context_pool),
                         *(numbers.get(m, math.nan) for m in POINT_METRICS)))
    frame = pd.DataFrame(rows, columns=["name", "method", *POINT_METRICS])
    return frame.drop_duplicates(subset=list(POINT_METRICS)).reset_index(drop=True)


# --------------------------------------------------------------------------- selection audit

PolicyLookup = Mapping[tuple[str, str, str, str], Mapping[str, float]]


def policy_lookup(finals: pd.DataFrame) -> dict[tuple[str, str, str, str], dict[str, float]]:
    """(run_id, protocol, selection, threshold policy) -> {name: value as stored} on the test split."""
    out: dict[tuple[str, str, str, str], dict[str, float]] = {}
    if finals.empty:
        return out
    rows = finals[finals["split"] == _SPLIT]
    for run_id, protocol, selection, policy, name, value in rows[
            ["run_id", "protocol", "selection", "threshold_policy", "name", "value"]].itertuples(index=False):
        if not math.isnan(value):
            out.setdefault((run_id, protocol, selection, policy), {})[name] = float(value)
    return out


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
        audits: run id -> its per-epoch test audit (:func:`kdcicam.selection.epoch_audit`).

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


# -------------------------------------------------------------------------------- collection

def collect(reg: Registry, runs: Sequence[RunInfo], finals: pd.DataFrame, *, store_url: str,
            protocols: Sequence[str], table_keys: Sequence[str], generated: str,
            epoch_audits: Mapping[str, EpochAudit] | None = None,
            threshold_policy: str = _THRESHOLD_POLICY,
            records: Callable[..., pd.DataFrame] | None = None) -> ReportData:
    """Everything the report shows, from the store's runs and final metrics.

    Args:
        reg: the registry.
        runs: every run in the store (unfinished ones are counted, not shown).
        finals: :meth:`Store.final_metrics` of the finished runs.
        store_url: for the report's header.
        protocols: which protocols to build tables for.
        table_keys: which registry tables (in order).
        generated: timestamp text.
        epoch_audits: run id -> the run's per-epoch test audit, for the selection audit.
        threshold_policy: whose θ the tables, scatter and sweeps use: "fixed" (each run's own θ) or
            "val" (θ chosen on the validation split). Classification numbers do not depend on it.
        records: ``records(run_id, protocol, selection, policy)`` -> per-image test records, for the
            claims ledger's per-image intervals (None: the ledger is left out).

    Returns:
        The report's data, one :class:`ScopeData` per scope with a finished run.
    """
    from kdcicam.report.sweep import build_sweeps  # sweep.py reads run configs with this module's helpers

    sweep_tables = {k for k, t in reg.tables.items() if t.kind == "sweep"}
    sweep_keys = [k for k in table_keys if k in sweep_tables]
    table_keys = [k for k in table_keys if k not in sweep_tables]
    all_finished = [r for r in runs if r.status == "finished"]
    # a run only a sweep asked for (another correlation, another dataset) belongs to no scope's tables
    finished = [r for r in all_finished if not r.labels or set(r.labels) - sweep_tables]
    frame = cell_frame(reg, finished, finals, threshold_policy)
    frame = frame[~frame["table"].isin(sweep_tables)]
    scatter_keys = {k for k in reg.tables if reg.tables[k].kind == "scatter"}
    is_scatter = frame["table"].isin(scatter_keys)
    runs_per_seed = frame[~is_scatter].groupby(["scope", "table", "cell", "seed"], sort=False)["run_id"].nunique()
    superseded = {(scope, table) for (scope, table, _, _), n in runs_per_seed.items() if n > 1}
    frame = pd.concat([latest_per_seed(frame[~is_scatter]), frame[is_scatter]], ignore_index=True)
    by_scope: dict[ScopeKey, list[RunInfo]] = {}
    for run in finished:
        by_scope.setdefault(scope_of(run), []).append(run)
    lookup = policy_lookup(finals)
    audit_tables = [reg.tables[k] for k in table_keys if reg.tables[k].kind == "table"]
    ledgers = _ledgers(reg, finished, finals, records, protocols, threshold_policy)
    claims = _claims_by_scope(ledgers, table_keys)
    scopes = []
    for scope in sorted(by_scope, key=ScopeKey.sort_key):
        scope_runs = by_scope[scope]
        ids = {r.id for r in scope_runs}
        scope_values = frame[frame["run_id"].isin(ids)]
        tables = {
            protocol: tuple(build_table(reg.tables[key], scope, protocol,
                                        scope_values[scope_values["table"] == key], scope_runs, generated,
                                        superseded=(scope, key) in superseded)
                            for key in table_keys)
            for protocol in protocols
        }
        points = {protocol: scatter_points(scope_runs, finals, reg, protocol, threshold_policy)
                  for protocol in protocols}
        runs_by_id = {r.id: r for r in scope_runs}
        audit = {protocol: build_audit(audit_tables, protocol, scope_values, runs_by_id, lookup,
                                       epoch_audits or {}) for protocol in protocols}
        scopes.append(ScopeData(key=scope, provenance=provenance(scope, scope_runs, generated),
                                tables=tables, points=points, runs=tuple(scope_runs), audit=audit,
                                claims={p: claims.get((scope.title, p), ()) for p in protocols}))
    return ReportData(generated=generated, store_url=store_url, protocols=tuple(protocols),
                      table_keys=tuple(table_keys), scopes=tuple(scopes),
                      n_unfinished=len(runs) - len(all_finished),
                      sweeps=build_sweeps(reg, sweep_keys, all_finished, finals, protocols, threshold_policy),
                      threshold_policy=threshold_policy,
                      variants=_variants(reg, finished, finals, records, ledgers, threshold_policy, table_keys))


def _ledgers(reg: Registry, runs: Sequence[RunInfo], finals: pd.DataFrame,
             records: Callable[..., pd.DataFrame] | None, protocols: Sequence[str],
             threshold_policy: str) -> dict[str, list[Any]]:
    """protocol -> the claims ledger (kdcicam.claims) of every table; {} without per-image records."""
    if records is None or not runs:
        return {}
    from kdcicam.claims import evaluate_claims  # claims.py builds on this module

    return {protocol: evaluate_claims(reg, runs, finals, records, protocol=protocol, threshold_policy=threshold_policy)
            for protocol in protocols}


def _claims_by_scope(ledgers: dict[str, list[Any]],
                     table_keys: Sequence[str]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(scope title, protocol) -> the ledger's rows of the shown tables that ran."""
    out: dict[tuple[str, str], list[Any]] = {}
    for protocol, ledger in ledgers.items():
        for r in ledger:
            if r.table in table_keys and r.status != "not run":
                out.setdefault((r.scope, protocol), []).append(r)
    return {k: tuple(v) for k, v in out.items()}


def _variants(reg: Registry, runs: Sequence[RunInfo], finals: pd.DataFrame,
              records: Callable[..., pd.DataFrame] | None, ledgers: dict[str, list[Any]], threshold_policy: str,
              table_keys: Sequence[str]) -> dict[str, Any]:
    """protocol -> the paper-vs-reference comparison of the shown tables (kdcicam.variants), reusing the
    ledgers' verdicts; only protocols where some scope ran both variants."""
    if records is None or not runs:
        return {}
    from kdcicam.variants import VariantAgreement, variant_agreement  # variants.py builds on this module

    out = {}
    for protocol, ledger in ledgers.items():
        a = variant_agreement(reg, runs, finals, records, protocol=protocol, threshold_policy=threshold_policy,
                              ledger=ledger)
        shown = VariantAgreement(tuple(d for d in a.deltas if d.table in table_keys),
                                 tuple(v for v in a.verdicts if v.table in table_keys))
        if shown:
            out[protocol] = shown
    return out


def report_json(data: ReportData) -> dict[str, Any]:
    """The report's table data as a JSON-ready dict (values in percent)."""
    def value(v: MetricValue) -> dict[str, Any]:
        return {"mean": v.mean, "std": v.std, "n": v.n, "ci95": list(v.ci) if v.ci else None,
                "paper": v.paper, "delta": v.delta, "paper_delta": v.paper_delta, "sign_agrees": v.agree,
                "best_of_n": v.best, "within_seed_spread": v.within_noise}

    def audit_row(r: AuditRow) -> dict[str, Any]:
        return {"table": r.table, "cell": r.cell, "select": r.select, "metric": r.metric, "n": r.n,
                "reported": r.reported, "best_of_n": r.best_of_n, "test_selected": r.test_selected,
                "test_selected_delta": r.d_test_selected, "n_audited": r.n_audited,
                "val_theta": r.val_theta, "val_theta_delta": r.d_val_theta,
                "oracle_theta": r.oracle_theta, "oracle_theta_delta": r.d_oracle_theta,
                "theta": dict(zip(("fixed", "val", "oracle"), r.thetas)), "select_on": r.select_on,
                "test_decisions": r.test_decisions}

    scopes = []
    for scope in data.scopes:
        k = scope.key
        tables = []
        for protocol, items in scope.tables.items():
            for t in items:
                tables.append({
                    "table": t.key, "title": t.title, "protocol": t.protocol, "kind": t.kind,
                    "reference_cell": t.reference_cell, "metrics": list(t.metrics),
                    "not_run_command": t.not_run_command,
                    "rows": [{"cell": r.cell, "name": r.name, "select": r.select, "reference": r.reference,
                              "ran": r.ran, "seeds": list(r.seeds), "run_ids": list(r.run_ids),
                              "values": {m: value(v) for m, v in r.values.items()}} for r in t.rows],
                })
        audit = [{"protocol": p, "rows": [audit_row(r) for r in a.rows]} for p, a in scope.audit.items()]
        scopes.append({"dataset": k.dataset, "dataset_fingerprint": k.fingerprint, "backbone": k.backbone,
                       "profile": k.profile, "variant": k.variant, "paper_scope": k.paper_scope,
                       "reduced": k.reduced, "provenance": dict(scope.provenance.items()), "tables": tables,
                       "selection_audit": audit,
                       "claims": {p: [c.to_dict() for c in rows] for p, rows in scope.claims.items()}})
    sweeps = [{"table": w.key, "title": w.title, "protocol": w.protocol, "group": w.group, "x": w.x_key,
               "reference": w.reference, "reduced": w.reduced, "missing": list(w.missing),
               "values": [dataclasses.asdict(p) for p in w.values], "gaps": [dataclasses.asdict(p) for p in w.gaps],
               "trends": [dataclasses.asdict(t) for t in w.trends]}
              for w in data.sweeps]
    return {"generated": data.generated, "store": data.store_url, "unit": "percent",
            "threshold_policy": data.threshold_policy, "protocols": list(data.protocols), "n_unfinished_runs": data.n_unfinished, "scopes": scopes,
            "sweeps": sweeps, "variants": {p: a.to_dict() for p, a in data.variants.items()}}
