"""The report's numbers: finished runs of the store -> one table per (scope, registry table, protocol).

A *scope* is where runs are comparable: dataset (and its fingerprint), backbone, profile and
variant. A cell's number is the mean over its seeds of the run labelled ``{table: [cell]}`` in
that scope, read at the cell's checkpoint selection (``select``), the fixed θ and the test split.
Our values are fractions in the store and percent here, the unit of the paper's numbers that
stand beside them. Nothing is rendered in this module: templates get these dataclasses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from kdcicam.registry import METRICS, Registry, Scope, Table
from kdcicam.report.stats import mean_std_ci
from kdcicam.store import RunInfo

PROTOCOL_NAMES: tuple[str, ...] = ("paper", "standard")
METRIC_LABELS = {
    "top1_cls": "Top-1 Cls", "top5_cls": "Top-5 Cls", "top1_loc": "Top-1 Loc",
    "top5_loc": "Top-5 Loc", "gt_known_loc": "GT-known Loc", "maxboxacc_v2": "MaxBoxAccV2",
}
EXTRA_METRIC = "maxboxacc_v2"  # shown in every table although the paper's tables lack it
METHODS: tuple[str, ...] = ("Base (NL-CCAM)", "CI-CAM", "KD-CI-CAM", "cls teacher", "loc teacher")
POINT_METRICS: tuple[str, ...] = ("top1_cls", "top1_loc", "gt_known_loc")
_DATASET_LABELS = {"cub": "CUB", "ilsvrc": "ILSVRC", "synthetic": "synthetic", "wsol": "WSOL"}
_BACKBONE_LABELS = {"vgg16": "VGG16", "inceptionv3": "InceptionV3"}
_DEFAULT_VARIANT = "reference"  # RunConfig's default: the ablate command need not name it
_THRESHOLD_POLICY = "fixed"
_SPLIT = "test"


# ------------------------------------------------------------------------------------ scopes

@dataclass(frozen=True)
class ScopeKey:
    """Where runs are comparable: same data, backbone, profile and variant."""

    dataset: str
    backbone: str
    profile: str
    variant: str
    fingerprint: str | None = None

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
        return (f"{self.dataset}{fp} / {self.backbone} / profile {self.profile} / "
                f"variant {self.variant}")

    @property
    def slug(self) -> str:
        """A file-name-safe identifier of the scope."""
        parts = [self.dataset, self.backbone, self.profile, self.variant]
        if self.fingerprint:
            parts.append(self.fingerprint[:10])
        return re.sub(r"[^A-Za-z0-9]+", "-", "-".join(parts)).strip("-").lower()

    def sort_key(self) -> tuple[str, ...]:
        return (self.dataset, self.backbone, self.profile, self.variant, self.fingerprint or "")


def scope_of(run: RunInfo) -> ScopeKey:
    """The scope a run belongs to (backbone from its resolved config)."""
    backbone = str(run.config.get("model", {}).get("backbone", "?"))
    return ScopeKey(dataset=run.dataset, backbone=backbone, profile=run.profile, variant=run.variant,
                    fingerprint=run.dataset_fingerprint)


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


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


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
        crop = _get(run.config, "data.crop")
        resize, test_crop = _get(run.config, "eval.test_resize"), _get(run.config, "eval.test_crop")
        return f"crop {crop} (test {resize}→{test_crop})"

    return Provenance(
        dataset=scope.dataset,
        fingerprints=tuple(fp[:12] for fp in _distinct(r.dataset_fingerprint for r in runs)),
        backbone=scope.backbone,
        widths=_distinct(_get(r.config, "model.width") for r in runs),
        image_sizes=_distinct(size(r) for r in runs),
        epochs=_distinct(_get(r.config, "train.epochs") for r in runs),
        profile=scope.profile,
        variant=scope.variant,
        seeds=tuple(str(s) for s in sorted({r.seed for r in runs})),
        devices=_distinct(r.device for r in runs),
        torch_versions=_distinct(r.torch_version for r in runs),
        git_commits=tuple(c[:12] for c in _distinct(r.git_commit for r in runs)),
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


@dataclass(frozen=True)
class ScopeData:
    key: ScopeKey
    provenance: Provenance
    tables: dict[str, tuple[TableData, ...]]  # protocol -> tables
    points: dict[str, pd.DataFrame]  # protocol -> C-L scatter points
    runs: tuple[RunInfo, ...]


@dataclass(frozen=True)
class ReportData:
    generated: str
    store_url: str
    protocols: tuple[str, ...]
    table_keys: tuple[str, ...]
    scopes: tuple[ScopeData, ...]
    n_unfinished: int = 0  # runs in the store not finished (not shown)


def _finals_index(finals: pd.DataFrame) -> dict[tuple[str, str, str], dict[str, float]]:
    """(run_id, protocol, selection) -> {metric: value in percent} at the fixed θ on the test split."""
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    if finals.empty:
        return out
    rows = finals[(finals["threshold_policy"] == _THRESHOLD_POLICY) & (finals["split"] == _SPLIT)]
    for run_id, protocol, selection, name, value in rows[
            ["run_id", "protocol", "selection", "name", "value"]].itertuples(index=False):
        if name in METRICS and not math.isnan(value):
            out.setdefault((run_id, protocol, selection), {})[name] = 100.0 * float(value)
    return out


def cell_frame(reg: Registry, runs: Sequence[RunInfo], finals: pd.DataFrame) -> pd.DataFrame:
    """Every labelled cell value of every finished run, in long format.

    Args:
        reg: the registry (cells give the checkpoint selection to read).
        runs: finished runs.
        finals: :meth:`Store.final_metrics` of those runs.

    Returns:
        Columns scope (ScopeKey), table, cell, seed, run_id, finished (ISO time), protocol, metric,
        value (percent). Labels naming a table or cell the registry lacks are skipped.
    """
    index = _finals_index(finals)
    rows = []
    for run in runs:
        scope = scope_of(run)
        finished = run.finished_at.isoformat() if run.finished_at else ""
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
                                     metric, value))
    return pd.DataFrame(rows, columns=["scope", "table", "cell", "seed", "run_id", "finished", "protocol",
                                       "metric", "value"])


def latest_per_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep one run per (scope, table, cell, seed): the one finished last (a rerun supersedes)."""
    if frame.empty:
        return frame
    latest = (frame.sort_values(["finished", "run_id"])
              .drop_duplicates(["scope", "table", "cell", "seed"], keep="last")[
                  ["scope", "table", "cell", "seed", "run_id"]])
    return frame.merge(latest, on=["scope", "table", "cell", "seed", "run_id"])


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


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
        The table: mean ± std over seeds for ordinary tables, the best run for scatter tables,
        each beside the paper's number, with deltas against the reference row.
    """
    metrics = table.metrics + (() if EXTRA_METRIC in table.metrics else (EXTRA_METRIC,))
    here = values[values["protocol"] == protocol]
    scatter = table.kind == "scatter"
    stats: dict[str, dict[str, tuple[float | None, float | None, int, tuple[float, float] | None]]] = {}
    for cell in table.cells:
        rows = here[here["cell"] == cell.key]
        per_metric = {}
        for metric in metrics:
            vals = rows.loc[rows["metric"] == metric, "value"].to_numpy(float)
            if scatter:
                per_metric[metric] = (float(vals.max()) if vals.size else None, None, int(vals.size), None)
                continue
            mean, std, n, lo, hi = mean_std_ci(vals)
            per_metric[metric] = (None if n == 0 else mean, None if n < 2 else std, n,
                                  None if n < 2 else (lo, hi))
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
            if ref_cell is not None and cell.key != ref:
                ref_mean = stats[ref][metric][0]
                if mean is not None and ref_mean is not None:
                    delta = mean - ref_mean
                if metric in paper and metric in ref_paper:
                    paper_delta = paper[metric] - ref_paper[metric]
                if delta is not None and paper_delta is not None and _sign(paper_delta) != 0:
                    agree = _sign(delta) == _sign(paper_delta)
            metric_values[metric] = MetricValue(mean=mean, std=std, n=n, ci=ci, paper=paper.get(metric),
                                                delta=delta, paper_delta=paper_delta, agree=agree)
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
        notes.append("Each value is the best run of the cell (every run is a point of the C-L figure).")
    if protocol == "standard" and any(c.paper for c in table.cells):
        notes.append("The paper's numbers were measured with the paper's protocol.")
    if superseded:
        notes.append("Some seeds have several runs; the one finished last is shown.")
    return TableData(
        key=table.key, title=table.title, caption=table.caption, kind=table.kind, protocol=protocol,
        reference_cell=ref, reference_name=ref_cell.name if ref_cell else None, metrics=metrics,
        rows=tuple(out_rows),
        not_run_command=ablate_command(table.key, scope, 1 + max((r.seed for r in scope_runs), default=0))
        if missing else None,
        provenance=provenance(scope, runs, generated) if runs else None, notes=tuple(notes))


def scatter_points(runs: Sequence[RunInfo], finals: pd.DataFrame, reg: Registry, protocol: str) -> pd.DataFrame:
    """One C-L scatter point per (run, checkpoint selection) the run is reported at.

    A run is read at the selections its labelled cells use (a loc teacher at both Table 5
    selections), else at its last checkpoint; selections without Top-1 Cls are skipped.

    Returns:
        Columns run_id, method, seed, selection, top1_cls, top1_loc, gt_known_loc (percent; NaN
        where missing).
    """
    index = _finals_index(finals)
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
            rows.append((run.id, run_method(run), f"seed {run.seed}", selection,
                         *(values.get(m, math.nan) for m in POINT_METRICS)))
    return pd.DataFrame(rows, columns=["run_id", "method", "seed", "selection", *POINT_METRICS])


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


# -------------------------------------------------------------------------------- collection

def collect(reg: Registry, runs: Sequence[RunInfo], finals: pd.DataFrame, *, store_url: str,
            protocols: Sequence[str], table_keys: Sequence[str], generated: str) -> ReportData:
    """Everything the report shows, from the store's runs and final metrics.

    Args:
        reg: the registry.
        runs: every run in the store (unfinished ones are counted, not shown).
        finals: :meth:`Store.final_metrics` of the finished runs.
        store_url: for the report's header.
        protocols: which protocols to build tables for.
        table_keys: which registry tables (in order).
        generated: timestamp text.

    Returns:
        The report's data, one :class:`ScopeData` per scope with a finished run.
    """
    finished = [r for r in runs if r.status == "finished"]
    frame = cell_frame(reg, finished, finals)
    scatter_keys = {k for k in reg.tables if reg.tables[k].kind == "scatter"}
    is_scatter = frame["table"].isin(scatter_keys)
    runs_per_seed = frame[~is_scatter].groupby(["scope", "table", "cell", "seed"], sort=False)["run_id"].nunique()
    superseded = {(scope, table) for (scope, table, _, _), n in runs_per_seed.items() if n > 1}
    frame = pd.concat([latest_per_seed(frame[~is_scatter]), frame[is_scatter]], ignore_index=True)
    by_scope: dict[ScopeKey, list[RunInfo]] = {}
    for run in finished:
        by_scope.setdefault(scope_of(run), []).append(run)
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
        points = {protocol: scatter_points(scope_runs, finals, reg, protocol) for protocol in protocols}
        scopes.append(ScopeData(key=scope, provenance=provenance(scope, scope_runs, generated),
                                tables=tables, points=points, runs=tuple(scope_runs)))
    return ReportData(generated=generated, store_url=store_url, protocols=tuple(protocols),
                      table_keys=tuple(table_keys), scopes=tuple(scopes),
                      n_unfinished=len(runs) - len(finished))


def report_json(data: ReportData) -> dict[str, Any]:
    """The report's table data as a JSON-ready dict (values in percent)."""
    def value(v: MetricValue) -> dict[str, Any]:
        return {"mean": v.mean, "std": v.std, "n": v.n, "ci95": list(v.ci) if v.ci else None,
                "paper": v.paper, "delta": v.delta, "paper_delta": v.paper_delta, "sign_agrees": v.agree}

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
        scopes.append({"dataset": k.dataset, "dataset_fingerprint": k.fingerprint, "backbone": k.backbone,
                       "profile": k.profile, "variant": k.variant, "paper_scope": k.paper_scope,
                       "reduced": k.reduced, "provenance": dict(scope.provenance.items()), "tables": tables})
    return {"generated": data.generated, "store": data.store_url, "unit": "percent",
            "protocols": list(data.protocols), "n_unfinished_runs": data.n_unfinished, "scopes": scopes}
