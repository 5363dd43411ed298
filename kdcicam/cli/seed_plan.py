"""``kdcicam claims --seed-plan``: the seed rule applied to the store's pilot seeds, as ablate commands."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from kdcicam.core.errors import ConfigError


def seed_plan_for_store(reg, runs, finals, records, *, threshold_policy: str, pilot_seeds: int, max_seeds: int):
    """The :class:`~kdcicam.analysis.seed_plan.SeedPlan` of the finished runs of seeds below ``pilot_seeds``."""
    from kdcicam.analysis.ledger import evaluate_ledger
    from kdcicam.analysis.results import scopes_of
    from kdcicam.analysis.seed_plan import seed_plan

    if pilot_seeds < 2:
        raise ConfigError(f"--pilot-seeds {pilot_seeds}: the rule reads a seed-to-seed spread, so at least 2")
    if max_seeds < pilot_seeds:
        raise ConfigError(f"--max-seeds {max_seeds}: must be at least --pilot-seeds ({pilot_seeds})")
    pilot = [r for r in runs if r.status == "finished" and r.seed < pilot_seeds]
    if not pilot:  # no store, or nothing finished yet: the empty plan
        return seed_plan([], {}, pilot_seeds=pilot_seeds, max_seeds=max_seeds)
    ledgers = evaluate_ledger(reg, pilot, finals, records, threshold_policy=threshold_policy)
    scopes = {scope.title: scope for scope in scopes_of(reg, pilot).values()}
    return seed_plan([r for rows in ledgers.values() for r in rows], scopes, pilot_seeds=pilot_seeds,
                     max_seeds=max_seeds)


def print_seed_plan(plan, threshold_policy: str, as_json: bool) -> None:
    """The plan as JSON, or as a table of tables and the commands to run."""
    if as_json:
        typer.echo(json.dumps({**plan.to_dict(), "threshold_policy": threshold_policy}, indent=2))
        return
    if not plan.tables:
        typer.echo(f"no claim has finished runs of both its cells among seeds 0..{plan.pilot_seeds - 1}: run the "
                   f"pilot first (kdcicam ablate <table> --seeds {plan.pilot_seeds})")
        return
    console = Console(width=200)
    console.print(f"Seed rule (θ {threshold_policy}): {plan.rule}.", highlight=False)
    t = Table(title="seeds per table")
    for col in ("table", "scope", "pilot seeds run", "seeds (rule)", "rows asking (claim / metric / protocol: seeds)"):
        t.add_column(col)
    for p in plan.tables:
        asks = "; ".join(f"{a.claim} / {a.metric} / {a.protocol}: {a.seeds_needed}" for a in p.asks) or "—"
        run = str(p.seeds_run) + ("" if p.seeds_run >= plan.pilot_seeds else " (pilot incomplete)")
        t.add_row(p.table, p.scope, run, str(p.seeds), asks)
    console.print(t)
    if plan.underpowered:
        console.print(f"Under-powered at the paper's Δ (need more than {plan.max_seeds} seeds; they keep theirs):",
                      highlight=False)
        for scope, a in plan.underpowered:
            console.print(f"  {a.claim} / {a.metric} / {a.protocol} protocol: {a.seeds_needed} seeds ({scope})",
                          highlight=False)
    commands = [p.command for p in plan.tables if p.command]
    if any(p.seeds_run < plan.pilot_seeds for p in plan.tables):
        console.print(f"The pilot is incomplete: some table has fewer than {plan.pilot_seeds} finished seeds; "
                      "finish it before reading this plan.", highlight=False)
    console.print("Commands (add the store's --db / --artifacts, and --jobs):" if commands
                  else "Nothing to add: no table needs more seeds than it has.", highlight=False)
    for command in commands:
        typer.echo(f"  {command}")
