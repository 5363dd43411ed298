"""The rules that turn a test into a verdict: pure functions shared by the ledger, the variant
comparison and ``compare``.

- :func:`seed_test`: a one-sample Student t test of the per-seed differences (mean, interval, p).
  Fewer than two seeds, or differences without spread, give no interval and no p.
- :func:`claim_status`: holds / does not hold / inconclusive from an estimate and a p-value, never
  from one seed (``inconclusive (1 seed)``) or a point estimate alone.
- :func:`p_against`: the same t test against another null value (the paper's own Δ).
- :func:`size_versus_paper` and :func:`with_size`: "smaller / larger than the paper's" when that
  test is significant, appended to the status ("holds, smaller than the paper's").
- :func:`holm`: Holm's step-down adjustment of a family of p-values (family-wise error ≤ α).
- :func:`bootstrap_p`: the two-sided p-value of "the statistic is 0" read off bootstrap replicates.
- :func:`paired_verdict`: ``compare``'s one rule per metric, from McNemar's test and the bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from kdcicam.analysis.stats import mean_std_ci

ALPHA = 0.05  # the nominal level of every verdict (two-sided), before the Holm adjustment
MIN_SEEDS = 2  # a verdict rests on the seed-to-seed spread, which one seed cannot show
HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "does not hold", "inconclusive", "not run"
NO_DATA = "no data"  # both cells ran, but no run of one of them recorded the claim's metric
UNMEASURED = (NOT_RUN, NO_DATA)  # the statuses without a measurement to compare
ONE_SEED = "inconclusive (1 seed)"
SMALLER, LARGER = "smaller than the paper's", "larger than the paper's"


@dataclass(frozen=True)
class SeedTest:
    """One-sample t test of per-seed differences (NaN values dropped)."""

    mean: float | None  # None without any seed
    std: float | None  # sample std; None below two seeds
    n: int
    ci_lo: float | None  # Student-t interval; None below two seeds or with zero spread
    ci_hi: float | None
    p_value: float | None  # two-sided, H0: mean difference 0; None where the interval is None


def seed_test(diffs: Sequence[float], level: float = 1 - ALPHA) -> SeedTest:
    """The Student t test and interval of ``diffs`` (one difference per seed).

    Identical differences (sample std 0) give neither interval nor p: a t statistic of ±∞ says
    nothing about how much a further seed would move the mean (scipy gives NaN there too).
    """
    mean, std, n, lo, hi = mean_std_ci(diffs, level)
    if n == 0:
        return SeedTest(None, None, 0, None, None, None)
    if n < MIN_SEEDS or math.isnan(lo):
        return SeedTest(mean, None if math.isnan(std) else std, n, None, None, None)
    t = mean / (std / math.sqrt(n))
    p = float(2 * stats.t.sf(abs(t), df=n - 1))
    return SeedTest(mean, std, n, lo, hi, p)


def claim_status(direction: str, estimate: float | None, p_value: float | None, n_seeds: int,
                 alpha: float = ALPHA) -> str:
    """A claim's status: significant (``p_value`` < ``alpha``) on the claimed side of zero -> holds,
    on the other side -> does not hold; otherwise inconclusive, and ``inconclusive (1 seed)`` below
    :data:`MIN_SEEDS` whatever the test images say.

    ``direction``: "increase" (the claim is estimate > 0) or "decrease" (estimate < 0).
    """
    if estimate is None:
        return NOT_RUN
    if n_seeds < MIN_SEEDS:
        return ONE_SEED
    if p_value is None or math.isnan(p_value) or p_value >= alpha or estimate == 0:
        return INCONCLUSIVE
    sign = 1.0 if direction == "increase" else -1.0
    return HOLDS if sign * estimate > 0 else FAILS


def p_against(t: SeedTest, value: float) -> float | None:
    """Two-sided p of the t test of "the mean per-seed difference is ``value``" on the seeds of ``t``.

    None wherever ``t`` has no p (fewer than two seeds, no spread): the same seeds and the same
    t distribution as ``t.p_value``, only the null value moves.
    """
    if t.p_value is None or t.mean is None or t.std is None:
        return None
    stat = (t.mean - value) / (t.std / math.sqrt(t.n))
    return float(2 * stats.t.sf(abs(stat), df=t.n - 1))


def size_versus_paper(direction: str, estimate: float | None, paper_delta: float | None, p_paper: float | None,
                      alpha: float = ALPHA) -> str | None:
    """:data:`SMALLER` / :data:`LARGER` when the test against the paper's Δ (``p_paper``, from
    :func:`p_against`) is significant and our estimate lies below / above the paper's Δ on the claimed
    side (``direction`` "increase": larger = more positive; "decrease": larger = more negative); else None.

    With one test, p_paper < α is the 95 % seed interval excluding the paper's Δ.
    """
    if estimate is None or paper_delta is None or p_paper is None or math.isnan(p_paper) or p_paper >= alpha:
        return None
    gap = (1.0 if direction == "increase" else -1.0) * (estimate - paper_delta)  # > 0: beyond the paper's Δ
    return None if gap == 0 else LARGER if gap > 0 else SMALLER


def with_size(status: str, size: str | None) -> str:
    """``status`` with the comparison to the paper's Δ appended: "holds, smaller than the paper's"."""
    return status if size is None else f"{status}, {size}"


def base_status(status: str) -> str:
    """The zero-test's verdict of a status: "holds, smaller than the paper's" -> "holds",
    "inconclusive (1 seed)" -> "inconclusive"."""
    return status.split(",")[0].split(" (")[0]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (``statsmodels``' ``holm``).

    The k-th smallest of m p-values is multiplied by m − k + 1, kept monotone and capped at 1;
    rejecting every adjusted p < α keeps the probability of any false rejection ≤ α.
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = stepped
    return [float(v) for v in out]


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided p-value of "the statistic is 0" from bootstrap replicates: twice the smaller share of
    replicates at or beyond zero on either side (each share counted as (k + 1) / (R + 1)), at most 1."""
    r = np.asarray(replicates, dtype=float)
    r = r[~np.isnan(r)]
    if r.size == 0:
        return math.nan
    below = (np.count_nonzero(r <= 0) + 1) / (r.size + 1)
    above = (np.count_nonzero(r >= 0) + 1) / (r.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def paired_verdict(delta: float, p_holm: float, ci_lo: float, ci_hi: float, alpha: float = ALPHA) -> str:
    """``compare``'s verdict on one metric of two runs on the same images.

    Rule: "A better" / "B better" when McNemar's exact p, Holm-adjusted over the metrics compared,
    is below ``alpha`` *and* the paired bootstrap interval excludes zero on the same side; when only
    one of the two tests excludes zero, "tests disagree: no verdict"; else no significant difference.
    """
    mcnemar = not math.isnan(p_holm) and p_holm < alpha and delta != 0
    boot = not (math.isnan(ci_lo) or math.isnan(ci_hi)) and (ci_lo > 0 or ci_hi < 0)
    if mcnemar and boot and (ci_lo > 0) == (delta > 0):
        return "A better" if delta > 0 else "B better"
    if mcnemar or boot:
        return "tests disagree: no verdict"
    return f"no significant difference at {alpha:.0%}"
