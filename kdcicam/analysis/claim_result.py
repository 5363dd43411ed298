"""One row of the claims ledger: a claim on one metric in one scope, with ours, its interval and a status
(:mod:`kdcicam.analysis.claims` computes them; :mod:`kdcicam.analysis.ledger` adjusts their p-values)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
    # "seeds (t)", "1 seed", "no spread (identical per-seed differences)", "none", or
    # "best-of-settings[ (mean of n seeds); holds in k of n seeds][; bootstrap over seeds[ and images]]"
    interval: str
    status: str  # holds | does not hold | inconclusive | inconclusive (k seed[s]) | not run
    image_ci_lo: float | None = None  # paired per-image bootstrap over the seeds' mean differences, points
    image_ci_hi: float | None = None
    seeds_needed: int | None = None  # paired seeds a t test needs to detect the paper's Δ (80 % power, our seed sd)
    direction: str = "increase"  # the claimed side of zero
    p_value: float | None = None  # the verdict's test, uncorrected (seed t test; Figure 1(b): bootstrap)
    p_holm: float | None = None  # p_value Holm-adjusted within the claim's family (kdcicam.analysis.ledger)
    family_size: int | None = None  # tests in that family
    per_seed: tuple[float, ...] | None = None  # Figure 1(b): each seed's own margin
    p_paper: float | None = None  # the seed t test against the paper's Δ (H0: our mean = paper Δ), uncorrected
    p_paper_holm: float | None = None  # p_paper Holm-adjusted within the claim's family of such tests
    size: str | None = None  # "smaller than the paper's" | "larger than the paper's" | None (see verdicts)
    seed_deltas: tuple[tuple[int, float], ...] | None = None  # difference claims: (seed, its Δ in points)

    def to_dict(self) -> dict:
        """The row as JSON-ready values; ``seed_deltas`` as {seed: Δ}."""
        out = asdict(self)
        if self.seed_deltas is not None:
            out["seed_deltas"] = {str(seed): delta for seed, delta in self.seed_deltas}
        return out
