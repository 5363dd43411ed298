"""The ledger as findings: claim by claim, one sentence per scope, protocol and metric that a reader can quote.

Each sentence names what produced it (variant, protocol, θ policy, seeds), our Δ with its 95 % seed
interval, the paper's Δ and the status the ledger gave (:mod:`kdcicam.analysis.ledger`): holds, does
not hold, smaller / larger than the paper's, or inconclusive with the seeds a t test would need to
detect the paper's Δ. Rows that did not run are left out; a protocol under which the metric is not
measured (the mechanism measures under the paper protocol) is said once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kdcicam.analysis.claim_result import ClaimResult
from kdcicam.analysis.verdicts import NO_DATA, NOT_RUN
from kdcicam.core.fmt import fmt_signed, interval_text
from kdcicam.registry.ablations import Registry

LABELS = {
    "top1_cls": "Top-1 Cls", "top5_cls": "Top-5 Cls", "top1_loc": "Top-1 Loc", "top5_loc": "Top-5 Loc",
    "gt_known_loc": "GT-known Loc", "maxboxacc_v2": "MaxBoxAccV2", "pxap": "PxAP",
    "cam_mass_part": "CAM mass on the part", "cam_mass_body": "CAM mass on the body",
    "cam_mass_background": "CAM mass on the background", "cam_mass_context": "CAM mass on the context",
    "top1_cls_context_swapped": "Top-1 Cls, context swapped", "context_reliance": "context reliance",
}


def metric_label(metric: str) -> str:
    """"Top-1 Loc", or "Top-1 Cls & Top-1 Loc" for Figure 1(b)'s pairs."""
    return " & ".join(LABELS.get(m, m) for m in metric.split(" & "))


def finding_sentence(r: ClaimResult) -> str:
    """One ledger row as a sentence: "<metric>, <protocol> protocol: **<status>**: ours …, the paper's …"."""
    head = f"{metric_label(r.metric)}, {r.protocol} protocol: **{r.status}**"
    if r.interval.startswith("best-of-settings"):  # Figure 1(b): a margin over training settings
        spread = f", 95 % {interval_text(r.ci_lo, r.ci_hi)} (bootstrap over seeds)" if r.ci_lo is not None else ""
        seeds = ("" if r.per_seed is None else f", each setting at its mean of {len(r.per_seed)} seeds; "
                 f"{sum(m > 0 for m in r.per_seed)} of {len(r.per_seed)} seeds hold it alone")
        return f"{head}: margin {fmt_signed(r.ours_delta)} points{spread}{seeds}."
    paper = "" if r.paper_delta is None else f" (the paper's {fmt_signed(r.paper_delta)})"
    if r.n_seeds < 2:
        per_image = (f"; per image {interval_text(r.image_ci_lo, r.image_ci_hi)}, a description of the test set, "
                     "not evidence" if r.image_ci_lo is not None else "")
        body = f"ours {fmt_signed(r.ours_delta)} points from one seed{paper}{per_image}"
    else:
        spread = (f", 95 % {interval_text(r.ci_lo, r.ci_hi)}" if r.ci_lo is not None
                  else " (no spread: every seed gives the same difference)")
        by_seed = ("" if not r.seed_deltas else
                   "; by seed: " + ", ".join(f"{seed} {fmt_signed(delta)}" for seed, delta in r.seed_deltas))
        body = f"ours {fmt_signed(r.ours_delta)} points{spread} over {r.n_seeds} seeds{paper}{by_seed}"
    needed = ""
    if r.seeds_needed is not None and not r.status.startswith(("holds", "does not hold")):
        needed = f"; {r.seeds_needed} seeds would detect the paper's Δ (80 % power)"
    p = "" if r.p_holm is None else f"; p {r.p_value:.2g}, Holm {r.p_holm:.2g} (family of {r.family_size})"
    return f"{head}: {body}{needed}{p}."


def findings_markdown(reg: Registry, ledgers: Mapping[str, Sequence[ClaimResult]], threshold_policy: str) -> str:
    """Every registry claim with rows in ``ledgers`` (protocol -> rows), as Markdown: a heading per claim,
    the paper's words where the claim is our reading of them, then a paragraph per scope."""
    rows = [r for protocol_rows in ledgers.values() for r in protocol_rows]
    lines = [f"Claim by claim (θ policy {threshold_policy}; Δ in percentage points, claimed cell minus the other, "
             "mean over seeds with its 95 % Student-t interval over seeds; statuses and their rules: "
             "`kdcicam claims --md`)."]
    for table in reg.tables.values():
        for claim in table.claims:
            mine = [r for r in rows if r.table == table.key and r.claim == claim.key and r.status != NOT_RUN]
            if not mine:
                continue
            lines += ["", f"### {table.title.split(':')[0]}: {claim.text}", ""]
            lines.append(f"`{claim.table}/{claim.key}`: {claim.cell} against {claim.versus}, "
                         f"{claim.direction} claimed.")
            for scope in dict.fromkeys(r.scope for r in mine):
                in_scope = [r for r in mine if r.scope == scope]
                order = {m: i for i, m in enumerate(dict.fromkeys(r.metric for r in in_scope))}
                in_scope.sort(key=lambda r: (order[r.metric], r.protocol != "paper"))
                lines += ["", f"- **{in_scope[0].variant} variant** ({scope}):"]
                unmeasured = sorted({r.protocol for r in in_scope if r.status == NO_DATA})
                for r in in_scope:
                    if r.status != NO_DATA:
                        lines.append(f"  - {finding_sentence(r)}")
                for protocol in unmeasured:
                    metrics = ", ".join(metric_label(r.metric) for r in in_scope
                                        if r.protocol == protocol and r.status == NO_DATA)
                    lines.append(f"  - {metrics}: not measured under the {protocol} protocol.")
    return "\n".join(lines)
