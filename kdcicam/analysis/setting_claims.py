"""Figure 1(b)'s claims: a claim about a scatter of training settings, judged on each setting's mean over
the seeds that ran every setting (:mod:`kdcicam.analysis.best_of_settings` holds the statistics)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from kdcicam.analysis.best_of_settings import (
    MIN_SCATTER_SEEDS,
    best_of_settings_verdict,
    hierarchical_margins,
    margin,
    per_seed_margins,
    too_few_seeds,
)
from kdcicam.analysis.claim_result import FLAG_OF, ClaimResult
from kdcicam.analysis.results import latest_per
from kdcicam.registry.definitions import Claim


def _latest_runs(sub: pd.DataFrame) -> pd.DataFrame:
    """One run per (cell, setting, seed): the one finished last (a rerun supersedes). Columns cell,
    setting, seed, run_id."""
    keys = ["cell", "setting", "seed"]
    return latest_per(sub, keys)[[*keys, "run_id"]].drop_duplicates()


def _complete_seeds(sub: pd.DataFrame, cells: Sequence[str]) -> pd.DataFrame:
    """``sub``'s rows of ``cells`` from the seeds in which each of them ran every one of its settings (a
    seed still training would tilt the setting means and, for a pareto claim, one side's best; seeds
    with uneven settings are never mixed): empty when no seed is complete."""
    sub = sub[sub["cell"].isin(cells)]
    settings = {cell: set(sub.loc[sub["cell"] == cell, "setting"]) for cell in cells}
    ran = {seed: {cell: set(sub.loc[(sub["seed"] == seed) & (sub["cell"] == cell), "setting"]) for cell in cells}
           for seed in set(sub["seed"])}
    complete = {seed for seed, done in ran.items() if all(done[cell] and done[cell] == settings[cell] for cell in cells)}
    return sub[sub["seed"].isin(complete)]


def _scatter_arrays(claim: Claim, runs: pd.DataFrame, cells: Sequence[str],
                    value: Callable[[str, int], np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """cell -> (S, K, N) values of the claim's two metrics: setting × seed (sorted) × ``value(run_id, axis)``."""
    seeds = sorted(set(runs["seed"]))
    arrays: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] = ({}, {})
    for cell in cells:
        rows = runs[runs["cell"] == cell].set_index(["setting", "seed"])["run_id"]
        for axis, out in enumerate(arrays):
            out[cell] = np.stack([np.stack([value(str(rows.loc[(setting, seed)]), axis) for seed in seeds])
                                  for setting in sorted(set(rows.index.get_level_values(0)))])
    return arrays


def _per_image_values(claim: Claim, runs: pd.DataFrame,
                      records: Callable[[str, str], pd.DataFrame]) -> Callable[[str, int], np.ndarray] | None:
    """run id, axis -> that run's per-image correctness (points) on the images every run has; None
    unless every run has per-image records of both metrics."""
    flags = [FLAG_OF.get(m) for m in claim.metrics[:2]]
    if None in flags:
        return None
    frames = {str(r.run_id): records(str(r.run_id), str(r.cell)) for r in runs.itertuples()}
    if any(not len(f) for f in frames.values()):
        return None
    ids = sorted(set.intersection(*(set(f["image_id"]) for f in frames.values())))
    if not ids:
        return None
    return lambda run_id, axis: 100.0 * frames[run_id].set_index("image_id").loc[ids, flags[axis]].to_numpy(float)


def best_of_settings_claim(base: dict, claim: Claim, sub: pd.DataFrame, records: Callable[[str, str], pd.DataFrame],
                      n_resamples: int) -> ClaimResult:
    """A claim about a scatter of training settings (``pareto``: one setting of ``claim.cell`` reaches
    every setting of ``claim.versus`` on both metrics at once; ``dilemma``: no setting of ``claim.cell``
    is the best on both), as the paper's figure draws one point per training.

    Judged on each setting's mean over the seeds in which the claim's cells ran every setting
    (:func:`_complete_seeds`), by :func:`~kdcicam.analysis.best_of_settings.best_of_settings_verdict`:
    a hierarchical bootstrap (seeds, then test images when every run has per-image records; seeds
    alone otherwise) and each seed alone. The per-image interval beside it keeps the seeds fixed and
    resamples the images only: a description of the test set's noise, not the verdict's evidence.

    ``records(run_id, cell)``: the run's per-image test records at the cell's checkpoint selection.
    """
    base = {**base, "metric": " & ".join(claim.metrics[:2]), "direction": claim.direction}
    cells = [claim.cell] + ([claim.versus] if claim.kind == "pareto" else [])
    sub = sub[sub["metric"].isin(claim.metrics[:2]) & sub["value"].notna()]
    wide = sub.pivot_table(index="run_id", columns="metric", values="value", aggfunc="last")
    if any(m not in wide for m in claim.metrics[:2]):
        return ClaimResult(**base, ours_delta=None, ci_lo=None, ci_hi=None, n_seeds=0, interval="none",
                           status="not run")
    sub = _complete_seeds(sub[sub["run_id"].isin(wide[list(claim.metrics[:2])].dropna().index)], cells)
    runs = _latest_runs(sub)
    if runs.empty:
        return ClaimResult(**base, ours_delta=None, ci_lo=None, ci_hi=None, n_seeds=0, interval="none",
                           status=too_few_seeds(0) if not sub.empty or not wide.empty else "not run")
    stored = _scatter_arrays(claim, runs, cells,
                             lambda run_id, axis: wide.loc[run_id, claim.metrics[axis]:claim.metrics[axis]].to_numpy(float))
    means = [{c: v.mean(axis=(1, 2))[None] for c, v in arrays.items()} for arrays in stored]
    estimate = margin(claim.kind, claim.cell, claim.versus, *means)
    if estimate is None:  # a dilemma of one setting
        return ClaimResult(**base, ours_delta=None, ci_lo=None, ci_hi=None, n_seeds=0, interval="none",
                           status="not run")
    ours = float(estimate[0])
    per_seed = per_seed_margins(claim.kind, claim.cell, claim.versus, *stored)
    per_image = _per_image_values(claim, runs, records)
    arrays = stored if per_image is None else _scatter_arrays(claim, runs, cells, per_image)
    k = len(per_seed)
    replicates = (hierarchical_margins(claim.kind, claim.cell, claim.versus, *arrays, n_resamples,
                                       images=per_image is not None) if k >= MIN_SCATTER_SEEDS else None)
    status, p, interval = best_of_settings_verdict(claim.direction, ours, replicates, per_seed)
    image_lo = image_hi = None
    if per_image is not None:
        fixed = hierarchical_margins(claim.kind, claim.cell, claim.versus, *arrays, n_resamples, resample_seeds=False)
        image_lo, image_hi = (round(float(v), 4) for v in np.percentile(fixed, [2.5, 97.5]))
    kind = ("best-of-settings" + (f" (mean of {k} seeds); holds in {sum(m > 0 for m in per_seed)} of {k} seeds"
                                  if k > 1 else ""))
    if interval is not None:
        kind += "; bootstrap over seeds" + (" and images" if per_image is not None else "")
    return ClaimResult(**base, ours_delta=round(ours, 4), ci_lo=None if interval is None else interval[0],
                       ci_hi=None if interval is None else interval[1], n_seeds=k, interval=kind, status=status,
                       image_ci_lo=image_lo, image_ci_hi=image_hi, p_value=p,
                       per_seed=tuple(round(m, 4) for m in per_seed))
