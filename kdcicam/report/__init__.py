"""``kdcicam report``: the paper's tables, the C-L scatter and a gallery, from the run store only.

Example::

    with open_store(url) as store:
        data = build_report(store, load_registry(), protocols=("paper", "standard"))
    html = render(data, registry, "html").text

Modules: :mod:`.tables` (numbers), :mod:`.selection_audit`, :mod:`.provenance`, :mod:`.report_data`
(what the templates get), :mod:`.stats` (statistics), :mod:`.scatter` and
:mod:`.gallery` (figures), :mod:`.render` (templates).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import pandas as pd
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from kdcicam.analysis.claims import test_records
from kdcicam.analysis.results import PROTOCOL_NAMES
from kdcicam.evaluation.selection import EpochAudit, epoch_audit
from kdcicam.registry.ablations import Registry
from kdcicam.report.collect import collect, report_json
from kdcicam.report.render import FORMATS, Rendered, render
from kdcicam.report.report_data import ReportData
from kdcicam.report.selection_audit import AUDIT_METRICS
from kdcicam.store import RunInfo, Store

__all__ = ["FORMATS", "PROTOCOL_NAMES", "Rendered", "ReportData", "build_report", "render", "report_json"]


def build_report(store: Store | None, reg: Registry, *, protocols: Sequence[str] = PROTOCOL_NAMES,
                 table_keys: Sequence[str] | None = None, now: datetime | None = None,
                 store_url: str | None = None, threshold_policy: str = "fixed") -> ReportData:
    """Read the store and assemble every number the report shows.

    Args:
        store: the run store; None = no store yet (an empty report).
        reg: the registry.
        protocols: evaluation protocols to show ("paper", "standard").
        table_keys: registry tables to show, in order; None = all of them (tables, then scatters).
        now: the generation time (tests pass a fixed one).
        store_url: shown in the header (default: the store's URL).
        threshold_policy: whose θ the localization numbers use: "fixed" (each run's own) or "val"
            (chosen on the validation split).

    Returns:
        The report's data.
    """
    if table_keys is None:  # the paper's tables first, then the scatter figures' tables, then the sweeps
        order = {"table": 0, "scatter": 1, "sweep": 2}
        keys = sorted(reg.tables, key=lambda k: (order.get(reg.tables[k].kind, 3), k))
    else:
        keys = [reg.table(k).key for k in table_keys]
    generated = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    url = _safe_url(store_url or (store.url if store is not None else "-"))
    runs = store.list_runs() if store is not None else []
    finished = [r.id for r in runs if r.status == "finished"]
    finals = store.final_metrics(finished) if store is not None and finished else pd.DataFrame(
        columns=["run_id", "protocol", "selection", "threshold_policy", "split", "name", "value"])
    audits = _epoch_audits(store, reg, runs, keys) if store is not None else {}
    records = test_records(store) if store is not None else None
    return collect(reg, runs, finals, store_url=url, protocols=protocols, table_keys=keys, generated=generated,
                   epoch_audits=audits, threshold_policy=threshold_policy, records=records)


def _epoch_audits(store: Store, reg: Registry, runs: Sequence[RunInfo], keys: Sequence[str]) -> dict[str, EpochAudit]:
    """The per-epoch test audit of every finished run a shown (non-scatter) table labels."""
    tables = {k for k in keys if reg.tables[k].kind == "table"}
    out = {}
    for run in runs:
        if run.status == "finished" and tables & set(run.labels):
            audit = epoch_audit(run.id, store.epoch_metrics(run.id), AUDIT_METRICS)
            if audit is not None:
                out[run.id] = audit
    return out


def _safe_url(url: str) -> str:
    """The store URL as the report shows it: a password, if any, masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url
