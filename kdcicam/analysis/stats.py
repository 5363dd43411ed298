"""The statistics behind ``report`` and ``compare``: pure functions on numpy arrays.

- :func:`mean_std_ci`: a cell's mean over seeds, its sample std and a Student-t interval.
- :func:`mcnemar_exact`: McNemar's exact test on two runs' paired per-image correctness.
- :func:`paired_bootstrap_ci`: a percentile interval for the difference of two paired means.
- :func:`pareto_front`: the non-dominated points of the C-L dilemma scatter.
- :func:`linear_trend`: the least-squares slope of y on x with a Student-t interval (a sweep's trend).
- :func:`seeds_needed`: how many paired seeds a t test needs to detect a given difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

_BOOTSTRAP_CHUNK = 4_000_000  # resampled draws held in memory at once (~32 MB of indices)


def mean_std_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, int, float, float]:
    """Mean, sample standard deviation and Student-t confidence interval of a few seeds' values.

    NaN values are dropped first (a seed whose metric was not recorded).

    Args:
        values: one number per seed.
        level: confidence level of the interval.

    Returns:
        (mean, std, n, ci_lo, ci_hi); std and the interval are NaN for n < 2, everything but n is
        NaN for n = 0; the interval is NaN when every value is the same (std 0: the t interval would
        have zero width, however few the seeds; scipy returns NaN there too).
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, 0, math.nan, math.nan
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, 1, math.nan, math.nan
    std = float(x.std(ddof=1))
    if std <= 1e-12 * max(1.0, abs(mean)):  # identical up to rounding
        return mean, std, n, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, df=n - 1)) * std / math.sqrt(n)
    return mean, std, n, mean - half, mean + half


def linear_trend(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> tuple[float, int, float, float]:
    """Ordinary least-squares slope of ``y`` on ``x`` and its Student-t interval (n − 2 degrees of freedom).

    NaN pairs are dropped. Returns (slope, n, ci_lo, ci_hi); the interval is NaN for n < 3, and
    everything but n is NaN when fewer than two distinct x remain.
    """
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(xs) | np.isnan(ys))
    xs, ys = xs[keep], ys[keep]
    n = int(xs.size)
    sxx = float(((xs - xs.mean()) ** 2).sum()) if n else 0.0
    if n < 2 or sxx == 0.0:
        return math.nan, n, math.nan, math.nan
    slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / sxx)
    if n < 3:
        return slope, n, math.nan, math.nan
    residuals = ys - (ys.mean() + slope * (xs - xs.mean()))
    se = math.sqrt(float((residuals ** 2).sum()) / (n - 2) / sxx)
    half = float(stats.t.ppf(0.5 + level / 2, df=n - 2)) * se
    return slope, n, slope - half, slope + half


def seeds_needed(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8, max_n: int = 10_000) -> int | None:
    """The fewest paired seeds for which a two-sided one-sample t test of the per-seed differences, at
    level ``alpha``, detects a true mean difference ``delta`` with probability ``power``, when the
    differences have standard deviation ``sd`` (noncentral t). None when ``sd`` or ``delta`` gives no
    answer (not finite, sd <= 0, delta = 0) or more than ``max_n`` seeds would be needed.
    """
    if not (math.isfinite(sd) and math.isfinite(delta)) or sd <= 0 or delta == 0:
        return None
    effect = abs(delta) / sd
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    start = max(2, int((z / effect) ** 2))  # the normal approximation never asks for more than the t test
    for n in range(start, max_n + 1):
        df = n - 1
        crit = float(stats.t.ppf(1 - alpha / 2, df))
        nc = effect * math.sqrt(n)
        achieved = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
        if achieved >= power:
            return n
    return None


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> tuple[int, int, float]:
    """McNemar's exact (binomial) test on paired per-image correctness of runs A and B.

    Only the discordant images carry information: under "A and B are equally accurate" each of
    the ``b01 + b10`` discordant images is A's win with probability 1/2.

    Args:
        a_correct: (N,) bool, A's correctness per image.
        b_correct: (N,) bool, B's correctness on the same images in the same order.

    Returns:
        (b01, b10, p): b01 = images A got wrong and B right, b10 = A right and B wrong, p the
        two-sided exact p-value (1.0 when there is no discordant image).
    """
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two 1-D arrays of the same length, got {a.shape} and {b.shape}")
    b01 = int(np.count_nonzero(~a & b))
    b10 = int(np.count_nonzero(a & ~b))
    if b01 + b10 == 0:
        return b01, b10, 1.0
    p = float(stats.binomtest(min(b01, b10), n=b01 + b10, p=0.5, alternative="two-sided").pvalue)
    return b01, b10, min(1.0, p)


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], n_resamples: int = 2000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b) over paired items (images).

    Each resample draws N image indices with replacement and takes the mean of the per-image
    differences, so the pairing (both runs on the same image) is kept.

    Args:
        a: (N,) per-image values of run A (e.g. 0/1 correctness).
        b: (N,) values of run B on the same images in the same order.
        n_resamples: number of bootstrap resamples.
        seed: seed of the numpy Generator (the interval is reproducible).
        level: coverage of the interval.

    Returns:
        (delta, lo, hi): the observed difference of means and the interval's bounds (NaN when N = 0).
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"expected two 1-D arrays of the same length, got {x.shape} and {y.shape}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan
    diff = x - y  # (N,)
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _BOOTSTRAP_CHUNK // n)
    means = np.empty(n_resamples)  # (R,)
    for start in range(0, n_resamples, rows_per_chunk):
        stop = min(n_resamples, start + rows_per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))  # (r, N)
        means[start:stop] = diff[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(diff.mean()), float(lo), float(hi)


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points when both coordinates are to be maximised.

    A point is dominated when another is at least as good in x and y and strictly better in one.
    Points with a NaN coordinate are never on the front.

    Args:
        points: (N, 2) array-like of (x, y).

    Returns:
        Indices of the front, ordered by increasing x (then decreasing y).
    """
    p = np.asarray(points, dtype=float).reshape(-1, 2)  # (N, 2)
    ok = ~np.isnan(p).any(axis=1)
    front = []
    for i in np.flatnonzero(ok):
        others = p[ok]
        ge = (others >= p[i]).all(axis=1)
        gt = (others > p[i]).any(axis=1)
        if not (ge & gt).any():
            front.append(int(i))
    return sorted(front, key=lambda i: (p[i, 0], -p[i, 1]))

