"""``kdcicam runs``: list the runs in the run store and show one in full."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from kdcicam.cli._common import DB_HELP, db_url
from kdcicam.core.config import ROLES
from kdcicam.core.lifecycle import RUN_STATUSES

if TYPE_CHECKING:  # pandas and the store are imported when a command runs, not at start-up
    import pandas as pd

    from kdcicam.store import RunInfo

app = typer.Typer(help="List and inspect the runs recorded in the run store.", no_args_is_help=True)

HEADLINE_METRICS = ("top1_cls", "top1_loc", "gt_known_loc")
# Which evaluation a run's headline numbers come from, most preferred first (paper protocol,
# last checkpoint, the paper's fixed θ, test split), falling back to whatever was evaluated.
_PREFERENCE = {
    "protocol": ("paper", "standard"),
    "selection": ("last", "top1_loc", "gt_known_loc", "top1_cls"),
    "threshold_policy": ("fixed", "val", "oracle"),
    "split": ("test", "val"),
}
_GROUP = ["protocol", "selection", "threshold_policy", "split"]
_DEFAULT_SOURCE = "/".join(values[0] for values in _PREFERENCE.values())  # paper/last/fixed/test


def headline(finals: pd.DataFrame) -> tuple[str | None, dict[str, float | None]]:
    """A run's key numbers from its long-format final metrics.

    Args:
        finals: one run's rows of :meth:`Store.final_metrics`.

    Returns:
        ("protocol/selection/threshold_policy/split" of the evaluation used, {name: value} for the
        names in HEADLINE_METRICS it has, NaN as None); (None, {}) when no evaluation has any.
    """
    import pandas as pd

    rows = finals[finals["name"].isin(HEADLINE_METRICS)]
    if rows.empty:
        return None, {}

    def rank(key: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(_PREFERENCE[col].index(val) if val in _PREFERENCE[col] else len(_PREFERENCE[col])
                     for col, val in zip(_GROUP, key))

    best = min((tuple(key) for key in rows[_GROUP].drop_duplicates().itertuples(index=False)), key=rank)
    chosen = rows[(rows[_GROUP] == pd.Series(best, index=_GROUP)).all(axis=1)]
    return "/".join(best), _values(chosen)


def _values(rows: pd.DataFrame) -> dict[str, float | None]:
    """name -> value of long-format rows, NaN as None (so JSON output stays valid JSON)."""
    return {name: None if math.isnan(value) else float(value)
            for name, value in zip(rows["name"], rows["value"].astype(float))}


def _console() -> Console:
    """A console for tables: piped output gets room for every column instead of 80 characters."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    return console


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _when(moment: Any) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, secs = divmod(value, 60)
    return f"{value:.1f} s" if minutes == 0 else f"{int(minutes)} min {secs:.0f} s ({value:.0f} s)"


