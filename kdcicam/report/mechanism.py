"""The report's mechanism table: per cell of a scope, where the GT class's CAM puts its mass and how much
classification rests on the context (synthetic benchmark only; docs/synthetic.md, "Mechanism measures").

Each value is the mean over the cell's runs (one per seed) of the run's final metric under the standard protocol, at the
cell's checkpoint and the report's θ policy, in percent. A scope without any such number (a real dataset)
has no table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from kdcicam.evaluation.mechanism import MECHANISM_METRICS
from kdcicam.registry.ablations import Registry
from kdcicam.store import RunInfo

PROTOCOL = "standard"
COLUMNS = ("pxap", *MECHANISM_METRICS)
HEADERS = {"pxap": "PxAP", "cam_mass_part": "CAM mass part", "cam_mass_body": "CAM mass body",
           "cam_mass_background": "CAM mass background", "cam_mass_context": "CAM mass context",
           "top1_cls_context_swapped": "Top-1 Cls context-swapped", "context_reliance": "context reliance"}
NOTE = ("Standard protocol, mean over the cell's runs (n), in %. CAM mass: share of the GT class's min-max normalised CAM on "
        "the part, the body (object minus part) and the background; context: background share on images in "
        "their class's preferred context minus on the others; context reliance = Top-1 Cls minus Top-1 Cls on "
        "the context-swapped copy of the test split (points).")


@dataclass(frozen=True)
class MechanismRow:
    table: str
    cell: str
    name: str
    n: int  # runs with a mechanism number
    values: dict[str, float]  # metric -> mean in percent (absent: no run has it)


@dataclass(frozen=True)
class MechanismTable:
    rows: tuple[MechanismRow, ...]
    columns: tuple[str, ...] = COLUMNS
    note: str = NOTE
    signed: tuple[str, ...] = ("cam_mass_context", "context_reliance")  # differences: shown with their sign

    @property
    def headers(self) -> list[str]:
        return [HEADERS[c] for c in self.columns]


def mechanism_table(reg: Registry, runs: Sequence[RunInfo], finals: pd.DataFrame,
                    threshold_policy: str) -> MechanismTable | None:
    """The scope's mechanism table, one row per labelled cell with a mechanism number; None when none has one."""
    if finals.empty:
        return None
    here = finals[(finals["protocol"] == PROTOCOL) & (finals["split"] == "test")
                  & (finals["threshold_policy"] == threshold_policy) & finals["name"].isin(COLUMNS)]
    values: dict[tuple[str, str], dict[str, float]] = {}
    for run_id, selection, name, value in here[["run_id", "selection", "name", "value"]].itertuples(index=False):
        if not math.isnan(value):
            values.setdefault((run_id, selection), {})[name] = 100.0 * float(value)
    rows = []
    for table_key, table in reg.tables.items():
        for cell in table.cells:
            per_seed = [values.get((r.id, cell.select), {}) for r in runs if cell.key in r.labels.get(table_key, ())]
            per_seed = [v for v in per_seed if any(k in MECHANISM_METRICS for k in v)]
            if not per_seed:
                continue
            means = {m: float(sum(v[m] for v in per_seed if m in v) / sum(m in v for v in per_seed))
                     for m in COLUMNS if any(m in v for v in per_seed)}
            rows.append(MechanismRow(table=table_key, cell=cell.key, name=cell.name, n=len(per_seed), values=means))
    return MechanismTable(rows=tuple(rows)) if rows else None
