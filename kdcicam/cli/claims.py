"""``kdcicam claims``: the paper's claims (from the registry) against what the store measured."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from kdcicam.cli._common import DB_HELP, db_url
from kdcicam.config import PROTOCOLS
from kdcicam.store.schema import THRESHOLD_POLICIES
from kdcicam.errors import ConfigError

_STYLE = {"holds": "green", "does not hold": "red", "inconclusive": "yellow", "not run": "dim"}


def claims_cmd(
    protocol: str = typer.Option("paper", help="Evaluation protocol whose numbers are compared (paper | standard)."),
    threshold_policy: str = typer.Option(
        "fixed", "--threshold-policy",
        help="Whose numbers: fixed (the run's θ), val (θ chosen on the validation split) or oracle "
             "(θ chosen on the test split: an upper bound, never a result to report)."),
    db: str | None = typer.Option(None, help=DB_HELP),
    registry: Path | None = typer.Option(None, help="Registry folder [default: the repository's ablations/]."),
    as_json: bool = typer.Option(False, "--json", help="Print the ledger as JSON."),
    as_md: bool = typer.Option(False, "--md", help="Print the ledger as a Markdown table (for a findings page)."),
) -> None:
    """List each claim of the paper the registry encodes, with ours, its interval and a status."""
    from kdcicam.claims import evaluate_claims, test_records
    from kdcicam.registry import load_registry
    from kdcicam.store import open_store, sqlite_file

    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r}: must be one of {', '.join(PROTOCOLS)}")
    if threshold_policy not in THRESHOLD_POLICIES:
        raise ConfigError(f"--threshold-policy {threshold_policy!r}: must be one of {', '.join(THRESHOLD_POLICIES)}")
    reg = load_registry(registry)
    url = db_url(db)
    path = sqlite_file(url)
    results = []
    if path is None or path.exists():
        with open_store(url, create=False) as store:
            runs = store.list_runs()
            finals = store.final_metrics([r.id for r in runs if r.status == "finished"])
            results = evaluate_claims(reg, runs, finals, test_records(store), protocol=protocol,
                                      threshold_policy=threshold_policy)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    if not results:
        claims = [c for t in reg.tables.values() for c in t.claims]
        typer.echo(f"no runs yet: {len(claims)} claims are waiting (e.g. kdcicam ablate table3, then kdcicam claims)")
        return
    oracle = " — ORACLE θ (chosen on the test split): an upper bound, not a result" if threshold_policy == "oracle" else ""
    if as_md:
        typer.echo(ledger_markdown(results, protocol, threshold_policy, oracle))
        return
    t = Table(title=f"claims ledger ({protocol} protocol, θ {threshold_policy}; Δ in percentage points, "
                    f"ours = mean over seeds, 95% interval){oracle}")
    for col in ("claim", "scope", "metric", "θ policy", "selection", "paper Δ", "ours Δ", "95% interval", "n",
                "per-image paired 95%", "status"):
        t.add_column(col)
    for r in results:
        interval = f"[{r.ci_lo:+.1f}, {r.ci_hi:+.1f}] {r.interval}" if r.ci_lo is not None else r.interval
        images = f"[{r.image_ci_lo:+.1f}, {r.image_ci_hi:+.1f}]" if r.image_ci_lo is not None else "-"
        t.add_row(r.text, r.scope, r.metric, r.threshold_policy, f"{r.selection} on {r.select_on}",
                  "-" if r.paper_delta is None else f"{r.paper_delta:+.1f}",
                  "-" if r.ours_delta is None else f"{r.ours_delta:+.1f}", interval, str(r.n_seeds), images,
                  f"[{_STYLE[r.status]}]{r.status}[/]")
    Console(width=220).print(t)


def _pts(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def _interval(lo: float | None, hi: float | None) -> str:
    return "-" if lo is None or hi is None else f"[{lo:+.1f}, {hi:+.1f}]"


def ledger_markdown(results, protocol: str, threshold_policy: str, oracle: str = "") -> str:
    """The ledger as a Markdown table: one row per claim, scope and metric (Δ in percentage points)."""
    lines = [f"Claims ledger: {protocol} protocol, θ {threshold_policy}{oracle}. Δ in percentage points (claimed "
             "cell minus the other), ours = mean over seeds; seed interval: Student t over the per-seed "
             "differences (one seed: paired bootstrap over images); per-image: paired bootstrap over test "
             "images of the per-image difference averaged over seeds.", "",
             "| claim | scope | metric | selection | paper Δ | ours Δ | 95 % interval (seeds) | n | "
             "95 % interval (per image) | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        seeds = _interval(r.ci_lo, r.ci_hi) + ("" if r.interval in ("seeds (t)", "none") else f" {r.interval}")
        lines.append(f"| {r.text} | {r.scope} | {r.metric} | {r.selection} on {r.select_on} | {_pts(r.paper_delta)} | "
                     f"{_pts(r.ours_delta)} | {seeds} | {r.n_seeds} | {_interval(r.image_ci_lo, r.image_ci_hi)} | "
                     f"{r.status} |")
    return "\n".join(lines)
