"""The seed rule: how many seeds each table gets after the pilot, from the pilot's seed-to-seed spread.

The rule (docs/findings.md, fixed before the campaign's verdicts were read): every difference claim
whose ``seeds_needed`` (paired seeds a two-sided t test at 5 % needs to detect the paper's own Δ with
80 % power at our spread) is at most ``max_seeds`` gets that many seeds; a claim needing more keeps
its seeds and is reported as under-powered at the paper's Δ. ``seeds_needed`` is read from the pilot
seeds only (seed numbers below ``pilot_seeds``), so the plan does not move as seeds are added. Seeds are
trained per table: a table (in one scope) gets the largest number any of its rows asks for, under
either protocol. Claims without a paper Δ (Figure 1(b)'s, the mechanism claims) ask for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from kdcicam.analysis.claim_result import ClaimResult
from kdcicam.analysis.results import ScopeKey

RULE = ("every claim with at most {max_seeds} seeds needed (to detect the paper's Δ with a two-sided t test at 5 % "
        "and 80 % power, at the spread of seeds 0..{last}) gets them, up to {max_seeds}; a table gets the most any "
        "of its rows needs, under either protocol")


@dataclass(frozen=True)
class SeedAsk:
    """One ledger row's ask: its claim, metric and protocol, and the seeds it needs."""

    claim: str
    text: str
    metric: str
    protocol: str
    seeds_needed: int


@dataclass(frozen=True)
class TablePlan:
    """One table in one scope: the seeds it has, the seeds the rule gives it, and the rows that ask."""

    table: str
    scope: str
    dataset: str
    backbone: str
    profile: str
    variant: str
    seeds_run: int  # pilot seeds paired in every row of this table's claims (the fewest over its rows)
    seeds: int  # the rule's number (>= seeds_run)
    asks: tuple[SeedAsk, ...] = field(default=())

    @property
    def command(self) -> str | None:
        """The ``kdcicam ablate`` line that trains the missing seeds (None when nothing is missing)."""
        if self.seeds <= self.seeds_run:
            return None
        variant = "" if self.variant == "reference" else f" --variant {self.variant}"
        return (f"kdcicam ablate {self.table} --dataset {self.dataset} --backbone {self.backbone} "
                f"--profile {self.profile}{variant} --seeds {self.seeds}")

    def to_dict(self) -> dict:
        return {**asdict(self), "command": self.command}


@dataclass(frozen=True)
class SeedPlan:
    pilot_seeds: int
    max_seeds: int
    tables: tuple[TablePlan, ...]
    underpowered: tuple[tuple[str, SeedAsk], ...]  # (scope, row) needing more than max_seeds

    @property
    def rule(self) -> str:
        return RULE.format(max_seeds=self.max_seeds, last=self.pilot_seeds - 1)

    def to_dict(self) -> dict:
        return {"rule": self.rule, "pilot_seeds": self.pilot_seeds, "max_seeds": self.max_seeds,
                "tables": [t.to_dict() for t in self.tables],
                "underpowered": [{"scope": scope, **asdict(ask)} for scope, ask in self.underpowered]}


def seed_plan(results: Sequence[ClaimResult], scopes: Mapping[str, ScopeKey], *, pilot_seeds: int,
              max_seeds: int) -> SeedPlan:
    """Apply the seed rule to a ledger computed on the pilot seeds.

    Args:
        results: the ledger's rows under every protocol (computed from runs of seeds < ``pilot_seeds``).
        scopes: scope title -> its :class:`ScopeKey` (for the command's dataset, backbone, profile, variant).
        pilot_seeds: the pilot's seed count.
        max_seeds: the rule's cap: rows needing more are under-powered and ask for nothing.
    """
    plans: dict[tuple[str, str], dict] = {}
    underpowered: list[tuple[str, SeedAsk]] = []
    for r in results:
        if r.scope not in scopes or r.n_seeds == 0:
            continue
        plan = plans.setdefault((r.table, r.scope), {"seeds_run": r.n_seeds, "asks": []})
        plan["seeds_run"] = min(plan["seeds_run"], r.n_seeds)
        if r.seeds_needed is None:
            continue
        ask = SeedAsk(r.claim, r.text, r.metric, r.protocol, r.seeds_needed)
        if r.seeds_needed <= max_seeds:
            plan["asks"].append(ask)
        else:
            underpowered.append((r.scope, ask))
    tables = []
    for (table, title), plan in plans.items():
        scope = scopes[title]
        asked = max((a.seeds_needed for a in plan["asks"]), default=0)
        tables.append(TablePlan(table, title, scope.dataset, scope.backbone, scope.profile, scope.variant,
                                plan["seeds_run"], max(plan["seeds_run"], asked), tuple(plan["asks"])))
    return SeedPlan(pilot_seeds, max_seeds, tuple(tables), tuple(underpowered))
