"""The claims ledger: each claim of the paper that the registry encodes, checked against the store.

A claim (``[[claims]]`` in ``ablations/*.toml``) says that one cell beats another on some metrics
("+ConPool improves Top-1 Loc over Base"). For every scope with runs of both cells it gives the
paper's difference, ours (mean over seeds), a 95% interval, what the interval rests on, and a
status:

- ``holds``: the interval lies entirely on the claimed side of zero;
- ``does not hold``: the interval lies entirely on the other side;
- ``inconclusive``: the interval contains zero (or cannot be formed).

With two or more paired seeds the interval is a Student-t interval over the per-seed differences;
with one seed it is a paired bootstrap over the test images (the randomness of training is then
not covered, and the ledger says so). Beside it, for every per-image metric, the paired per-image
test: each test image's difference (claimed cell minus the other, 0/1 correctness) averaged over the
paired seeds, bootstrapped over images (``image_ci_lo`` / ``image_ci_hi``): it asks whether the same
images are won and lost consistently, which the seed interval cannot see with three seeds. And with
two or more seeds, how many paired seeds a t test would need to detect the paper's own Δ with 80 %
power at our seed-to-seed spread (``seeds_needed``): whether "inconclusive" means "no such effect
here" or "too few seeds to tell". A
``pareto`` claim (Figure 1(b)) holds when one training setting of the claimed cell beats every setting of
the other cell on both metrics at once; a ``dilemma`` claim holds when no setting of its cell is the best
on both: each setting at its mean over seeds, with a per-image bootstrap interval of the margin (the
status rests on it), and each seed's runs alone.

Every result names what it was measured under: the protocol, the threshold policy (``fixed`` θ,
θ chosen on ``val``idation, or the test-chosen ``oracle`` θ: an upper bound, never a verdict a
paper may print) and the selection policy (the cells' checkpoint criteria and whether the runs
picked their checkpoints on the validation or the test split, ``eval.select_on``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from kdcicam.analysis.results import ScopeKey, cell_frame, latest_per, latest_per_seed
from kdcicam.analysis.stats import mean_std_ci, paired_bootstrap_ci, seeds_needed
from kdcicam.registry.ablations import Claim, Registry
from kdcicam.store import RunInfo

# How the ledger's numbers read: the legend under every claims table (report, ``kdcicam claims --md``)
LEDGER_NOTE = ("Δ in percentage points, claimed cell minus the other; ours = mean over seeds; 95 % intervals over "
               "the per-seed differences (Student t; one seed: paired bootstrap over images) and, paired per image, "
               "over the test images (the per-image difference averaged over seeds); seeds for paper Δ: paired "
               "seeds a t test needs to detect the paper's Δ with 80 % power at our seed-to-seed spread; holds / "
               "does not hold: the seed interval lies on one side of zero. Figure 1(b)'s claims (best-of-settings): "
               "ours Δ is the margin in points by which the claim holds (> 0) or fails, on each training setting's "
               "mean over the seeds that ran every setting; its per-image interval resamples the test images of "
               "every run at once and the status rests on it; \"holds in k of n seeds\" judges each seed alone.")

FLAG_OF = {"top1_cls": "correct_top1_cls", "top5_cls": "correct_top5_cls", "top1_loc": "correct_top1_loc",
           "top5_loc": "correct_top5_loc", "gt_known_loc": "correct_gt_known"}


@dataclass(frozen=True)
class ClaimResult:
    table: str
    claim: str
    text: str
    scope: str
    protocol: str
    variant: str
    selection: str  # how the checkpoints were chosen (the cells' ``select``; "validation" for best_*)
    select_on: str  # the split the runs picked those checkpoints on: "val" or "test" (part of the scope)
    threshold_policy: str  # fixed | val | oracle
    metric: str
    paper_delta: float | None  # percentage points, the paper's (its own scope), None when not printed
    ours_delta: float | None  # percentage points, mean over seeds
    ci_lo: float | None
    ci_hi: float | None
    n_seeds: int
    # "seeds (t)", "images (bootstrap, 1 seed)", "best-of-settings[ (mean of n seeds); holds in k of n seeds]", "none"
    interval: str
    status: str  # holds | does not hold | inconclusive | not run
    image_ci_lo: float | None = None  # paired per-image bootstrap over the seeds' mean differences, points
    image_ci_hi: float | None = None
    seeds_needed: int | None = None  # paired seeds a t test needs to detect the paper's Δ (80 % power, our seed sd)

    def to_dict(self) -> dict:
        return asdict(self)


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

        None when either change is missing, the paper-protocol change is zero or has the opposite
        sign to the paper's printed change (no gain to keep: a share of it would read as one), or the
        claim is a Figure 1(b) claim (its number is a margin, not a change).
        """
        a, b, printed = self.paper.ours_delta, self.standard.ours_delta, self.paper.paper_delta
        if a is None or b is None or a == 0 or self.paper.interval.startswith("best-of-settings"):
            return None
        if printed is not None and printed * a < 0:
            return None
        return round(b / a, 4)

    @property
    def same_verdict(self) -> bool | None:
        """Whether both protocols give the same status; None when either did not run."""
        if "not run" in (self.paper.status, self.standard.status):
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


