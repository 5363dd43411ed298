"""Do the method's two fidelity variants agree? (``paper``: the printed equations; ``reference``: the
authors' released code; ``reference-notes.md``.)

Runs of the two variants are different scopes (:class:`~kdcicam.analysis.results.ScopeKey`), so neither
the claims ledger nor ``kdcicam compare`` sets them side by side. This module does, for every pair of
scopes that differ only in the variant:

- per cell and metric: each variant's mean over seeds and the difference ``paper − reference`` with a
  95 % interval over the seeds both variants ran (Student t over the per-seed differences; none with one
  seed) and the paired per-image interval (per-image differences averaged over the seeds, bootstrapped
  over images, as in :mod:`kdcicam.analysis.claims`: a description of the test set). "differ" needs two
  seeds and a t test significant at 5 % after Holm's adjustment over the cell's metrics. Seed s of both
  variants trains on the same data in the same order, so the pairing is by seed;
- per claim of the paper: its verdict under each variant (the ledger's rule, Holm within each claim's
  metrics under this protocol) and whether the two verdicts are the same (two different verdicts are
  not a significant difference between the variants: that is the cell-by-cell table's question).

Only tables of kind ``table`` are compared: a scatter's grid points and a sweep's datasets are not
one run per seed and cell.

A variant is the whole method as its source describes it: the training (losses, ε per step or per
sample, activations, the pool's update rule), the combinational heatmap's weights γ (Eq. 3 or the
code's) and, under the paper protocol only, the heatmap normalisation and the box rule. So a
difference under the paper protocol mixes training and box rule; under the standard protocol the box
rule is the same for both (wsolevaluation's), and only the training and γ differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import pandas as pd

from kdcicam.analysis.claim_result import ClaimResult
from kdcicam.analysis.claims import claim_result, paired_delta
from kdcicam.analysis.ledger import holm_adjust
from kdcicam.analysis.results import POINT_METRICS, ScopeKey, cell_frame, latest_per_seed
from kdcicam.analysis.verdicts import ALPHA, MIN_SEEDS, ONE_SEED, UNMEASURED, holm
from kdcicam.registry.ablations import Registry
from kdcicam.store import RunInfo

PAIR: tuple[str, str] = ("paper", "reference")  # the difference is first minus second


@dataclass(frozen=True)
class VariantDelta:
    """One cell's metric under both variants: ``delta = paper − reference``, in percentage points."""

    scope: str  # the shared scope, its variant written "paper vs reference"
    table: str
    cell: str
    name: str  # the cell's name as the paper prints it
    protocol: str
    threshold_policy: str
    metric: str
    paper_value: float | None  # mean over the seeds both variants ran (percent; all its seeds if one did not run)
    reference_value: float | None
    delta: float | None  # mean over the seeds both ran of the per-seed difference
    ci_lo: float | None
    ci_hi: float | None
    n_seeds: int  # seeds both variants ran
    interval: str  # see PairedDelta.interval
    image_ci_lo: float | None = None
    image_ci_hi: float | None = None
    p_value: float | None = None  # t test of the per-seed differences, uncorrected
    p_holm: float | None = None  # Holm-adjusted over the cell's metrics in this scope

    @property
    def status(self) -> str:
        """"differ" when the Holm-adjusted t test is significant at 5 %, "no difference detected" when
        not; no verdict from one seed or without an interval."""
        if self.delta is None:
            return "not run"
        if self.n_seeds < MIN_SEEDS:
            return ONE_SEED
        if self.p_value is None:
            return "no interval"
        p = self.p_value if self.p_holm is None else self.p_holm
        return "differ" if p < ALPHA else "no difference detected"

    def to_dict(self) -> dict:
        return {**asdict(self), "status": self.status}


