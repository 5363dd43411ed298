"""Everything a report shows, gathered from the store (``collect``): tables, selection audits, claims,
variant agreement and sweeps; and its JSON form (``report_json``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from kdcicam.analysis.ledger import evaluate_ledger
from kdcicam.analysis.results import (
    DEFAULT_THRESHOLD_POLICY,
    ScopeKey,
    cell_frame,
    latest_per_seed,
    policy_lookup,
    scatter_points,
    scopes_of,
)
from kdcicam.analysis.variants import VariantAgreement, variant_agreement
from kdcicam.analysis.verdicts import UNMEASURED
from kdcicam.evaluation.selection import (
    EpochAudit,
)
from kdcicam.registry.ablations import Registry
from kdcicam.report.gallery import GALLERY_PROTOCOL, gallery_run, gallery_table
from kdcicam.report.mechanism import mechanism_table
from kdcicam.report.provenance import provenance
from kdcicam.report.report_data import ReportData, ScopeData
from kdcicam.report.selection_audit import AuditRow, build_audit
from kdcicam.report.sweep import build_sweeps
from kdcicam.report.tables import MetricValue, build_table, not_run_tables
from kdcicam.store import RunInfo


def collect(reg: Registry, runs: Sequence[RunInfo], finals: pd.DataFrame, *, store_url: str,
            protocols: Sequence[str], table_keys: Sequence[str], generated: str,
            epoch_audits: Mapping[str, EpochAudit] | None = None,
            threshold_policy: str = DEFAULT_THRESHOLD_POLICY,
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
    run_scopes = scopes_of(reg, finished)
    for run in finished:
        by_scope.setdefault(run_scopes[run.id], []).append(run)
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
                                       epoch_audits or {}, threshold_policy) for protocol in protocols}
        scopes.append(ScopeData(key=scope, provenance=provenance(scope, scope_runs, generated),
                                tables=tables, points=points, runs=tuple(scope_runs), audit=audit,
                                claims={p: claims.get((scope.title, p), ()) for p in protocols},
                                mechanism=mechanism_table(reg, scope_runs, finals, threshold_policy),
                                gallery_boxes=_gallery_boxes(reg, scope_runs, records, threshold_policy),
                                not_run=not_run_tables(tables, scope, scope_runs)))
    return ReportData(generated=generated, store_url=store_url, protocols=tuple(protocols),
                      table_keys=tuple(table_keys), scopes=tuple(scopes),
                      n_unfinished=len(runs) - len(all_finished),
                      sweeps=build_sweeps(reg, sweep_keys, all_finished, finals, protocols, threshold_policy),
                      threshold_policy=threshold_policy,
                      variants=_variants(reg, finished, finals, records, ledgers, threshold_policy, table_keys))


def _ledgers(reg: Registry, runs: Sequence[RunInfo], finals: pd.DataFrame,
             records: Callable[..., pd.DataFrame] | None, protocols: Sequence[str],
             threshold_policy: str) -> dict[str, list[Any]]:
    """protocol -> the claims ledger (kdcicam.analysis.claims) of every table; {} without per-image records."""
    if records is None or not runs:
        return {}

    return evaluate_ledger(reg, runs, finals, records, protocols=protocols, threshold_policy=threshold_policy)


def _claims_by_scope(ledgers: dict[str, list[Any]],
                     table_keys: Sequence[str]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(scope title, protocol) -> the ledger's rows of the shown tables that ran."""
    out: dict[tuple[str, str], list[Any]] = {}
    for protocol, ledger in ledgers.items():
        for r in ledger:
            if r.table in table_keys and r.status not in UNMEASURED:
                out.setdefault((r.scope, protocol), []).append(r)
    return {k: tuple(v) for k, v in out.items()}


def _variants(reg: Registry, runs: Sequence[RunInfo], finals: pd.DataFrame,
              records: Callable[..., pd.DataFrame] | None, ledgers: dict[str, list[Any]], threshold_policy: str,
              table_keys: Sequence[str]) -> dict[str, Any]:
    """protocol -> the paper-vs-reference comparison of the shown tables (kdcicam.analysis.variants), reusing the
    ledgers' verdicts; only protocols where some scope ran both variants."""
    if records is None or not runs:
        return {}

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
                       "mechanism": None if scope.mechanism is None else {
                           "protocol": "standard", "note": scope.mechanism.note,
                           "rows": [dataclasses.asdict(r) for r in scope.mechanism.rows]},
                       "claims": {p: [c.to_dict() for c in rows] for p, rows in scope.claims.items()}})
    sweeps = [{"table": w.key, "title": w.title, "protocol": w.protocol, "group": w.group, "x": w.x_key,
               "reference": w.reference, "reduced": w.reduced, "missing": list(w.missing),
               "values": [dataclasses.asdict(p) for p in w.values], "gaps": [dataclasses.asdict(p) for p in w.gaps],
               "trends": [dataclasses.asdict(t) for t in w.trends]}
              for w in data.sweeps]
    return {"generated": data.generated, "store": data.store_url, "unit": "percent",
            "threshold_policy": data.threshold_policy, "protocols": list(data.protocols), "n_unfinished_runs": data.n_unfinished, "scopes": scopes,
            "sweeps": sweeps, "variants": {p: a.to_dict() for p, a in data.variants.items()}}


def _gallery_boxes(reg: Registry, runs: Sequence[RunInfo], records: Callable[..., pd.DataFrame] | None,
                   threshold_policy: str) -> dict[str, dict[str, list[float]]]:
    """Run id -> image id -> predicted box (crop frame) at ``threshold_policy`` for the gallery's runs, from
    their per-image test records; empty under the fixed policy (the gallery files hold those boxes)."""
    table = gallery_table(reg)
    if threshold_policy == "fixed" or records is None or table is None:
        return {}
    out: dict[str, dict[str, list[float]]] = {}
    for key in table.gallery:
        cell = next((c for c in table.cells if c.key == key), None)
        run = gallery_run(table, key, runs) if cell is not None else None
        if run is None:
            continue
        frame = records(run.id, GALLERY_PROTOCOL, cell.select, threshold_policy)
        if not frame.empty:
            out[run.id] = {str(i): [float(v) for v in box] for i, box in zip(frame["image_id"], frame["box"])
                           if box is not None}
    return out

