"""Figure 1(b)'s claims on a scatter of training settings, as pure functions on arrays.

- :func:`margin`: by how much a ``pareto`` claim (one setting of a cell beats every setting of the
  other on both metrics) or a ``dilemma`` claim (no setting of a cell is the best on both) holds,
  signed: > 0 holds, < 0 fails, for R draws at once.
- :func:`hierarchical_margins`: bootstrap replicates of the margin that resample the seeds (one
  draw of seeds shared by every setting and cell, so a seed's runs stay together) and then the test
  images (one draw of images shared by every run); without per-image values, the seeds only.
- :func:`best_of_settings_verdict`: the status from those replicates and the seeds one by one.

The margins are built from maxima over noisy settings, so their estimates are biased where the
truth is a tie (a noisy runner-up's maximum overshoots). The bootstrap replicates repeat that
bias once more: the verdict uses the bias-corrected replicates ``2·m̂ − m*`` (the basic bootstrap),
widened for the few seeds and Bonferroni-corrected over the two metrics (:func:`best_of_settings_verdict`),
and asks in addition that every seed alone agrees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import stats

from kdcicam.analysis.verdicts import ALPHA, FAILS, HOLDS, INCONCLUSIVE, ONE_SEED, bootstrap_p

MIN_SCATTER_SEEDS = 3  # seeds a Figure 1(b) verdict needs (the seeds are resampled)
AXES = 2  # the two metrics of the scatter
_CHUNK = 4_000_000  # resampled (draw, image) counts held in memory at once (~32 MB)


def _best_of_others(a: np.ndarray) -> np.ndarray:
    """(R, S) -> (R, S): for each setting, the largest value among the *other* settings."""
    top = np.sort(a, axis=1)[:, -2:]  # (R, 2): runner-up, best
    return np.where(a == top[:, 1:], top[:, :1], top[:, 1:])


def margin(kind: str, cell: str, versus: str, x: Mapping[str, np.ndarray],
           y: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The Figure 1(b) margin (points) for R draws: ``x[c]``, ``y[c]`` are (R, S) setting means of cell c.

    pareto: the largest, over ``cell``'s settings, of the smaller lead over ``versus``'s best on
    each axis (> 0: one setting is better at both). dilemma: minus the largest such lead of one of
    ``cell``'s settings over the best of its other settings (> 0: every setting would need that much
    more on one axis to be the best at both; < 0: one setting is ahead at both by that much; 0: a
    tie). None for a dilemma of fewer than two settings.
    """
    if kind == "pareto":
        return np.minimum(x[cell] - x[versus].max(axis=1, keepdims=True),
                          y[cell] - y[versus].max(axis=1, keepdims=True)).max(axis=1)  # (R,)
    xs, ys = x[cell], y[cell]  # (R, S)
    if xs.shape[1] < 2:
        return None
    lead = np.minimum(xs - _best_of_others(xs), ys - _best_of_others(ys))  # (R, S)
    return -lead.max(axis=1)


def _run_means(values: np.ndarray, counts: np.ndarray | None) -> np.ndarray:
    """(S, K, N) per-image values -> (S, K, r) run means under r image resamples (``counts``: (r, N)
    how often each image is drawn); without ``counts`` the (S, K, 1) stored values repeat."""
    if counts is None:
        return values[..., :1]
    s, k, n = values.shape
    return (values.reshape(s * k, n) @ counts.T).reshape(s, k, -1) / n


def _setting_means(values: np.ndarray, counts: np.ndarray | None, seeds: np.ndarray) -> np.ndarray:
    """(S, K, N) values -> (r, S) setting means over the drawn ``seeds`` (r, K), images drawn by ``counts``."""
    runs = _run_means(values, counts)  # (S, K, r or 1)
    runs = np.broadcast_to(runs, (*runs.shape[:2], seeds.shape[0])).transpose(0, 2, 1)  # (S, r, K)
    return np.take_along_axis(runs, seeds[None], axis=2).mean(axis=2).T  # (r, S)


