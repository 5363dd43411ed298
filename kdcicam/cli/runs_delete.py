"""``kdcicam runs delete``: remove runs from the store, and the artifact folders provably theirs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

from kdcicam.cli._common import DB_HELP, db_url

if TYPE_CHECKING:
    from kdcicam.store import RunInfo


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

