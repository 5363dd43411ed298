"""``kdcicam runs show``: one run in full (status, timings, final metrics, last epoch, config)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from kdcicam.cli._common import DB_HELP, db_url
from kdcicam.cli.runs_format import (
    EVAL_GROUP,
    fmt_seconds,
    fmt_value,
    fmt_when,
    metric_values,
    run_progress,
    table_console,
)

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

    from kdcicam.store import RunInfo


def _final_groups(finals: pd.DataFrame) -> list[dict[str, Any]]:
    groups = []
    for key, rows in finals.groupby(EVAL_GROUP, sort=True):
        groups.append({**dict(zip(EVAL_GROUP, key)), "metrics": metric_values(rows)})
    return groups


def _final_tables(groups: list[dict[str, Any]]) -> list[Table]:
    """One table per (protocol, split): a row per metric, a column per (checkpoint selection, θ policy);
    a wide table of every metric per group does not fit a terminal."""
    tables = []
    for protocol, split in dict.fromkeys((g["protocol"], g["split"]) for g in groups):
        part = [g for g in groups if (g["protocol"], g["split"]) == (protocol, split)]
        names = sorted({name for g in part for name in g["metrics"]})
        title = f"{protocol} protocol, {split} split"
        table = Table(title=title, min_width=len(title) + 4)  # a one-column table would fold its title
        table.add_column("metric")
        for g in part:
            table.add_column(f"{g['selection']}\n{g['threshold_policy']}", justify="right")
        for name in names:
            table.add_row(name, *(fmt_value(g["metrics"].get(name)) for g in part))
        tables.append(table)
    return tables


def _last_epoch(epochs: pd.DataFrame) -> dict[str, Any] | None:
    if epochs.empty:
        return None
    last = int(epochs["epoch"].max())
    rows = epochs[epochs["epoch"] == last]
    out: dict[str, Any] = {"epoch": last}
    for split, part in rows.groupby("split", sort=True):
        out[split] = metric_values(part)
    return out


def show_cmd(
    run: str = typer.Argument(..., help="Run id or a unique prefix of at least 4 characters."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print everything as one JSON object."),
) -> None:
    """Show one run: status, timings, final metrics per protocol/selection, and its config."""
    from kdcicam.store import open_store
    from kdcicam.store.run_folder import read_attempts

    with open_store(db_url(db), create=False) as store:
        info = store.resolve_run(run)
        groups = _final_groups(store.final_metrics([info.id]))
        last_epoch = _last_epoch(store.epoch_metrics(info.id))
        progress = run_progress(store, info) if info.status == "running" else None
    attempts = read_attempts(info.artifacts_dir)
    if as_json:
        typer.echo(json.dumps({"run": info.to_dict(), "final_metrics": groups, "last_epoch": last_epoch,
                               "attempts": attempts, **({"progress": progress} if progress else {})}, indent=2))
        return
    console = table_console()
    _print_summary(console, info, progress)
    _print_attempts(console, attempts)
    if groups:
        console.print("final metrics (columns: checkpoint selection / θ policy):")
        for table in _final_tables(groups):
            console.print(table)
    else:
        console.print("final metrics: none yet")
    if last_epoch is not None:
        parts = [f"{split}: " + ", ".join(f"{k}={fmt_value(v)}" for k, v in values.items())
                 for split, values in last_epoch.items() if split != "epoch"]
        console.print(f"last epoch {last_epoch['epoch']}: " + "; ".join(parts), markup=False)
    console.print("config:")
    console.print_json(json.dumps(info.config))


def _print_attempts(console: Console, attempts: list[dict[str, Any]]) -> None:
    """The run folder's attempts log, one line per process that claimed the run: a run resumed on
    another device or commit shows each (its numbers repeat bit for bit only on one device string)."""
    if not attempts:
        return
    devices = {a.get("device") for a in attempts}
    commits = {a.get("git_commit") for a in attempts}
    mixed = [what for what, values in (("devices", devices), ("commits", commits)) if len(values) > 1]
    console.print(f"attempts: {len(attempts)}" + (f" (on {' and '.join(mixed)} that differ)" if mixed else ""),
                  markup=False, highlight=False)
    for a in attempts:
        commit = (a.get("git_commit") or "-")[:12]
        console.print(f"  {a.get('claimed_at', '-')}  {a.get('device') or '-'}  commit {commit}  "
                      f"{a.get('host') or '-'} / {a.get('pid', '-')}", markup=False, highlight=False, soft_wrap=True)


def _print_summary(console: Console, info: RunInfo, progress: dict[str, Any] | None = None) -> None:
    status = info.status + (f" ({info.message})" if info.message else "")
    stalled = []
    if progress is not None:
        status += f", {progress['epochs_done']} of {progress['epochs']} epochs done"
        if progress["holder_gone"]:
            status += ", stalled"
            stalled = [("stalled", f"its holder is gone ({progress['holder_gone']}): the next ablate / train of "
                                   "this run resumes it from its last checkpoint")]
    lines = [
        ("run", info.id),
        ("status", status),
        *stalled,
        ("role / profile / variant", f"{info.role} / {info.profile} / {info.variant}"),
        ("dataset", f"{info.dataset} ({info.dataset_fingerprint or 'no fingerprint'})"),
        ("seed", str(info.seed)),
        ("config hash", info.config_hash),
        ("created / started / finished (UTC)",
         f"{fmt_when(info.created_at)} / {fmt_when(info.started_at)} / {fmt_when(info.finished_at)}"),
        ("last heartbeat (UTC)", fmt_when(info.heartbeat_at)),
        ("train time", fmt_seconds(info.train_seconds)),
        ("eval time", fmt_seconds(info.eval_seconds)),
        ("host / pid", f"{info.host or '-'} / {info.pid if info.pid is not None else '-'}"),
        ("device / torch", f"{info.device or '-'} / {info.torch_version or '-'}"),
        ("git commit", info.git_commit or "-"),
        ("artifacts", info.artifacts_dir or "-"),
        ("weights", json.dumps(info.weights) if info.weights is not None else "-"),
        ("labels", json.dumps(info.labels) if info.labels else "-"),
    ]
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        console.print(f"{key:<{width}}  {value}", markup=False, highlight=False, soft_wrap=True)