@dataclass(frozen=True)
class VerdictPair:
    """One claim's verdict under each variant (the ledger's rule, the same scope otherwise)."""

    scope: str
    table: str
    claim: str
    text: str
    protocol: str
    threshold_policy: str
    metric: str
    paper: ClaimResult
    reference: ClaimResult

    @property
    def agree(self) -> bool | None:
        """Same verdict under both variants; None when either variant has not run the claim's cells or has no data."""
        if {self.paper.status, self.reference.status} & set(UNMEASURED):
            return None
        return self.paper.status == self.reference.status

    def to_dict(self) -> dict:
        return {"scope": self.scope, "table": self.table, "claim": self.claim, "text": self.text,
                "protocol": self.protocol, "threshold_policy": self.threshold_policy, "metric": self.metric,
                "paper_status": self.paper.status, "paper_delta": self.paper.ours_delta,
                "reference_status": self.reference.status, "reference_delta": self.reference.ours_delta,
                "n_seeds": [self.paper.n_seeds, self.reference.n_seeds], "agree": self.agree}


@dataclass(frozen=True)
class VariantAgreement:
    deltas: tuple[VariantDelta, ...]
    verdicts: tuple[VerdictPair, ...]

    def __bool__(self) -> bool:
        return bool(self.deltas or self.verdicts)

    def to_dict(self) -> dict:
        return {"deltas": [d.to_dict() for d in self.deltas], "verdicts": [v.to_dict() for v in self.verdicts]}


def shared_title(scope: ScopeKey) -> str:
    """The scope's title with its variant written as the pair compared."""
    return replace(scope, variant=" vs ".join(PAIR)).title


def scope_pairs(scopes: Sequence[ScopeKey]) -> list[tuple[ScopeKey, ScopeKey]]:
    """(paper scope, reference scope) for every scope that both variants ran, sorted."""
    by_family: dict[ScopeKey, dict[str, ScopeKey]] = {}
    for s in scopes:
        by_family.setdefault(replace(s, variant=""), {})[s.variant] = s
    pairs = [(v[PAIR[0]], v[PAIR[1]]) for v in by_family.values() if all(p in v for p in PAIR)]
    return sorted(pairs, key=lambda pr: pr[0].sort_key())


def variant_agreement(
    reg: Registry,
    runs: Sequence[RunInfo],
    finals: pd.DataFrame,
    records: Callable[..., pd.DataFrame],
    *,
    protocol: str = "paper",
    threshold_policy: str = "fixed",
    metrics: Sequence[str] = POINT_METRICS,
    n_resamples: int = 2000,
    ledger: Sequence[ClaimResult] = (),
) -> VariantAgreement:
    """Compare every cell and claim that both variants ran, scope by scope.

    Args:
        reg: the registry.
        runs: the store's runs (only finished ones count).
        finals: :meth:`Store.final_metrics` of those runs.
        records: ``records(run_id, protocol, selection, policy)`` -> per-image test records
            (:func:`kdcicam.analysis.claims.test_records`).
        protocol: evaluation protocol whose numbers are compared.
        threshold_policy: "fixed", "val" or "oracle" (see :mod:`kdcicam.analysis.claims`).
        metrics: the metrics compared per cell.
        n_resamples: bootstrap resamples of the per-image intervals.
        ledger: claims already judged under this protocol and threshold policy
            (:func:`kdcicam.analysis.claims.evaluate_claims`); a claim found there is not judged again.
    """
    judged = {(r.scope, r.claim, r.metric): r for r in ledger
              if (r.protocol, r.threshold_policy) == (protocol, threshold_policy)}
    frame = cell_frame(reg, [r for r in runs if r.status == "finished"], finals, threshold_policy)
    if frame.empty:
        return VariantAgreement((), ())
    frame = frame[frame["protocol"] == protocol]
    deltas: list[VariantDelta] = []
    verdicts: list[VerdictPair] = []
    for paper_scope, ref_scope in scope_pairs(sorted(set(frame["scope"]), key=ScopeKey.sort_key)):
        title = shared_title(paper_scope)
        for table in reg.tables.values():
            if table.kind != "table":
                continue
            sub_p = frame[(frame["scope"] == paper_scope) & (frame["table"] == table.key)]
            sub_r = frame[(frame["scope"] == ref_scope) & (frame["table"] == table.key)]
            if sub_p.empty or sub_r.empty:
                continue
            for cell in table.cells:
                for metric in metrics:
                    a = sub_p[(sub_p["cell"] == cell.key) & (sub_p["metric"] == metric)]
                    b = sub_r[(sub_r["cell"] == cell.key) & (sub_r["metric"] == metric)]
                    if a.empty and b.empty:
                        continue
                    deltas.append(_cell_delta(title, table.key, cell.key, cell.name, cell.select, metric, a, b,
                                              protocol, threshold_policy, records, n_resamples))
            # each claim judged on the seeds both variants ran (the same evidence under both); a ledger
            # verdict is reused only when it rests on exactly those seeds
            seeds = set(sub_p["seed"]) & set(sub_r["seed"])
            reuse = {scope: set(sub["seed"]) == seeds for scope, sub in ((paper_scope, sub_p), (ref_scope, sub_r))}
            for claim in table.claims:
                selection = f"{table.cell(claim.cell).select} / {table.cell(claim.versus).select}"
                for metric in claim.metrics:
                    pair = [(judged.get((scope.title, claim.key, metric)) if reuse[scope] else None)
                            or claim_result(reg, claim, scope, sub[sub["seed"].isin(seeds)], metric, protocol,
                                            (selection, scope.select_on, threshold_policy), records, n_resamples)
                            for scope, sub in ((paper_scope, sub_p), (ref_scope, sub_r))]
                    verdicts.append(VerdictPair(title, table.key, claim.key, claim.text, protocol, threshold_policy,
                                                metric, *pair))
    paper_side, reference_side = (holm_adjust([v.paper for v in verdicts]), holm_adjust([v.reference for v in verdicts]))
    verdicts = [replace(v, paper=p, reference=r) for v, p, r in zip(verdicts, paper_side, reference_side)]
    return VariantAgreement(tuple(_holm_per_cell(deltas)), tuple(verdicts))


