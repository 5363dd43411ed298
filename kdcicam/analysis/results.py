"""The results frame: finished runs of the store in long format (scope, table, cell, seed, protocol,
metric, value), the scope that makes runs comparable, and a run's training setting.

A *scope* is where runs are comparable: dataset (and its fingerprint), backbone, profile and
variant. Values are fractions in the store and percent here, the unit of the paper's numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import pandas as pd

from kdcicam.core.config import METRIC_VERSION, metric_version_of
from kdcicam.core.identity import training_setting
from kdcicam.evaluation.selection import (
    select_on_of,
)
from kdcicam.registry.ablations import Registry
from kdcicam.registry.definitions import METRICS
from kdcicam.registry.mechanism_metrics import MECHANISM_METRICS
from kdcicam.registry.resolve import Scope
from kdcicam.store import RunInfo

if TYPE_CHECKING:
    pass


PROTOCOL_NAMES: tuple[str, ...] = ("paper", "standard")


METHODS: tuple[str, ...] = ("Base (NL-CCAM)", "CI-CAM", "KD-CI-CAM", "cls teacher", "loc teacher")


POINT_METRICS: tuple[str, ...] = ("top1_cls", "top1_loc", "gt_known_loc")


_DATASET_LABELS = {"cub": "CUB", "ilsvrc": "ILSVRC", "synthetic": "synthetic", "wsol": "WSOL"}


_BACKBONE_LABELS = {"vgg16": "VGG16", "inceptionv3": "InceptionV3"}


_DEFAULT_VARIANT = "reference"  # RunConfig's default: the ablate command need not name it


DEFAULT_THRESHOLD_POLICY = "fixed"


_SPLIT = "test"


@dataclass(frozen=True)
class ScopeKey:
    """Where runs are comparable: same data, backbone, training setting (profile and epochs), variant and
    checkpoint-selection split."""

    dataset: str
    backbone: str
    profile: str
    variant: str
    fingerprint: str | None = None
    select_on: str = "val"  # eval.select_on: "test" runs picked checkpoints on the test split
    metric_version: int = METRIC_VERSION  # eval.metric_version: runs of another metric definition apart
    epochs: int | None = None  # train.epochs (None: not in the stored config)

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
        epochs = "" if self.epochs is None else f", {self.epochs} epochs"
        version = "" if self.metric_version == METRIC_VERSION else f" / metric version {self.metric_version}"
        return (f"{self.dataset}{fp} / {self.backbone} / profile {self.profile}{epochs} / "
                f"variant {self.variant}{selected}{version}")

    @property
    def slug(self) -> str:
        """A file-name-safe identifier of the scope."""
        parts = [self.dataset, self.backbone, self.profile, self.variant]
        if self.epochs is not None:
            parts.insert(3, f"{self.epochs}ep")
        if self.fingerprint:
            parts.append(self.fingerprint[:10])
        if self.select_on != "val":
            parts.append(f"selected-on-{self.select_on}")
        if self.metric_version != METRIC_VERSION:
            parts.append(f"metrics-v{self.metric_version}")
        return re.sub(r"[^A-Za-z0-9]+", "-", "-".join(parts)).strip("-").lower()

    def sort_key(self) -> tuple[str, ...]:
        return (self.dataset, self.backbone, self.profile, f"{self.epochs or 0:09d}", self.variant,
                self.fingerprint or "", self.select_on, str(self.metric_version))


def scope_of(run: RunInfo) -> ScopeKey:
    """The scope a run belongs to (backbone from its resolved config)."""
    backbone = str(run.config.get("model", {}).get("backbone", "?"))
    epochs = config_value(run.config, "train.epochs")
    return ScopeKey(dataset=run.dataset, backbone=backbone, profile=run.profile, variant=run.variant,
                    fingerprint=run.dataset_fingerprint, select_on=select_on_of(run.config),
                    epochs=epochs if isinstance(epochs, int) else None,
                    metric_version=metric_version_of(run.config))


_EPOCHS_KEY = "train.epochs"


def scopes_of(reg: Registry, runs: Sequence[RunInfo]) -> dict[str, ScopeKey]:
    """run id -> scope, with each run whose cells grid the epoch count (Figure 1b's trainings)
    placed in the scope of the ungridded runs it was scaled from.

    A gridded run joins the scope that differs from its own only in epochs, whose epoch count one
    of its cells' multipliers turns into the run's (as :func:`kdcicam.registry.resolve.apply_multipliers`
    rounds); without one it keeps its own scope.
    """
    own = {run.id: scope_of(run) for run in runs}
    multipliers = {run.id: _epoch_multipliers(reg, run) for run in runs}
    plain = sorted({own[r.id] for r in runs if not multipliers[r.id] and own[r.id].epochs is not None},
                   key=ScopeKey.sort_key)
    out = {}
    for run in runs:
        key, mults = own[run.id], multipliers[run.id]
        if mults and key.epochs is not None:
            key = next((s for s in plain if replace(s, epochs=None) == replace(key, epochs=None)
                        and any(max(1, round(s.epochs * m)) == key.epochs for m in mults)), key)
        out[run.id] = key
    return out


def _epoch_multipliers(reg: Registry, run: RunInfo) -> tuple[float, ...]:
    """The epoch multipliers of the run's cells when every cell it is labelled with grids the epochs, else ()."""
    mults: list[float] = []
    for table_key, cells in run.labels.items():
        table = reg.tables.get(table_key)
        for cell in (c for c in (table.cells if table else ()) if c.key in cells):
            if _EPOCHS_KEY not in cell.grid:
                return ()
            mults.extend(cell.grid[_EPOCHS_KEY])
    return tuple(mults)


def ablate_command(table: str | Sequence[str], scope: ScopeKey, n_seeds: int = 1) -> str:
    """The ``kdcicam ablate`` command that would run the cells of a table (or of several) in a scope.

    Args:
        table: registry table key, or several (``kdcicam ablate`` plans several tables as one).
        scope: where the cells are missing.
        n_seeds: seeds 0..n-1 the scope's other cells ran at (``--seeds``; 1 is the default).
    """
    cmd = "kdcicam ablate " + (table if isinstance(table, str) else " ".join(table))
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


def config_value(config: dict[str, Any], dotted: str) -> Any:
    """A stored run config's value at a dotted key (None where it has none)."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _finals_index(finals: pd.DataFrame,
                  threshold_policy: str = DEFAULT_THRESHOLD_POLICY) -> dict[tuple[str, str, str], dict[str, float]]:
    """(run_id, protocol, selection) -> {metric: value in percent} under a θ policy on the test split."""
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    if finals.empty:
        return out
    rows = finals[(finals["threshold_policy"] == threshold_policy) & (finals["split"] == _SPLIT)]
    for run_id, protocol, selection, name, value in rows[
            ["run_id", "protocol", "selection", "name", "value"]].itertuples(index=False):
        if (name in METRICS or name in MECHANISM_METRICS) and not math.isnan(value):
            out.setdefault((run_id, protocol, selection), {})[name] = 100.0 * float(value)
    return out


def cell_frame(reg: Registry, runs: Sequence[RunInfo], finals: pd.DataFrame,
               threshold_policy: str = DEFAULT_THRESHOLD_POLICY) -> pd.DataFrame:
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
    scopes = scopes_of(reg, runs)
    rows = []
    for run in runs:
        scope = scopes[run.id]
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


def scatter_points(runs: Sequence[RunInfo], finals: pd.DataFrame, reg: Registry, protocol: str,
                   threshold_policy: str = DEFAULT_THRESHOLD_POLICY) -> pd.DataFrame:
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