def hierarchical_margins(kind: str, cell: str, versus: str, x: Mapping[str, np.ndarray],
                         y: Mapping[str, np.ndarray], n_resamples: int, seed: int = 0,
                         images: bool = True, resample_seeds: bool = True) -> np.ndarray | None:
    """Bootstrap replicates (R,) of :func:`margin`.

    Args:
        kind, cell, versus: the claim.
        x, y: cell -> (S, K, N) values in points: setting × seed × image (per-image correctness × 100)
            or, with ``images=False``, (S, K, 1) stored metrics. Seed k is the same seed for every cell.
        n_resamples: replicates R.
        seed: seed of the generator.
        images: whether to resample the images as well (the last axis), after the seeds.
        resample_seeds: False keeps every seed in every replicate (the images' noise alone).

    Each replicate draws K seeds with replacement (the same draw for every setting and cell), then N
    image indices (the same for every run), and recomputes each setting's mean over the drawn seeds
    and the margin. Memory is bounded by processing the replicates in chunks.
    """
    rng = np.random.default_rng(seed)
    first = next(iter(x.values()))
    k, n = first.shape[1], first.shape[2]
    per_chunk = max(1, _CHUNK // n) if images else n_resamples
    out = []
    for start in range(0, n_resamples, per_chunk):
        r = min(per_chunk, n_resamples - start)
        seeds = rng.integers(0, k, size=(r, k)) if resample_seeds else np.tile(np.arange(k), (r, 1))  # (r, K)
        counts = None
        if images:
            draws = rng.integers(0, n, size=(r, n)) + n * np.arange(r)[:, None]
            counts = np.bincount(draws.ravel(), minlength=r * n).reshape(r, n).astype(float)  # (r, N)
        m = margin(kind, cell, versus, {c: _setting_means(v, counts, seeds) for c, v in x.items()},
                   {c: _setting_means(v, counts, seeds) for c, v in y.items()})
        if m is None:
            return None
        out.append(m)
    return np.concatenate(out)


def per_seed_margins(kind: str, cell: str, versus: str, x: Mapping[str, np.ndarray],
                     y: Mapping[str, np.ndarray]) -> list[float]:
    """The margin of each seed's runs alone (``x``, ``y`` as in :func:`hierarchical_margins`)."""
    k = next(iter(x.values())).shape[1]
    out = []
    for j in range(k):
        m = margin(kind, cell, versus, {c: v[:, j].mean(axis=-1)[None] for c, v in x.items()},
                   {c: v[:, j].mean(axis=-1)[None] for c, v in y.items()})
        if m is not None:
            out.append(float(m[0]))
    return out


def best_of_settings_verdict(direction: str, estimate: float, replicates: np.ndarray | None,
                             per_seed: list[float], alpha: float = ALPHA
                             ) -> tuple[str, float | None, tuple[float, float] | None]:
    """(status, p, (lo, hi)) of a Figure 1(b) claim whose margin is ``estimate``.

    Fewer than :data:`MIN_SCATTER_SEEDS` seeds: ``inconclusive (k seeds)`` and no p (two seeds give a
    seed bootstrap of three distinct draws). Otherwise the replicates are bias-corrected
    (``2·estimate − replicate``, the basic bootstrap) and their spread around the estimate widened by
    √(K/(K−1))·t(K−1)/z for K seeds (so that for one setting's mean over seeds the interval is the
    Student-t interval, which a bootstrap of three seeds falls well short of). p is their two-sided
    :func:`~kdcicam.analysis.verdicts.bootstrap_p` times 2 (Bonferroni over the two metrics whose
    smaller lead the margin is: the remaining tie bias), (lo, hi) their central 1 − α interval. The
    status follows :func:`status_from`; the caller may call it again with a Holm-adjusted p.
    """
    k = len(per_seed)
    if k < MIN_SCATTER_SEEDS or replicates is None:
        return too_few_seeds(k), None, None
    level = 1 - alpha / 2 / AXES
    widen = math.sqrt(k / (k - 1)) * float(stats.t.ppf(level, k - 1) / stats.norm.ppf(level))
    corrected = estimate + widen * (estimate - np.asarray(replicates, dtype=float))  # basic bootstrap, widened
    p = min(1.0, AXES * bootstrap_p(corrected))
    lo, hi = (float(v) for v in np.quantile(corrected, [alpha / 2, 1 - alpha / 2]))
    return status_from(direction, estimate, p, per_seed, alpha), p, (round(lo, 4), round(hi, 4))


def too_few_seeds(k: int) -> str:
    """The status of a Figure 1(b) claim judged on ``k`` < :data:`MIN_SCATTER_SEEDS` seeds."""
    if k == 0:
        return f"{INCONCLUSIVE} (no seed ran every setting)"
    return ONE_SEED if k == 1 else f"{INCONCLUSIVE} ({k} seeds)"


def status_from(direction: str, estimate: float, p: float | None, per_seed: list[float],
                alpha: float = ALPHA) -> str:
    """Holds when p < α, the margin is on the claimed side of zero *and* so is every seed's own margin;
    does not hold when all three are on the other side; else inconclusive (fewer than
    :data:`MIN_SCATTER_SEEDS` seeds: ``inconclusive (k seeds)``)."""
    if len(per_seed) < MIN_SCATTER_SEEDS:
        return too_few_seeds(len(per_seed))
    sign = 1.0 if direction == "increase" else -1.0
    if p is None or math.isnan(p) or p >= alpha:
        return INCONCLUSIVE
    if sign * estimate > 0 and all(sign * m > 0 for m in per_seed):
        return HOLDS
    if sign * estimate < 0 and all(sign * m < 0 for m in per_seed):
        return FAILS
    return INCONCLUSIVE