def _status(direction: str, lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "inconclusive"
    sign = 1.0 if direction == "increase" else -1.0
    lo, hi = sorted((sign * lo, sign * hi))
    if lo > 0:
        return "holds"
    if hi < 0:
        return "does not hold"
    return "inconclusive"


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
            one-seed intervals); for another threshold policy it is called with the policy as a
            fourth argument.
        protocol: evaluation protocol whose numbers are compared.
        n_resamples: bootstrap resamples for one-seed intervals.
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
    ci_lo: float | None
    ci_hi: float | None
    n_seeds: int
    interval: str  # "seeds (t)", "images (bootstrap, 1 seed)" or "none"
    image_ci_lo: float | None = None  # paired per-image interval (see per_image_interval)
    image_ci_hi: float | None = None
    std: float | None = None  # sample standard deviation of the per-seed differences (two or more seeds)


def paired_delta(a: pd.DataFrame, b: pd.DataFrame, metric: str, records_a: Callable[[str], pd.DataFrame],
                 records_b: Callable[[str], pd.DataFrame], n_resamples: int) -> PairedDelta:
    """``a − b`` paired by seed, with the seed interval and the paired per-image interval.

    Args:
        a, b: one metric's rows of :func:`~kdcicam.analysis.results.cell_frame` for the two sides
            (a rerun supersedes: the latest run per seed counts).
        metric: the metric (per-image intervals exist for those in :data:`FLAG_OF`).
        records_a, records_b: run id -> that run's per-image test records, for each side.
        n_resamples: bootstrap resamples.

    With two or more seeds the interval is Student t over the per-seed differences; with one, the
    per-image bootstrap stands in for it (``interval`` says which).
    """
    if a.empty or b.empty:
        return PairedDelta(None, None, None, 0, "none")
    a = latest_per_seed(a).set_index("seed")
    b = latest_per_seed(b).set_index("seed")
    seeds = sorted(set(a.index) & set(b.index))
    mean, std, n, lo, hi = mean_std_ci([float(a.loc[s, "value"]) - float(b.loc[s, "value"]) for s in seeds])
    if n == 0:
        return PairedDelta(None, None, None, 0, "none")
    interval = "seeds (t)"
    image_lo = image_hi = None
    if metric in FLAG_OF:
        pairs = [(records_a(str(a.loc[s, "run_id"])), records_b(str(b.loc[s, "run_id"]))) for s in seeds]
        image_lo, image_hi = per_image_interval(pairs, FLAG_OF[metric], n_resamples)
        if n == 1 and image_lo is not None:
            lo, hi, interval = image_lo, image_hi, "images (bootstrap, 1 seed)"
    lo = None if lo is None or math.isnan(lo) else round(lo, 4)
    hi = None if hi is None or math.isnan(hi) else round(hi, 4)
    return PairedDelta(round(mean, 4), lo, hi, n, interval if lo is not None else "none", image_lo, image_hi,
                       None if math.isnan(std) else round(std, 4))


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
        return _best_of_settings(base if claim.kind == "pareto" else {**base, "paper_delta": None}, claim, sub,
                                 cell_records, n_resamples)
    d = paired_delta(a, b, metric, lambda run: records(run, protocol, cells.cell(claim.cell).select),
                     lambda run: records(run, protocol, cells.cell(claim.versus).select), n_resamples)
    if d.mean is None:
        return ClaimResult(**base, ours_delta=None, ci_lo=None, ci_hi=None, n_seeds=0, interval="none",
                           status="not run")
    needed = (seeds_needed(d.std, base["paper_delta"])
              if d.std is not None and base["paper_delta"] is not None else None)
    return ClaimResult(**base, ours_delta=d.mean, ci_lo=d.ci_lo, ci_hi=d.ci_hi, n_seeds=d.n_seeds,
                       interval=d.interval, status=_status(claim.direction, d.ci_lo, d.ci_hi),
                       image_ci_lo=d.image_ci_lo, image_ci_hi=d.image_ci_hi, seeds_needed=needed)


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