@app.command("list")
def list_cmd(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    status: str | None = typer.Option(
        None, "--status", help=f"Only runs with this status: {' | '.join(RUN_STATUSES)}."),
    role: str | None = typer.Option(
        None, "--role", help=f"Only runs of this role ({', '.join(ROLES)})."),
    cell: str | None = typer.Option(
        None, "--cell", help="Only runs of a registry table (table3) or cell (table3/conpool+kd)."),
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
        table, _, cell_key = (cell or "").partition("/")
        runs = store.list_runs(status=status, role=role,
                               labels_contain=None if cell is None else (table, cell_key) if cell_key else table)
        runs = [r for r in runs if seed is None or r.seed == seed]
        finals = store.final_metrics([run.id for run in runs]) if runs else None
        progress = {run.id: _progress(store, run) for run in runs if run.status == "running"}
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
    console = _console()
    stalled = " · stalled: running in the store, its process gone (the next ablate / train resumes it)" if any(
        p["holder_gone"] for p in progress.values()) else ""
    table = Table(title=f"{len(runs)} run(s) in {store.url}", box=box.SIMPLE_HEAD,
                  caption=f"metrics: {_DEFAULT_SOURCE} evaluation unless 'from' names another · "
                          f"running N/M: epochs done / epochs{stalled}")
    for column in ("id", "role", "profile", "variant", "dataset", "seed", "status",
                   *HEADLINE_METRICS, "from", "created (UTC)"):
        table.add_column(column, no_wrap=True)
    for run in runs:
        source, values = heads[run.id]
        table.add_row(run.short_id, run.role, run.profile, run.variant, run.dataset, str(run.seed),
                      _status_cell(run, progress.get(run.id)), *(_fmt(values.get(name)) for name in HEADLINE_METRICS),
                      "" if source in (None, _DEFAULT_SOURCE) else source, _when(run.created_at)[:16])
    console.print(table)


def _progress(store, run: RunInfo) -> dict[str, Any]:
    """A running run's epochs done (of its epochs) and, when its process is gone, why we think so."""
    from kdcicam.execution.holders import holder_gone

    curves = store.epoch_metrics(run.id)
    trained = curves[curves["split"] == "train"]["epoch"]
    return {"epochs_done": int(trained.max()) + 1 if len(trained) else 0,
            "epochs": int(run.config.get("train", {}).get("epochs", 0) or 0), "holder_gone": holder_gone(run)}


def _status_cell(run: RunInfo, progress: dict[str, Any] | None) -> str:
    if progress is None:
        return run.status
    word = "stalled" if progress["holder_gone"] else "running"
    return f"{word} {progress['epochs_done']}/{progress['epochs']}"


def _final_groups(finals: pd.DataFrame) -> list[dict[str, Any]]:
    groups = []
    for key, rows in finals.groupby(_GROUP, sort=True):
        groups.append({**dict(zip(_GROUP, key)), "metrics": _values(rows)})
    return groups


def _last_epoch(epochs: pd.DataFrame) -> dict[str, Any] | None:
    if epochs.empty:
        return None
    last = int(epochs["epoch"].max())
    rows = epochs[epochs["epoch"] == last]
    out: dict[str, Any] = {"epoch": last}
    for split, part in rows.groupby("split", sort=True):
        out[split] = _values(part)
    return out


@app.command("show")
def show_cmd(
    run: str = typer.Argument(..., help="Run id or a unique prefix of at least 4 characters."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print everything as one JSON object."),
) -> None:
    """Show one run: status, timings, final metrics per protocol/selection, and its config."""
    from kdcicam.store import open_store

    with open_store(db_url(db), create=False) as store:
        info = store.resolve_run(run)
        groups = _final_groups(store.final_metrics([info.id]))
        last_epoch = _last_epoch(store.epoch_metrics(info.id))
        progress = _progress(store, info) if info.status == "running" else None
    if as_json:
        typer.echo(json.dumps({"run": info.to_dict(), "final_metrics": groups, "last_epoch": last_epoch,
                               **({"progress": progress} if progress else {})}, indent=2))
        return
    console = _console()
    _print_summary(console, info, progress)
    if groups:
        names = sorted({name for group in groups for name in group["metrics"]})
        table = Table(title="final metrics")
        for column in (*_GROUP, *names):
            table.add_column(column.replace("threshold_policy", "θ policy"))
        for group in groups:
            table.add_row(*(group[col] for col in _GROUP), *(_fmt(group["metrics"].get(n)) for n in names))
        console.print(table)
    else:
        console.print("final metrics: none yet")
    if last_epoch is not None:
        parts = [f"{split}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
                 for split, values in last_epoch.items() if split != "epoch"]
        console.print(f"last epoch {last_epoch['epoch']}: " + "; ".join(parts), markup=False)
    console.print("config:")
    console.print_json(json.dumps(info.config))


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
         f"{_when(info.created_at)} / {_when(info.started_at)} / {_when(info.finished_at)}"),
        ("last heartbeat (UTC)", _when(info.heartbeat_at)),
        ("train time", _seconds(info.train_seconds)),
        ("eval time", _seconds(info.eval_seconds)),
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


@app.command("delete")
def delete_cmd(
    runs: list[str] = typer.Argument(..., help="Run ids or unique prefixes (at least 4 characters)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    keep_files: bool = typer.Option(
        False, "--keep-files", help="Keep the runs' artifact folders (checkpoints): training the same run "
                                    "again would then resume from them instead of starting over."),
    as_json: bool = typer.Option(False, "--json", help="Print what was deleted as JSON."),
) -> None:
    """Delete runs from the store (and their artifact folders), so that the next ablate / train trains them
    again, e.g. after a fix to the trainer: a run's id is its config, not the code that trained it."""
    import shutil

    from kdcicam.core.errors import ConfigError
    from kdcicam.execution.holders import holder_gone
    from kdcicam.store import open_store

    with open_store(db_url(db), create=False) as store:
        chosen = list({info.id: info for info in (store.resolve_run(name) for name in runs)}.values())
        ids = {info.id for info in chosen}
        for info in chosen:
            if info.status == "running" and holder_gone(info) is None:
                raise ConfigError(f"run {info.short_id} is being trained by process {info.pid} on {info.host}: "
                                  "stop it first (Ctrl-C), then delete it")
        students = _students_of(store.list_runs(), ids)
        if students:
            teacher, names = next(iter(students.items()))
            raise ConfigError(f"run {teacher[:12]} is the teacher of {len(names)} other run(s) ({', '.join(names)}): "
                              f"delete them too (kdcicam runs delete {teacher[:12]} {' '.join(names)}) or keep it")
        folders, kept = _folders_to_delete(store, chosen, keep_files)
        what = ", ".join(f"{i.short_id} ({i.role}, {i.status})" for i in chosen)
        if not yes:
            for line in [f"remove {folder}" for folder in folders] + [f"keep {why}" for why in kept]:
                typer.echo(f"  {line}", err=True)
        if not yes and not typer.confirm(f"Delete {len(chosen)} run(s): {what}"
                                         + (f", and the {len(folders)} artifact folder(s) listed" if folders else "")
                                         + "?"):
            raise ConfigError("not confirmed: nothing deleted")
        # folders aside first: a run deleted from the store must not find its old checkpoints when trained
        # again; if the store refuses, they are put back
        aside = [(f, f.with_name(f".deleting-{f.name}")) for f in folders]
        for folder, moved in aside:
            folder.rename(moved)
        try:
            store.delete_runs(ids)
        except BaseException:
            for folder, moved in aside:
                moved.rename(folder)
            raise
    for _, moved in aside:
        shutil.rmtree(moved, ignore_errors=True)
    if as_json:
        typer.echo(json.dumps({"deleted": sorted(ids), "folders_removed": [str(f) for f, _ in aside],
                               "folders_kept": kept}, indent=2))
        return
    for why in kept:
        typer.echo(f"kept {why}", err=True)
    typer.echo(f"deleted {len(ids)} run(s): {', '.join(i.short_id for i in chosen)}"
               + (f" and {len(aside)} artifact folder(s)" if aside else "")
               + ". The next ablate / train of them trains them from the start.")


def _folders_to_delete(store: Any, chosen: list[RunInfo], keep_files: bool) -> tuple[list[Any], list[str]]:
    """The artifact folders provably the chosen runs' own, and why any other named folder is kept."""
    from kdcicam.store.run_folder import deletable_folder

    if keep_files:
        return [], []
    folders, kept = [], []
    for info in chosen:
        folder, why = deletable_folder(info.artifacts_dir, info.id, store.folder, store.label)
        if folder is not None:
            folders.append(folder)
        elif why:
            kept.append(why)
    return folders, kept


def _students_of(history: list[RunInfo], teachers: set[str]) -> dict[str, list[str]]:
    """teacher id -> short ids of the runs, not themselves in ``teachers``, that distil from it."""
    out: dict[str, list[str]] = {}
    for run in history:
        if run.id in teachers:
            continue
        refs = run.config.get("teachers") or {}
        for key in ("cls_run", "loc_run"):
            if refs.get(key) in teachers:
                out.setdefault(refs[key], []).append(run.short_id)
    return out


@app.command("export")
def export_cmd(
    out: str = typer.Option("-", "--out", "-o", help="CSV file to write, or - for standard output."),
    what: str = typer.Option("final", "--what", help="final (final metrics), epochs (training curves) or "
                                                     "records (per-image test records)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    status: str | None = typer.Option("finished", "--status", help="Only runs with this status (default: finished)."),
    cell: str | None = typer.Option(
        None, "--cell", help="Only runs of a registry table (table3) or cell (table3/conpool+kd)."),
) -> None:
    """Export the store as one tidy CSV (one row per value, each with its run's id, role, profile, variant,
    dataset, seed and labels), for analyses of your own; metrics are fractions, as stored."""
    from pathlib import Path

    from kdcicam.core.errors import ConfigError
    from kdcicam.store import open_store, sqlite_file

    if what not in EXPORTS:
        raise ConfigError(f"--what {what!r}: must be one of {', '.join(EXPORTS)}")
    if status is not None and status not in RUN_STATUSES:
        raise ConfigError(f"--status {status!r}: must be one of {', '.join(RUN_STATUSES)}")
    url = db_url(db)
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise ConfigError(f"no run store at {path}")
    table, _, cell_key = (cell or "").partition("/")
    with open_store(url, create=False) as store:
        runs = store.list_runs(status=status, labels_contain=None if cell is None else
                               (table, cell_key) if cell_key else table)
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
