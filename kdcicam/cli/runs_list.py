"""``kdcicam runs list``: the runs of the store, oldest first, with status and headline metrics."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.table import Table

from kdcicam.cli._common import CELL_HELP, DB_HELP, cell_filter, db_url
from kdcicam.cli.runs_format import (
    DEFAULT_SOURCE,
    HEADLINE_METRICS,
    fmt_value,
    fmt_when,
    headline,
    run_progress,
    table_console,
)
from kdcicam.core.config import ROLES
from kdcicam.core.lifecycle import RUN_STATUSES

if TYPE_CHECKING:
    from kdcicam.store import RunInfo


def list_cmd(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    status: str | None = typer.Option(
        None, "--status", help=f"Only runs with this status: {' | '.join(RUN_STATUSES)}."),
    role: str | None = typer.Option(
        None, "--role", help=f"Only runs of this role ({', '.join(ROLES)})."),
    cell: str | None = typer.Option(None, "--cell", help=CELL_HELP),
    seed: int | None = typer.Option(None, "--seed", help="Only runs of this seed."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs as a JSON list."),
) -> None:
    """List runs (oldest first) with their status and key final metrics."""
    from kdcicam.store import open_store, sqlite_file

    if status is not None and status not in RUN_STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(RUN_STATUSES)}", param_hint="--status")
    url = db_url(db)
    path = sqlite_file(url)
    if path is not None and not path.exists():  # listing must not create a store as a side effect
        typer.echo("[]" if as_json else f"no runs yet (no run store at {path})")
        return
    with open_store(url, create=False) as store:
        runs = store.list_runs(status=status, role=role, labels_contain=cell_filter(cell))
        runs = [r for r in runs if seed is None or r.seed == seed]
        finals = store.final_metrics([run.id for run in runs]) if runs else None
        progress = {run.id: run_progress(store, run) for run in runs if run.status == "running"}
    heads = {run.id: headline(finals[finals["run_id"] == run.id]) for run in runs}
    if as_json:
        typer.echo(json.dumps([{**run.to_dict(), "headline_from": heads[run.id][0], "headline": heads[run.id][1],
                                **({"progress": progress[run.id]} if run.id in progress else {})}
                               for run in runs], indent=2))
        return
    if not runs:
        filtered = any(f is not None for f in (status, role, cell, seed))
        typer.echo("no runs match these filters" if filtered else "no runs yet")
        return
    console = table_console()
    stalled = " · stalled: running in the store, its process gone (the next ablate / train resumes it)" if any(
        p["holder_gone"] for p in progress.values()) else ""
    table = Table(title=f"{len(runs)} run(s) in {store.url}", box=box.SIMPLE_HEAD,
                  caption=f"metrics: {DEFAULT_SOURCE} evaluation unless 'from' names another · "
                          f"running N/M: epochs done / epochs{stalled}")
    for column in ("id", "role", "profile", "variant", "dataset", "seed", "status",
                   *HEADLINE_METRICS, "from", "created (UTC)"):
        table.add_column(column, no_wrap=True)
    for run in runs:
        source, values = heads[run.id]
        table.add_row(run.short_id, run.role, run.profile, run.variant, run.dataset, str(run.seed),
                      _status_cell(run, progress.get(run.id)),
                      *(fmt_value(values.get(name)) for name in HEADLINE_METRICS),
                      "" if source in (None, DEFAULT_SOURCE) else source, fmt_when(run.created_at)[:16])
    console.print(table)


def _status_cell(run: RunInfo, progress: dict[str, Any] | None) -> str:
    if progress is None:
        return run.status
    word = "stalled" if progress["holder_gone"] else "running"
    return f"{word} {progress['epochs_done']}/{progress['epochs']}"

