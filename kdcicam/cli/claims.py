"""``kdcicam claims``: the paper's claims (from the registry) against what the store measured."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from kdcicam.cli._common import DB_HELP, REGISTRY_HELP, db_url
from kdcicam.core.config import PROTOCOLS
from kdcicam.core.errors import ConfigError
from kdcicam.core.fmt import fmt_signed, fmt_value, interval_text

_STYLE = {"holds": "green", "does not hold": "red", "inconclusive": "yellow", "not run": "dim", "no data": "dim"}


def _style(status: str) -> str:
    """The colour of a status ("inconclusive (1 seed)" is an inconclusive, "holds, smaller than the paper's" holds)."""
    from kdcicam.analysis.verdicts import base_status

    return _STYLE.get(base_status(status), "yellow")


def claims_cmd(
    protocol: str = typer.Option(
        "paper", help="Evaluation protocol whose numbers are compared (paper | standard), or both: each claim "
                      "under the two side by side, with how much of the paper-protocol change the standard keeps."),
    threshold_policy: str = typer.Option(
        "fixed", "--threshold-policy",
        help="Whose numbers: fixed (the run's θ), val (θ chosen on the validation split) or oracle "
             "(θ chosen on the test split: an upper bound, never a result to report)."),
    db: str | None = typer.Option(None, help=DB_HELP),
    registry: Path | None = typer.Option(None, help=REGISTRY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the ledger as JSON."),
    as_md: bool = typer.Option(False, "--md", help="Print the ledger as a Markdown table (for a findings page)."),
    variants: bool = typer.Option(
        False, "--variants",
        help="Instead of the ledger: the paper variant against the reference variant, cell by cell (paper − "
             "reference, paired by seed) and claim by claim (the verdict under each), where both ran."),
    seed_plan: bool = typer.Option(
        False, "--seed-plan",
        help="Instead of the ledger: the seed rule applied to the pilot (seeds below --pilot-seeds): each "
             "table's seeds, from the seeds its rows need to detect the paper's Δ (at most --max-seeds), "
             "and the ablate commands that add them (docs/findings.md)."),
    pilot_seeds: int = typer.Option(3, "--pilot-seeds", help="With --seed-plan: the pilot's seeds (0..N-1)."),
    max_seeds: int = typer.Option(8, "--max-seeds", help="With --seed-plan: rows needing more are under-powered."),
    findings: bool = typer.Option(
        False, "--findings",
        help="Instead of the ledger: claim by claim, a Markdown paragraph per scope with each metric's status "
             "under both protocols (for docs/findings.md)."),
) -> None:
    """List each claim of the paper the registry encodes, with ours, its interval and a status."""
    from kdcicam.analysis.claims import pair_protocols, test_records
    from kdcicam.analysis.ledger import evaluate_ledger
    from kdcicam.analysis.variants import VariantAgreement, variant_agreement
    from kdcicam.registry.ablations import load_registry
    from kdcicam.store import THRESHOLD_POLICIES, open_store, sqlite_file

    if sum((variants, seed_plan, findings)) > 1:
        raise ConfigError("--variants, --seed-plan and --findings each replace the ledger: name one")
    if protocol not in (*PROTOCOLS, "both"):
        raise ConfigError(f"--protocol {protocol!r}: must be one of {', '.join(PROTOCOLS)} or both")
    if protocol == "both" and variants:
        raise ConfigError("--protocol both compares the ledger across protocols; with --variants name one "
                          f"protocol ({', '.join(PROTOCOLS)})")
    if threshold_policy not in THRESHOLD_POLICIES:
        raise ConfigError(f"--threshold-policy {threshold_policy!r}: must be one of {', '.join(THRESHOLD_POLICIES)}")
    reg = load_registry(registry)
    url = db_url(db)
    path = sqlite_file(url)
    results = []
    agreement = VariantAgreement((), ())
    if path is None or path.exists():
        with open_store(url, create=False) as store:
            runs = store.list_runs()
            finals = store.final_metrics([r.id for r in runs if r.status == "finished"])
            if seed_plan:
                from kdcicam.cli.seed_plan import print_seed_plan, seed_plan_for_store

                plan = seed_plan_for_store(reg, runs, finals, test_records(store), threshold_policy=threshold_policy,
                                           pilot_seeds=pilot_seeds, max_seeds=max_seeds)
                print_seed_plan(plan, threshold_policy, as_json)
                return
            if findings:
                from kdcicam.report.findings import findings_markdown

                ledgers = evaluate_ledger(reg, runs, finals, test_records(store), threshold_policy=threshold_policy)
                typer.echo(findings_markdown(reg, ledgers, threshold_policy))
                return
            if variants:
                agreement = variant_agreement(reg, runs, finals, test_records(store), protocol=protocol,
                                              threshold_policy=threshold_policy)
            else:
                records = test_records(store)
                ledgers = evaluate_ledger(reg, runs, finals, records, threshold_policy=threshold_policy)
                results = pair_protocols(*ledgers.values()) if protocol == "both" else ledgers[protocol]
    if seed_plan:  # the store does not exist: the plan of no runs (its JSON stays readable by scripts)
        from kdcicam.cli.seed_plan import print_seed_plan, seed_plan_for_store

        plan = seed_plan_for_store(reg, [], {}, None, threshold_policy=threshold_policy, pilot_seeds=pilot_seeds,
                                   max_seeds=max_seeds)
        print_seed_plan(plan, threshold_policy, as_json)
        return
    if findings:
        typer.echo(f"no runs yet: no store at {path}")
        return
    oracle = " — ORACLE θ (chosen on the test split): an upper bound, not a result" if threshold_policy == "oracle" else ""
    if variants:
        _print_agreement(agreement, protocol, threshold_policy, oracle, as_json, as_md)
        return
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    if not results:
        claims = [c for t in reg.tables.values() for c in t.claims]
        typer.echo(f"no runs yet: {len(claims)} claims are waiting (e.g. kdcicam ablate table3, then kdcicam claims)")
        return
    if protocol == "both":
        _print_protocol_pairs(results, threshold_policy, oracle, as_md)
        return
    if as_md:
        typer.echo(ledger_markdown(results, protocol, threshold_policy, oracle))
        return
    console = Console(width=220)
    for scope in dict.fromkeys(r.scope for r in results):  # one table per scope, in the ledger's order
        t = Table(title=f"claims ledger: {scope}\n({protocol} protocol, θ {threshold_policy}; Δ in percentage "
                        f"points, ours = mean over seeds, 95% interval){oracle}")
        for col in ("claim", "metric", "selection", "paper Δ", "ours Δ", "95% interval", "n",
                    "per-image paired 95% (test set)", "seeds for paper Δ", "p (Holm)", "status"):
            t.add_column(col)
        for r in (r for r in results if r.scope == scope):
            interval = f"{interval_text(r.ci_lo, r.ci_hi)} {r.interval}" if r.ci_lo is not None else r.interval
            images = interval_text(r.image_ci_lo, r.image_ci_hi)
            t.add_row(r.text, r.metric, f"{r.selection} on {r.select_on}", fmt_signed(r.paper_delta),
                      fmt_signed(r.ours_delta), interval, str(r.n_seeds), images, _needed(r), p_text(r),
                      f"[{_style(r.status)}]{r.status}[/]")
        console.print(t)
    console.print(tally(results), highlight=False)


def tally(results) -> str:
    """One line: how many ledger rows hold, do not hold, are inconclusive, did not run or have no data, then
    how many of them are smaller / larger than the paper's Δ."""
    from kdcicam.analysis.verdicts import LARGER, SMALLER, base_status

    counts = {status: sum(base_status(r.status) == status for r in results) for status in _STYLE}
    counts["inconclusive"] += sum(base_status(r.status) not in _STYLE for r in results)
    counts.update({size: sum(r.status.endswith(f", {size}") for r in results) for size in (SMALLER, LARGER)})
    return f"{len(results)} rows: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n)