def _holm_per_cell(deltas: Sequence[VariantDelta]) -> list[VariantDelta]:
    """``deltas`` with ``p_holm``: Holm over each (scope, table, cell)'s metrics that have a test."""
    out = list(deltas)
    families: dict[tuple[str, str, str], list[int]] = {}
    for i, d in enumerate(out):
        if d.p_value is not None:
            families.setdefault((d.scope, d.table, d.cell), []).append(i)
    for members in families.values():
        for i, p in zip(members, holm([out[i].p_value for i in members])):
            out[i] = replace(out[i], p_holm=round(p, 6))
    return out


def _mean(frame: pd.DataFrame) -> float | None:
    values = latest_per_seed(frame)["value"].astype(float) if not frame.empty else pd.Series(dtype=float)
    return None if values.empty else round(float(values.mean()), 4)


def _cell_delta(title: str, table: str, cell: str, name: str, select: str, metric: str, a: pd.DataFrame,
                b: pd.DataFrame, protocol: str, threshold_policy: str, records: Callable[..., pd.DataFrame],
                n_resamples: int) -> VariantDelta:
    def of_run(run_id: str) -> pd.DataFrame:  # seed s of both variants is paired; both read at the cell's selection
        return records(run_id, protocol, select, threshold_policy)

    d = paired_delta(a, b, metric, of_run, of_run, n_resamples)
    paired = set(a["seed"]) & set(b["seed"])
    if paired:  # the values shown are over the seeds Δ pairs, so that Δ = paper − reference reads off them
        a, b = a[a["seed"].isin(paired)], b[b["seed"].isin(paired)]
    return VariantDelta(scope=title, table=table, cell=cell, name=name, protocol=protocol,
                        threshold_policy=threshold_policy, metric=metric, paper_value=_mean(a),
                        reference_value=_mean(b), delta=d.mean, ci_lo=d.ci_lo, ci_hi=d.ci_hi, n_seeds=d.n_seeds,
                        interval=d.interval, image_ci_lo=d.image_ci_lo, image_ci_hi=d.image_ci_hi, p_value=d.p_value)
