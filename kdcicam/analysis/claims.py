"""The claims ledger: each claim of the paper that the registry encodes, checked against the store.

A claim (``[[claims]]`` in ``ablations/*.toml``) says that one cell beats another on some metrics
("+ConPool improves Top-1 Loc over Base"). For every scope with runs of both cells it gives the
paper's difference, ours (mean over seeds), a 95% interval, what the interval rests on, and a
status:

- ``holds``: the verdict's test (below) is significant at 5 % after Holm's adjustment
  (:mod:`kdcicam.analysis.ledger`) and the estimate is on the claimed side of zero;
- ``does not hold``: significant, on the other side;
- ``inconclusive``: not significant, or no test can be formed; ``inconclusive (1 seed)`` below
  two seeds whatever the test images say (:mod:`kdcicam.analysis.verdicts`);
- ``no data``: both cells ran, but the claim's metric is not in the store (a metric their runs were
  evaluated without); ``not run``: the cells have no paired runs in the scope.

A difference claim with a paper Δ is also tested against that Δ (the same seed t test, H0 "our
mean = the paper's Δ", Holm-adjusted within the claim's family of such tests): significant, the
status adds "smaller than the paper's" or "larger than the paper's" on the claimed side ("holds,
smaller than the paper's"; "inconclusive, smaller than the paper's" when the sign is undecided but
the paper's size is excluded).

A difference claim's test is a Student t test over the per-seed differences (its interval beside).
Beside it, for every per-image metric, the paired per-image interval: each test image's difference
(claimed cell minus the other, 0/1 correctness) averaged over the paired seeds, bootstrapped over
images (``image_ci_lo`` / ``image_ci_hi``): a description of the test set, never the verdict's
evidence (at three seeds it is 5-10 times narrower than the seed interval). And with two or more
seeds, how many paired seeds a t test would need to detect the paper's own Δ with 80 % power at our
seed-to-seed spread (``seeds_needed``). A ``pareto`` claim (Figure 1(b)) holds when one training
setting of the claimed cell beats every setting of the other cell on both metrics at once; a
``dilemma`` claim holds when no setting of its cell is the best on both: each setting at its mean
over seeds, judged by :mod:`kdcicam.analysis.best_of_settings` (a hierarchical bootstrap over seeds
and images, and each seed alone).

Every result names what it was measured under: the protocol, the threshold policy (``fixed`` θ,
θ chosen on ``val``idation, or the test-chosen ``oracle`` θ: an upper bound, never a verdict a
paper may print) and the selection policy (the cells' checkpoint criteria and whether the runs
picked their checkpoints on the validation or the test split, ``eval.select_on``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kdcicam.analysis.claim_result import FLAG_OF, ClaimResult
from kdcicam.analysis.results import ScopeKey, cell_frame, latest_per_seed
from kdcicam.analysis.setting_claims import best_of_settings_claim
from kdcicam.analysis.stats import paired_bootstrap_ci, seeds_needed
from kdcicam.analysis.verdicts import (
    NO_DATA,
    NOT_RUN,
    UNMEASURED,
    claim_status,
    p_against,
    seed_test,
    size_versus_paper,
    with_size,
)
from kdcicam.registry.ablations import Registry
from kdcicam.registry.definitions import Claim
from kdcicam.store import RunInfo

# How the ledger's numbers read: the legend under every claims table (report, ``kdcicam claims --md``)
LEDGER_NOTE = ("Δ in percentage points, claimed cell minus the other; ours = mean over seeds, paired by seed. "
               "Verdict rule: a two-sided test at 5 %, Holm-adjusted within each claim's family (its metrics "
               "under both protocols, one scope and θ policy): holds / does not hold when the adjusted p is below "
               "5 % on the claimed / the other side of zero, else inconclusive; p and p (Holm) are shown side by "
               "side, the intervals are uncorrected 95 % intervals. Difference claims: Student t over the per-seed "
               "differences; no verdict below two seeds (\"inconclusive (1 seed)\") or when every seed gives the "
               "same difference (no interval). Against the paper's Δ: the same t test with the paper's Δ as its null "
               "value, Holm-adjusted within the same family; where its adjusted p is below 5 %, the status adds "
               "\"smaller than the paper's\" (our mean short of the paper's Δ in the claimed direction: below it for "
               "a claimed increase, above it for a claimed decrease) or \"larger than the paper's\" (beyond it), "
               "e.g. \"holds, smaller than the paper's\" (the effect is there, but below the paper's size) or "
               "\"inconclusive, smaller than the paper's\" (no sign established, the paper's size excluded); with "
               "one test in the family this is the 95 % seed interval lying entirely below / above the paper's Δ. "
               "\"no data\": both cells ran but the metric was not measured (PxAP and the mechanism measures are "
               "not measured under the paper protocol). The per-image interval (paired bootstrap over the test images of "
               "the per-image difference averaged over seeds) describes the test set and is never a verdict's "
               "evidence. Seeds for paper Δ: paired seeds a t test needs to detect the paper's Δ with 80 % power "
               "at our seed-to-seed spread. Figure 1(b)'s claims (best-of-settings): ours Δ is the margin in "
               "points by which the claim holds (> 0) or fails (< 0), on each training setting's mean over the "
               "seeds that ran every setting; its 95 % interval and p come from a hierarchical bootstrap (seeds "
               "drawn jointly for every setting, then test images for every run; seeds alone without per-image "
               "records), bias-corrected for the maxima over settings (basic bootstrap), widened for few seeds "
               "(√(K/(K−1))·t/z) and Bonferroni-corrected over the two metrics (the tie bias); holds / does not "
               "hold needs that test, at least 3 seeds and every seed alone on the same side; its per-image "
               "interval keeps the seeds fixed.")

def test_records(store: Any) -> Callable[..., pd.DataFrame]:
    """The ``records`` callback of :func:`evaluate_claims` over a store's test-split records.

    Memoised per (run, protocol, selection, policy): a run is read once however many claims and
    metrics compare it (the frames are only read, never changed).
    """
    cache: dict[tuple[str, str, str, str], pd.DataFrame] = {}

    def records(run_id: str, protocol: str, selection: str, policy: str = "fixed") -> pd.DataFrame:
        key = (run_id, protocol, selection, policy)
        if key not in cache:
            cache[key] = store.get_image_records(run_id, protocol, selection, "test", policy)
        return cache[key]

    return records


test_records.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


@dataclass(frozen=True)
class ProtocolPair:
    """One claim on one metric in one scope under both evaluation protocols (claim 6 of the findings)."""

    paper: ClaimResult
    standard: ClaimResult

    @property
    def kept(self) -> float | None:
        """How much of the paper-protocol change the standard protocol keeps: standard Δ / paper Δ.

        None when either change is missing, the paper-protocol change has no seed interval or one
        that includes zero (no established change: a ratio to a Δ near zero is noise), has
        the opposite sign to the paper's printed change (no gain to keep: a share of it would read as
        one), or the claim is a Figure 1(b) claim (its number is a margin, not a change).
        """
        a, b, printed = self.paper.ours_delta, self.standard.ours_delta, self.paper.paper_delta
        if a is None or b is None or a == 0 or self.paper.interval.startswith("best-of-settings"):
            return None
        lo, hi = self.paper.ci_lo, self.paper.ci_hi
        if lo is None or hi is None or lo <= 0.0 <= hi:
            return None
        if printed is not None and printed * a < 0:
            return None
        return round(b / a, 4)

    @property
    def same_verdict(self) -> bool | None:
        """Whether both protocols give the same status; None when either did not run or has no data."""
        if {self.paper.status, self.standard.status} & set(UNMEASURED):
            return None
        return self.paper.status == self.standard.status

    def to_dict(self) -> dict:
        return {"paper": self.paper.to_dict(), "standard": self.standard.to_dict(), "kept": self.kept,
                "same_verdict": self.same_verdict}


def pair_protocols(paper: Sequence[ClaimResult], standard: Sequence[ClaimResult]) -> list[ProtocolPair]:
    """Match the ledger's rows under the paper protocol with the standard protocol's (in ``paper``'s order).

    Rows match on claim, scope, metric, selection, ``eval.select_on`` and θ policy; a row without a
    partner is left out.
    """
    def key(r: ClaimResult) -> tuple:
        return r.table, r.claim, r.scope, r.metric, r.selection, r.select_on, r.threshold_policy

    by_key = {key(r): r for r in standard}
    return [ProtocolPair(r, by_key[key(r)]) for r in paper if key(r) in by_key]


def _paper_delta(reg: Registry, claim: Claim, scope: ScopeKey, metric: str) -> float | None:
    table = reg.tables[claim.table]
    a = table.cell(claim.cell).paper.get(scope.paper_scope, {}).get(metric)
    b = table.cell(claim.versus).paper.get(scope.paper_scope, {}).get(metric)
    return None if a is None or b is None else round(a - b, 4)


def evaluate_claims(
    reg: Registry,
    runs: Sequence[RunInfo],
    finals: pd.DataFrame,
    records: Callable[..., pd.DataFrame],
    *,
    protocol: str = "paper",
    n_resamples: int = 2000,
    threshold_policy: str = "fixed",
) -> list[ClaimResult]:
    """Check every registry claim in every scope of the store.

    Args:
        reg: the registry (claims and cells).
        runs: the store's runs (only finished ones count).
        finals: :meth:`Store.final_metrics` of those runs.
        records: ``records(run_id, protocol, selection)`` -> per-image records at the fixed θ (for
            the per-image intervals and Figure 1(b)'s bootstrap); for another threshold policy it is
            called with the policy as a fourth argument.
        protocol: evaluation protocol whose numbers are compared.
        n_resamples: bootstrap resamples.

    Each status here reads its own test's p alone; :func:`kdcicam.analysis.ledger.evaluate_ledger`
    adjusts them within each claim's family.
        threshold_policy: whose numbers: "fixed" (the run's θ), "val" (θ chosen on validation)
            or "oracle" (θ chosen on the test split: an upper bound).
    """
    finished = [r for r in runs if r.status == "finished"]
    frame = cell_frame(reg, finished, finals, threshold_policy)  # scopes split runs by eval.select_on
    if not frame.empty:
        frame = frame[frame["protocol"] == protocol]
    scopes = sorted({r_scope for r_scope in frame["scope"]}, key=ScopeKey.sort_key) if not frame.empty else []
    out: list[ClaimResult] = []
    for table in reg.tables.values():
        for claim in table.claims:
            selection = f"{table.cell(claim.cell).select} / {table.cell(claim.versus).select}"
            for scope in scopes:
                sub = frame[(frame["scope"] == scope) & (frame["table"] == table.key)]
                if sub.empty:  # this table has no run in this scope (e.g. a scope only a sweep made)
                    continue
                for metric in claim.metrics[:1] if claim.kind in ("pareto", "dilemma") else claim.metrics:
                    out.append(claim_result(reg, claim, scope, sub, metric, protocol,
                                    (selection, scope.select_on, threshold_policy), records, n_resamples))
    return out


def _records_of(records: Callable[..., pd.DataFrame], threshold_policy: str) -> Callable[[str, str, str], pd.DataFrame]:
    """The records callback bound to a threshold policy (called with three arguments for "fixed")."""
    if threshold_policy == "fixed":
        return records
    return lambda run_id, protocol, selection: records(run_id, protocol, selection, threshold_policy)


@dataclass(frozen=True)
class PairedDelta:
    """The difference of two cells' metric over the seeds both ran, in percentage points."""

    mean: float | None  # mean of the per-seed differences; None when no seed pairs
    ci_lo: float | None  # Student-t interval over the seeds; None below two seeds or without spread
    ci_hi: float | None
    n_seeds: int
    interval: str  # "seeds (t)", "1 seed", "no spread (identical per-seed differences)" or "none"
    image_ci_lo: float | None = None  # paired per-image interval (see per_image_interval)
    image_ci_hi: float | None = None
    std: float | None = None  # sample standard deviation of the per-seed differences (two or more seeds)
    p_value: float | None = None  # two-sided t test of the per-seed differences (where there is an interval)
    p_paper: float | None = None  # the same t test against ``paper_delta`` (where there is an interval)
    seed_deltas: tuple[tuple[int, float], ...] = ()  # (seed, a − b in points), in seed order


def paired_delta(a: pd.DataFrame, b: pd.DataFrame, metric: str, records_a: Callable[[str], pd.DataFrame],
                 records_b: Callable[[str], pd.DataFrame], n_resamples: int,
                 paper_delta: float | None = None) -> PairedDelta:
    """``a − b`` paired by seed, with the seed interval and the paired per-image interval.

    Args:
        a, b: one metric's rows of :func:`~kdcicam.analysis.results.cell_frame` for the two sides
            (a rerun supersedes: the latest run per seed counts).
        metric: the metric (per-image intervals exist for those in :data:`FLAG_OF`).
        records_a, records_b: run id -> that run's per-image test records, for each side.
        n_resamples: bootstrap resamples.
        paper_delta: the paper's Δ, in points: ``p_paper`` tests our mean against it (None: no such test).

    The interval and p are the Student t test over the per-seed differences
    (:func:`~kdcicam.analysis.verdicts.seed_test`): none with one seed (the per-image interval then
    describes the test set, not the training's noise) or with identical differences.
    """
    if a.empty or b.empty:
        return PairedDelta(None, None, None, 0, "none")
    a = latest_per_seed(a).set_index("seed")
    b = latest_per_seed(b).set_index("seed")
    seeds = sorted(set(a.index) & set(b.index))
    diffs = [float(a.loc[s, "value"]) - float(b.loc[s, "value"]) for s in seeds]
    t = seed_test(diffs)
    if t.mean is None or math.isnan(t.mean):
        return PairedDelta(None, None, None, 0, "none")
    image_lo = image_hi = None
    if metric in FLAG_OF:
        pairs = [(records_a(str(a.loc[s, "run_id"])), records_b(str(b.loc[s, "run_id"]))) for s in seeds]
        image_lo, image_hi = per_image_interval(pairs, FLAG_OF[metric], n_resamples)
    interval = ("seeds (t)" if t.ci_lo is not None else "1 seed" if t.n == 1
                else "no spread (identical per-seed differences)")
    return PairedDelta(round(t.mean, 4), _round(t.ci_lo), _round(t.ci_hi), t.n, interval, image_lo, image_hi,
                       _round(t.std), t.p_value, None if paper_delta is None else p_against(t, paper_delta),
                       tuple((int(s), round(x, 4)) for s, x in zip(seeds, diffs)))


def _round(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(x, 4)


def claim_result(reg: Registry, claim: Claim, scope: ScopeKey, sub: pd.DataFrame, metric: str, protocol: str,
                 policies: tuple[str, str, str], records: Callable[..., pd.DataFrame],
                 n_resamples: int) -> ClaimResult:
    """One claim on one metric in one scope (``sub``: the scope's cell_frame rows of the claim's table).

    ``policies`` = (selection, select_on, threshold_policy) as the result names them.
    """
    selection, select_on, threshold_policy = policies
    records = _records_of(records, threshold_policy)
    base = dict(table=claim.table, claim=claim.key, text=claim.text, scope=scope.title, protocol=protocol,
                variant=scope.variant, selection=selection, select_on=select_on,
                threshold_policy=threshold_policy, metric=metric, paper_delta=_paper_delta(reg, claim, scope, metric))
    vals = sub[sub["metric"] == metric]
    a = vals[vals["cell"] == claim.cell]
    b = vals[vals["cell"] == claim.versus]
    cells = reg.tables[claim.table]
    if claim.kind in ("pareto", "dilemma"):
        def cell_records(run_id: str, cell: str) -> pd.DataFrame:
            return records(run_id, protocol, cells.cell(cell).select)

        if claim.kind == "pareto" and (a.empty or b.empty):
            return ClaimResult(**base, ours_delta=None, ci_lo=None, ci_hi=None, n_seeds=0, interval="none",
                               status="not run")
        return best_of_settings_claim(base if claim.kind == "pareto" else {**base, "paper_delta": None}, claim, sub,
                                 cell_records, n_resamples)
    d = paired_delta(a, b, metric, lambda run: records(run, protocol, cells.cell(claim.cell).select),
                     lambda run: records(run, protocol, cells.cell(claim.versus).select), n_resamples,
                     base["paper_delta"])
    if d.mean is None:
        ran = {claim.cell, claim.versus} <= set(sub["cell"])  # both cells have runs, without this metric
        return ClaimResult(**base, ours_delta=None, ci_lo=None, ci_hi=None, n_seeds=0, interval="none",
                           status=NO_DATA if ran and (a.empty or b.empty) else NOT_RUN, direction=claim.direction)
    needed = (seeds_needed(d.std, base["paper_delta"])
              if d.std is not None and base["paper_delta"] is not None else None)
    size = size_versus_paper(claim.direction, d.mean, base["paper_delta"], d.p_paper)
    return ClaimResult(**base, ours_delta=d.mean, ci_lo=d.ci_lo, ci_hi=d.ci_hi, n_seeds=d.n_seeds,
                       interval=d.interval,
                       status=with_size(claim_status(claim.direction, d.mean, d.p_value, d.n_seeds), size),
                       image_ci_lo=d.image_ci_lo, image_ci_hi=d.image_ci_hi, seeds_needed=needed,
                       direction=claim.direction, p_value=d.p_value, p_paper=d.p_paper, size=size,
                       seed_deltas=d.seed_deltas)


def per_image_interval(pairs: Sequence[tuple[pd.DataFrame, pd.DataFrame]], flag: str,
                       n_resamples: int) -> tuple[float | None, float | None]:
    """Paired bootstrap over test images of the per-image difference averaged over seeds, in points.

    ``pairs`` holds, per seed, the two runs' per-image records; an image counts when every seed's two
    runs have a record for it. (None, None) when no image does.
    """
    per_seed = []
    for ra, rb in pairs:
        if not len(ra) or not len(rb):
            return None, None
        joined = ra.merge(rb, on="image_id", suffixes=("_a", "_b"))
        per_seed.append((joined[f"{flag}_a"].astype(float) - joined[f"{flag}_b"].astype(float))
                        .set_axis(joined["image_id"]))
    diff = pd.concat(per_seed, axis=1, join="inner").mean(axis=1)  # (images,) mean over seeds
    if diff.empty:
        return None, None
    _d, lo, hi = paired_bootstrap_ci(diff.to_numpy(), np.zeros(len(diff)), n_resamples=n_resamples, seed=0)
    return round(100.0 * lo, 4), round(100.0 * hi, 4)