def p_text(r) -> str:
    """"p (p Holm, family of m)": the verdict's test uncorrected and adjusted; "—" without a test."""
    if r.p_value is None:
        return "—"
    if r.p_holm is None:
        return f"{r.p_value:.3g}"
    return f"{r.p_value:.3g} ({r.p_holm:.3g}, {r.family_size})"


def ledger_markdown(results, protocol: str, threshold_policy: str, oracle: str = "") -> str:
    """The ledger as a Markdown table: one row per claim, scope and metric (Δ in percentage points)."""
    from kdcicam.analysis.claims import LEDGER_NOTE

    lines = [f"Claims ledger: {protocol} protocol, θ {threshold_policy}{oracle}. {LEDGER_NOTE}"]
    for scope in dict.fromkeys(r.scope for r in results):  # one table per scope, in the ledger's order
        lines += ["", f"**{scope}**", "",
                  "| claim | metric | selection | paper Δ | ours Δ | 95 % interval (seeds) | n | "
                  "95 % interval (per image: the test set) | seeds for paper Δ | p (Holm, family) | status |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in results if r.scope == scope):
            seeds = interval_text(r.ci_lo, r.ci_hi) + _interval_kind(r.interval)
            images = interval_text(r.image_ci_lo, r.image_ci_hi)
            lines.append(f"| {r.text} | {r.metric} | {r.selection} on {r.select_on} | {fmt_signed(r.paper_delta)} | "
                         f"{fmt_signed(r.ours_delta)} | {seeds} | {r.n_seeds} | {images} | {_needed(r)} | "
                         f"{p_text(r)} | {r.status} |")
    return "\n".join(lines)


def _print_agreement(agreement, protocol: str, threshold_policy: str, oracle: str, as_json: bool,
                     as_md: bool) -> None:
    if as_json:
        typer.echo(json.dumps(agreement.to_dict(), indent=2))
        return
    if not agreement:
        typer.echo("no scope has finished runs of both variants: run a table with --variant paper beside the "
                   "default reference runs (e.g. kdcicam ablate table3 --variant paper), then kdcicam claims --variants")
        return
    if as_md:
        typer.echo(agreement_markdown(agreement, protocol, threshold_policy, oracle))
        return
    console = Console(width=200)
    for scope in dict.fromkeys(d.scope for d in agreement.deltas):
        t = Table(title=f"{scope}: paper − reference, cell by cell ({protocol} protocol, θ {threshold_policy}; "
                        f"percentage points, paired by seed, 95% intervals){oracle}")
        for col in ("table", "cell", "metric", "paper", "reference", "Δ", "95% interval", "n",
                    "per-image paired 95%", ""):
            t.add_column(col)
        for d in (d for d in agreement.deltas if d.scope == scope):
            t.add_row(d.table, d.name, d.metric, fmt_value(d.paper_value), fmt_value(d.reference_value),
                      fmt_signed(d.delta),
                      interval_text(d.ci_lo, d.ci_hi) + _interval_kind(d.interval), str(d.n_seeds),
                      interval_text(d.image_ci_lo, d.image_ci_hi), d.status)
        console.print(t)
        v = Table(title=f"{scope}: the paper's claims under each variant")
        for col in ("claim", "metric", "paper variant", "reference variant", "same verdict"):
            v.add_column(col)
        for r in (r for r in agreement.verdicts if r.scope == scope):
            v.add_row(r.text, r.metric, _verdict(r.paper), _verdict(r.reference), _agree(r.agree))
        console.print(v)


def _interval_kind(kind: str) -> str:
    return "" if kind in ("seeds (t)", "none") else f" {kind}"


def _verdict(r) -> str:
    return f"{r.status} ({fmt_signed(r.ours_delta)}, n={r.n_seeds})" if r.status != "not run" else "not run"


def _agree(agree: bool | None) -> str:
    return "—" if agree is None else "yes" if agree else "NO"


def agreement_markdown(agreement, protocol: str, threshold_policy: str, oracle: str = "") -> str:
    """The variant comparison in Markdown: per scope, a table cell by cell, then one claim by claim."""
    lines = [f"Variant paper vs reference: {protocol} protocol, θ {threshold_policy}{oracle}. Δ = paper − reference "
             "in percentage points, paired by seed; seed interval: Student t over the per-seed differences (none "
             "with one seed); per-image: paired bootstrap over test images of the per-image difference averaged "
             "over seeds (a description of the test set). \"differ\": two or more seeds and a t test significant "
             "at 5 % after Holm's adjustment over the cell's metrics; the claims' verdicts follow the ledger's rule "
             "(Holm within each claim's metrics under this protocol)."]
    for scope in dict.fromkeys(d.scope for d in agreement.deltas):
        lines += ["", f"**{scope}**", "",
                  "| table | cell | metric | paper | reference | Δ | 95 % interval (seeds) | n | "
                  "95 % interval (per image) | |", "|---|---|---|---|---|---|---|---|---|---|"]
        for d in (d for d in agreement.deltas if d.scope == scope):
            seeds = interval_text(d.ci_lo, d.ci_hi) + _interval_kind(d.interval)
            lines.append(f"| {d.table} | {d.name} | {d.metric} | {fmt_value(d.paper_value)} | "
                         f"{fmt_value(d.reference_value)} | {fmt_signed(d.delta)} | {seeds} | {d.n_seeds} | "
                         f"{interval_text(d.image_ci_lo, d.image_ci_hi)} | {d.status} |")
        lines += ["", "| claim | metric | verdict, paper variant (Δ, seeds) | verdict, reference variant | same verdict |",
                  "|---|---|---|---|---|"]
        for r in (r for r in agreement.verdicts if r.scope == scope):
            lines.append(f"| {r.text} | {r.metric} | {_verdict(r.paper)} | {_verdict(r.reference)} | {_agree(r.agree)} |")
    return "\n".join(lines)


def _needed(r) -> str:
    """Seeds a t test needs for the paper's Δ ("—": fewer than two seeds, no paper Δ or no spread)."""
    return "—" if r.seeds_needed is None else str(r.seeds_needed)


def _kept(pair) -> str:
    return "—" if pair.kept is None else f"{100 * pair.kept:.0f} %".replace("-", "−")


def _side(r) -> str:
    """One protocol's result in one cell: "Δ [interval] status"."""
    if r.status == "not run":
        return "not run"
    if r.ci_lo is None and r.image_ci_lo is not None:  # no seed interval: the per-image one, labelled as such
        return (f"{fmt_signed(r.ours_delta)} {interval_text(r.image_ci_lo, r.image_ci_hi)} per image"
                f"{_interval_kind(r.interval)} {r.status}")
    return f"{fmt_signed(r.ours_delta)} {interval_text(r.ci_lo, r.ci_hi)}{_interval_kind(r.interval)} {r.status}"


def _print_protocol_pairs(pairs, threshold_policy: str, oracle: str, as_md: bool) -> None:
    if as_md:
        typer.echo(protocols_markdown(pairs, threshold_policy, oracle))
        return
    t = Table(title=f"claims under both protocols (θ {threshold_policy}; ours Δ in percentage points, mean over "
                    f"seeds, [95% interval over seeds]; kept = standard Δ / paper Δ, where the paper-protocol interval excludes 0){oracle}")
    for col in ("claim", "scope", "metric", "Δ printed in the paper", "ours, paper protocol", "ours, standard protocol",
                "kept", "same verdict"):
        t.add_column(col)
    for pair in pairs:
        t.add_row(pair.paper.text, pair.paper.scope, pair.paper.metric, fmt_signed(pair.paper.paper_delta),
                  _side(pair.paper), _side(pair.standard), _kept(pair), _agree(pair.same_verdict))
    Console(width=220).print(t)


def protocols_markdown(pairs, threshold_policy: str, oracle: str = "") -> str:
    """Each claim under the paper and the standard protocol, side by side, as a Markdown table."""
    lines = [f"Claims under both evaluation protocols: θ {threshold_policy}{oracle}. Ours: Δ in percentage points "
             "(claimed cell minus the other), mean over seeds, [95 % interval over seeds] (none with one seed; "
             "Figure 1(b)'s margins: the hierarchical bootstrap over seeds and images), then the status (Holm "
             "within each claim's metrics and both protocols; see kdcicam claims --md for the rules and p-values); "
             "kept = standard-protocol Δ / paper-protocol Δ, shown only where the paper-protocol Δ has the paper's sign and its seed interval excludes zero."]
    for scope in dict.fromkeys(pair.paper.scope for pair in pairs):
        lines += ["", f"**{scope}**", "",
                  "| claim | metric | Δ printed in the paper | ours, paper protocol | ours, standard protocol | kept | "
                  "same verdict |", "|---|---|---|---|---|---|---|"]
        for pair in (p for p in pairs if p.paper.scope == scope):
            lines.append(f"| {pair.paper.text} | {pair.paper.metric} | {fmt_signed(pair.paper.paper_delta)} | "
                         f"{_side(pair.paper)} | {_side(pair.standard)} | {_kept(pair)} | "
                         f"{_agree(pair.same_verdict)} |")
    return "\n".join(lines)
