"""``kdcicam report`` and ``kdcicam compare``: read the run store, print or write results.

Register both on the root app with :func:`register` (``kdcicam/cli/__init__.py``).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from kdcicam.cli._common import DB_HELP, REGISTRY_HELP, db_url

DEFAULT_HTML_DIR = Path("reports")


class Format(str, Enum):
    html = "html"
    md = "md"
    latex = "latex"


class ProtocolChoice(str, Enum):
    paper = "paper"
    standard = "standard"
    both = "both"


class Protocol(str, Enum):
    paper = "paper"
    standard = "standard"


class ThresholdPolicy(str, Enum):
    fixed = "fixed"
    val = "val"
    oracle = "oracle"


class ReportThetaPolicy(str, Enum):  # no oracle: a report's tables are results, and the oracle θ is not one
    fixed = "fixed"
    val = "val"


class Selection(str, Enum):
    last = "last"
    top1_loc = "top1_loc"
    gt_known_loc = "gt_known_loc"
    top1_cls = "top1_cls"


def report_cmd(
    fmt: Format = typer.Option(Format.html, "--format", "-f", help="Output format."),
    table: list[str] = typer.Option(None, "--table", "-t",
                                    help="Only this registry table (repeatable), e.g. table3; default: all."),
    protocol: ProtocolChoice = typer.Option(ProtocolChoice.both, "--protocol",
                                            help="Evaluation protocol(s) to show."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Write DIR/report.<ext> (+ figure PNGs for md/latex). Default: "
                                         "md/latex to stdout (no figures), html to reports/report.html."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    registry: Path | None = typer.Option(None, "--registry", help=REGISTRY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the tables' data as JSON (nothing rendered)."),
    threshold_policy: ReportThetaPolicy = typer.Option(
        ReportThetaPolicy.fixed, "--threshold-policy",
        help="Whose θ the localization numbers use: fixed (each run's eval.theta) or val (θ chosen on the "
             "validation split). The header says which."),
) -> None:
    """Render the paper's tables, the C-L scatter and a gallery from the run store."""
    from kdcicam.registry.ablations import load_registry
    from kdcicam.report import FORMATS, build_report, render, report_json
    from kdcicam.store import open_store, sqlite_file

    reg = load_registry(registry)
    protocols = ("paper", "standard") if protocol is ProtocolChoice.both else (protocol.value,)
    url = db_url(db)
    path = sqlite_file(url)
    tables = None if not table or "all" in table else table
    if path is not None and not path.exists():  # a report must not create a store as a side effect
        data = build_report(None, reg, protocols=protocols, table_keys=tables, store_url=url,
                            threshold_policy=threshold_policy.value)
    else:
        with open_store(url, create=False) as store:
            data = build_report(store, reg, protocols=protocols, table_keys=tables,
                                threshold_policy=threshold_policy.value)
    if as_json:
        typer.echo(json.dumps(report_json(data), indent=2))
        return
    to_stdout = out is None and fmt is not Format.html
    rendered = render(data, reg, fmt.value, figures=not to_stdout)
    if to_stdout:
        typer.echo(rendered.text, nl=False)
        return
    folder = out if out is not None else DEFAULT_HTML_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / FORMATS[fmt.value]
    target.write_text(rendered.text, encoding="utf-8")
    for name, png in rendered.files.items():
        (folder / name).write_bytes(png)
    extra = f" and {len(rendered.files)} figure(s)" if rendered.files else ""
    typer.echo(f"wrote {target}{extra}")


def compare_cmd(
    run_a: str = typer.Argument(..., help="Run A: id, id prefix, table/cell or table/cell@seed (e.g. table3/base@0)."),
    run_b: str = typer.Argument(..., help="Run B, named the same ways."),
    protocol: Protocol = typer.Option(Protocol.paper, "--protocol", help="Evaluation protocol to compare."),
    selection: Selection = typer.Option(Selection.last, "--selection", help="Checkpoint selection to compare."),
    threshold_policy: ThresholdPolicy = typer.Option(
        ThresholdPolicy.fixed, "--threshold-policy",
        help="θ of the numbers: fixed (the run's), val (chosen on validation) or oracle (chosen on test: an "
             "upper bound)."),
    protocol_b: Protocol | None = typer.Option(None, "--protocol-b", help="B's protocol, if not A's (no verdict)."),
    threshold_policy_b: ThresholdPolicy | None = typer.Option(
        None, "--threshold-policy-b", help="B's θ policy, if not A's (no verdict)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    resamples: int = typer.Option(2000, "--resamples", min=100, help="Paired bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
) -> None:
    """Compare two runs: config difference, metric deltas, and paired per-image tests.

    A verdict is given only when both numbers were produced the same way (protocol, variant,
    threshold policy, eval.select_on); otherwise: "no verdict: the runs differ in ...".
    """
    from kdcicam.analysis.compare import compare_runs, format_comparison
    from kdcicam.core.limits import check_limit
    from kdcicam.store import open_store

    check_limit("resamples", resamples, "--resamples")
    with open_store(db_url(db), create=False) as store:
        result = compare_runs(store, run_a, run_b, protocol=protocol.value, selection=selection.value,
                              n_resamples=resamples, seed=seed, threshold_policy=threshold_policy.value,
                              protocol_b=protocol_b.value if protocol_b else None,
                              threshold_policy_b=threshold_policy_b.value if threshold_policy_b else None)
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(format_comparison(result), nl=False)


def register(app: typer.Typer) -> None:
    """Add ``report`` and ``compare`` to the root app."""
    app.command("report")(report_cmd)
    app.command("compare")(compare_cmd)
