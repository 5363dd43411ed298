"""The claims ledger with its error control: every claim judged under both evaluation protocols, then
Holm's adjustment within each claim's family.

A family is one claim in one scope, selection and θ policy: its metrics under both protocols (a
Table 3 claim on three metrics is a family of six tests; a Figure 1(b) claim one of two). Within a
family, Holm keeps the chance of any false "holds" / "does not hold" at or below α = 5 %. Each result
keeps its uncorrected p (``p_value``) beside the adjusted one (``p_holm``), and its status is read off
the adjusted p by the same rule as before (:func:`~kdcicam.analysis.verdicts.claim_status`, or
:func:`~kdcicam.analysis.best_of_settings.status_from` for Figure 1(b)). Intervals stay uncorrected
95 % intervals.

A difference claim's tests against the paper's own Δ (``p_paper``: H0 "our mean = the paper's Δ")
form a second family with the same members, Holm-adjusted on their own (``p_paper_holm``); where
the adjusted p is below α the status gains "smaller than the paper's" or "larger than the paper's"
(:func:`~kdcicam.analysis.verdicts.size_versus_paper`), so that a false "smaller / larger" within a
family is also kept at or below α.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import pandas as pd

from kdcicam.analysis.best_of_settings import status_from
from kdcicam.analysis.claim_result import ClaimResult
from kdcicam.analysis.claims import evaluate_claims
from kdcicam.analysis.verdicts import claim_status, holm, size_versus_paper, with_size
from kdcicam.core.config import PROTOCOLS
from kdcicam.registry.ablations import Registry
from kdcicam.store import RunInfo


def family_key(r: ClaimResult) -> tuple:
    """The family a result's test belongs to: claim, scope, selection and θ policy (metrics and
    protocols vary within it)."""
    return r.table, r.claim, r.scope, r.selection, r.select_on, r.threshold_policy


def holm_adjust(results: Sequence[ClaimResult]) -> list[ClaimResult]:
    """``results`` (in their order) with ``p_holm``, ``family_size`` and the status from the adjusted p.

    Results without a p (not run, one seed, no spread) keep their status and count in no family.
    """
    out = list(results)
    families: dict[tuple, list[int]] = {}
    for i, r in enumerate(out):
        if r.p_value is not None:
            families.setdefault(family_key(r), []).append(i)
    for members in families.values():
        adjusted = holm([out[i].p_value for i in members])
        against = [i for i in members if out[i].p_paper is not None]  # the tests against the paper's Δ
        against_adjusted = dict(zip(against, holm([out[i].p_paper for i in against])))
        for i, p in zip(members, adjusted):
            r = out[i]
            if r.per_seed is not None:  # Figure 1(b)
                status = status_from(r.direction, r.ours_delta, p, list(r.per_seed))
                out[i] = dataclasses.replace(r, p_holm=round(p, 6), family_size=len(members), status=status)
                continue
            p_paper = against_adjusted.get(i)
            size = size_versus_paper(r.direction, r.ours_delta, r.paper_delta, p_paper)
            status = with_size(claim_status(r.direction, r.ours_delta, p, r.n_seeds), size)
            out[i] = dataclasses.replace(r, p_holm=round(p, 6), family_size=len(members), status=status, size=size,
                                         p_paper_holm=None if p_paper is None else round(p_paper, 6))
    return out


def evaluate_ledger(reg: Registry, runs: Sequence[RunInfo], finals: pd.DataFrame,
                    records: Callable[..., pd.DataFrame], *, protocols: Sequence[str] = PROTOCOLS,
                    n_resamples: int = 2000, threshold_policy: str = "fixed") -> dict[str, list[ClaimResult]]:
    """protocol -> its ledger (:func:`~kdcicam.analysis.claims.evaluate_claims`), Holm-adjusted over
    both protocols whichever of them are asked for (a claim's verdict does not depend on which
    ledgers are printed)."""
    ledgers = {p: evaluate_claims(reg, runs, finals, records, protocol=p, n_resamples=n_resamples,
                                  threshold_policy=threshold_policy) for p in PROTOCOLS}
    adjusted = holm_adjust([r for p in PROTOCOLS for r in ledgers[p]])
    return {p: [r for r in adjusted if r.protocol == p] for p in protocols}
