"""``kdcicam runs export``: the store's final metrics, epoch metrics or per-image records as one tidy CSV."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from kdcicam.cli._common import CELL_HELP, DB_HELP, cell_filter, db_url
from kdcicam.core.lifecycle import RUN_STATUSES

if TYPE_CHECKING:
    import pandas as pd

    from kdcicam.store import RunInfo


def export_cmd(
    out: str = typer.Option("-", "--out", "-o", help="CSV file to write, or - for standard output."),
    what: str = typer.Option("final", "--what", help="final (final metrics), epochs (training curves) or "
                                                     "records (per-image test records)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    status: str | None = typer.Option("finished", "--status", help="Only runs with this status (default: finished)."),
    cell: str | None = typer.Option(None, "--cell", help=CELL_HELP),
) -> None:
    """Export the store as one tidy CSV (one row per value, each with its run's id, role, profile, variant,
    dataset, seed and labels), for analyses of your own; metrics are fractions, as stored."""
    from pathlib import Path

    from kdcicam.core.errors import ConfigError
    from kdcicam.store import open_store

    if what not in EXPORTS:
        raise ConfigError(f"--what {what!r}: must be one of {', '.join(EXPORTS)}")
    if status is not None and status not in RUN_STATUSES:
        raise ConfigError(f"--status {status!r}: must be one of {', '.join(RUN_STATUSES)}")
    with open_store(db_url(db), create=False) as store:
        runs = store.list_runs(status=status, labels_contain=cell_filter(cell))
        frame = export_frame(store, runs, what)
    if out == "-":
        typer.echo(frame.to_csv(index=False), nl=False)
        return
    target = Path(out)
    if not target.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {target.parent} does not exist")
    frame.to_csv(target, index=False)
    typer.echo(f"wrote {len(frame)} row(s) of {len(runs)} run(s) to {target}")


EXPORTS = ("final", "epochs", "records")
_RUN_COLUMNS = ("run_id", "role", "profile", "variant", "dataset", "dataset_fingerprint", "seed", "status", "labels")


def export_frame(store, runs: list[RunInfo], what: str) -> pd.DataFrame:
    """The runs' final metrics, epoch metrics or per-image records in long format, each row with its run's
    identity (``labels`` as "table/cell;table/cell")."""
    import pandas as pd

    meta = pd.DataFrame([(r.id, r.role, r.profile, r.variant, r.dataset, r.dataset_fingerprint, r.seed, r.status,
                          ";".join(f"{t}/{c}" for t, cells in sorted(r.labels.items()) for c in cells))
                         for r in runs], columns=list(_RUN_COLUMNS))
    if not runs:
        return meta
    if what == "final":
        values = store.final_metrics([r.id for r in runs])
    elif what == "epochs":
        values = pd.concat([store.epoch_metrics(r.id) for r in runs], ignore_index=True)
    else:
        finals = store.final_metrics([r.id for r in runs])
        groups = finals[finals["split"] == "test"][["run_id", "protocol", "selection", "threshold_policy"]]
        parts = []
        for run_id, protocol, selection, policy in groups.drop_duplicates().itertuples(index=False):
            rec = store.get_image_records(run_id, protocol, selection, "test", policy)
            if len(rec):
                parts.append(rec.assign(run_id=run_id, protocol=protocol, selection=selection,
                                        threshold_policy=policy, split="test"))
        values = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run_id"])
    return meta.merge(values, on="run_id", how="inner")