def _latest_runs(sub: pd.DataFrame) -> pd.DataFrame:
    """One run per (cell, setting, seed): the one finished last (a rerun supersedes). Columns cell,
    setting, seed, run_id."""
    keys = ["cell", "setting", "seed"]
    return latest_per(sub, keys)[[*keys, "run_id"]].drop_duplicates()


def _setting_arrays(values: pd.DataFrame, cells: Sequence[str]) -> dict[str, np.ndarray] | None:
    """``values`` (columns cell, setting, value: one (R,) array per run) averaged over seeds per setting:
    cell -> (R, S) setting means. None when a cell has no run."""
    out = {}
    for cell in cells:
        rows = values[values["cell"] == cell]
        if rows.empty:
            return None
        out[cell] = np.stack([np.stack(list(g["value"])).mean(axis=0)
                              for _, g in rows.groupby("setting", sort=True)], axis=-1)  # (R, S)
    return out


def _margin(claim: Claim, x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> np.ndarray | None:
    """The Figure 1(b) margin (points) for R draws at once: ``x[cell]``, ``y[cell]`` are (R, S) setting means.

    pareto: by how much the claimed cell's best setting beats every setting of ``claim.versus`` on its
    weaker axis (> 0: one setting is better at both). dilemma: the smaller of the best-x setting's
    shortfall in y and the best-y setting's shortfall in x (ties taken in favour of one setting being
    the best at both; > 0: none is). None for a dilemma of fewer than two settings.
    """
    if claim.kind == "pareto":
        ours_x, ours_y, theirs_x, theirs_y = x[claim.cell], y[claim.cell], x[claim.versus], y[claim.versus]
        return np.minimum(ours_x - theirs_x.max(axis=1, keepdims=True),
                          ours_y - theirs_y.max(axis=1, keepdims=True)).max(axis=1)  # (R,)
    xs, ys = x[claim.cell], y[claim.cell]  # (R, S)
    if xs.shape[1] < 2:
        return None
    y_at_best_x = np.where(xs == xs.max(axis=1, keepdims=True), ys, -np.inf).max(axis=1)  # (R,)
    x_at_best_y = np.where(ys == ys.max(axis=1, keepdims=True), xs, -np.inf).max(axis=1)
    return np.minimum(ys.max(axis=1) - y_at_best_x, xs.max(axis=1) - x_at_best_y)


def _stored_margin(claim: Claim, sub: pd.DataFrame, cells: Sequence[str]) -> float | None:
    """The margin on the stored metrics (percent) of ``sub``'s runs, each setting at its mean over seeds."""
    runs = _latest_runs(sub)
    wide = sub.pivot_table(index="run_id", columns="metric", values="value", aggfunc="last")
    if any(m not in wide for m in claim.metrics[:2]):
        return None
    wide = wide[list(claim.metrics[:2])].dropna()
    runs = runs[runs["run_id"].isin(wide.index)]
    x, y = (_setting_arrays(runs.assign(value=[wide.loc[r, m:m].to_numpy(float) for r in runs["run_id"]]), cells)
            for m in claim.metrics[:2])
    margin = None if x is None or y is None else _margin(claim, x, y)
    return None if margin is None else float(margin[0])


def _margin_interval(claim: Claim, sub: pd.DataFrame, cells: Sequence[str],
                     records: Callable[[str, str], pd.DataFrame],
                     n_resamples: int) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval (points) of the margin over the test images: each resample draws
    the same images for every run, then every run's two metrics, each setting's mean over seeds and
    the margin are computed again. (None, None) unless every run has per-image records."""
    flags = [FLAG_OF.get(m) for m in claim.metrics[:2]]
    runs = _latest_runs(sub)
    if None in flags or runs.empty:
        return None, None
    frames = [records(str(r.run_id), str(r.cell)) for r in runs.itertuples()]
    if any(not len(f) for f in frames):
        return None, None
    ids = sorted(set.intersection(*(set(f["image_id"]) for f in frames)))
    if not ids:
        return None, None
    idx = np.random.default_rng(0).integers(0, len(ids), size=(n_resamples, len(ids)))  # (R, N)
    x, y = (_setting_arrays(runs.assign(value=[100.0 * f.set_index("image_id").loc[ids, flag].to_numpy(float)[idx]
                                               .mean(axis=1) for f in frames]), cells)  # per run: (R,)
            for flag in flags)
    margin = None if x is None or y is None else _margin(claim, x, y)
    if margin is None:
        return None, None
    lo, hi = np.percentile(margin, [2.5, 97.5])
    return round(float(lo), 4), round(float(hi), 4)


def _complete_seeds(sub: pd.DataFrame, cells: Sequence[str]) -> pd.DataFrame:
    """``sub``'s rows of ``cells`` from the seeds in which each of them ran every one of its settings (a
    seed still training would tilt the setting means and, for a pareto claim, one side's best); when no
    seed is complete yet, the seeds in which each of them ran at least one."""
    sub = sub[sub["cell"].isin(cells)]
    settings = {cell: set(sub.loc[sub["cell"] == cell, "setting"]) for cell in cells}
    ran = {seed: {cell: set(sub.loc[(sub["seed"] == seed) & (sub["cell"] == cell), "setting"]) for cell in cells}
           for seed in set(sub["seed"])}
    complete = {seed for seed, done in ran.items() if all(done[cell] == settings[cell] for cell in cells)}
    started = {seed for seed, done in ran.items() if all(done[cell] for cell in cells)}
    return sub[sub["seed"].isin(complete or started)]


def _best_of_settings(base: dict, claim: Claim, sub: pd.DataFrame, records: Callable[[str, str], pd.DataFrame],
                      n_resamples: int) -> ClaimResult:
    """A claim about a scatter of training settings (``pareto``: one setting of ``claim.cell`` reaches
    every setting of ``claim.versus`` on both metrics at once; ``dilemma``: no setting of ``claim.cell``
    is the best on both), as the paper's figure draws one point per training.

    Judged on each setting's mean over the seeds (pooling every seed's run as a point of its own would
    add the seed-to-seed spread to the settings' spread), with a per-image interval of the margin
    (test-sample noise; the status rests on it when every run has per-image records) and, with several
    seeds, on each seed's runs alone ("holds in k of n seeds": training noise). Only the seeds in which
    the claim's cells ran every setting count (:func:`_complete_seeds`).

    ``records(run_id, cell)``: the run's per-image test records at the cell's checkpoint selection.
    """
    base = {**base, "metric": " & ".join(claim.metrics[:2])}
    cells = [claim.cell] + ([claim.versus] if claim.kind == "pareto" else [])
    sub = _complete_seeds(sub[sub["metric"].isin(claim.metrics[:2])], cells)
    margin = _stored_margin(claim, sub, cells)
    if margin is None:
        return ClaimResult(**base, ours_delta=None, ci_lo=None, ci_hi=None, n_seeds=0, interval="none",
                           status="not run")
    per_seed = [m for seed in sorted(set(sub["seed"]))
                if (m := _stored_margin(claim, sub[sub["seed"] == seed], cells)) is not None]
    interval = ("best-of-settings" + (f" (mean of {len(per_seed)} seeds); holds in {sum(m > 0 for m in per_seed)}"
                                      f" of {len(per_seed)} seeds" if len(per_seed) > 1 else ""))
    lo, hi = _margin_interval(claim, sub, cells, records, n_resamples)
    if lo is not None and hi is not None:
        status = "holds" if lo > 0 else "does not hold" if hi <= 0 else "inconclusive"
    else:  # a margin of 0: a tie (pareto), or one setting is the best at both (dilemma: does not hold)
        status = ("holds" if margin > 0 else "does not hold" if margin < 0 or claim.kind == "dilemma"
                  else "inconclusive")
    return ClaimResult(**base, ours_delta=round(margin, 4), ci_lo=None, ci_hi=None, n_seeds=len(per_seed),
                       interval=interval, status=status, image_ci_lo=lo, image_ci_hi=hi)
