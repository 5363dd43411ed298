"""The report's data: every scope's tables, scatter points, selection audit, claims and mechanism table, and the
report around them; the templates receive these dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from kdcicam.analysis.results import DEFAULT_THRESHOLD_POLICY, ScopeKey
from kdcicam.report.provenance import Provenance
from kdcicam.report.selection_audit import AuditTable
from kdcicam.report.tables import NotRunTables, TableData
from kdcicam.store import RunInfo

if TYPE_CHECKING:
    from kdcicam.report.sweep import SweepData


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
    gallery_boxes: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # run id -> image id -> box at
    # the report's θ policy, for the gallery's runs (empty under the fixed policy: the gallery files' own boxes)
    not_run: NotRunTables | None = None  # the tables no run of this scope labels: one line, not drawn

    def shown_tables(self, protocol: str) -> tuple[TableData, ...]:
        """The tables drawn in full under ``protocol``: every table but those named in ``not_run``."""
        collapsed = self.not_run.keys if self.not_run is not None else ()
        return tuple(t for t in self.tables[protocol] if t.key not in collapsed)


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
