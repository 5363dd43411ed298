"""``kdcicam runs archive`` and ``kdcicam runs import``: finished runs as a folder of files, and back.

An archive holds one folder per finished run, named by its id::

    ARCHIVE/<run id>/rows.json.gz   the run's rows (kdcicam.store.transfer: run, dataset, metrics, records)
    ARCHIVE/<run id>/files/...      its artifact files: the checksum manifest, the CAM galleries
                                    ``--galleries`` names and the checkpoints ``--checkpoints`` names

Writing is deterministic (sorted JSON, gzip without a timestamp), so archiving a store again rewrites
only what changed: an archive kept in git grows by the runs finished since. Importing copies the runs
into another store (SQLite or PostgreSQL) and their files into its artifacts folder, so that a store
can be merged from several machines, shared with a paper, or resumed on a machine that lost it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from kdcicam.cli._common import CELL_HELP, DB_HELP, REGISTRY_HELP, cell_filter, db_url

if TYPE_CHECKING:
    from kdcicam.store import RunInfo

ROWS_FILE = "rows.json.gz"
FILES_DIR = "files"
CHECKPOINT_SUFFIX = ".pt"
CHECKPOINT_CHOICES = ("needed", "all", "none")
GALLERY_PREFIX = "gallery_"  # kdcicam.execution.checkpoint_eval writes gallery_<selection>.npz
GALLERY_CHOICES = ("report", "all", "none")


def archive_cmd(
    out: Path = typer.Argument(..., help="Archive folder (created if needed; runs already in it are rewritten)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    cell: str | None = typer.Option(None, "--cell", help=CELL_HELP),
    checkpoints: str = typer.Option(
        "needed", "--checkpoints",
        help="Which checkpoints go in: needed (those the store's unfinished runs will read: their teachers'), "
             "all, or none. Without a run's checkpoints, the archive still holds every number and gallery."),
    galleries: str = typer.Option(
        "report", "--galleries",
        help="Which CAM galleries go in: report (those `kdcicam report` draws: each scope's gallery cells at their "
             "lowest seed), all, or none."),
    registry: Path | None = typer.Option(None, help=REGISTRY_HELP),
    prune: bool = typer.Option(
        False, "--prune", help="Remove from the archive's run folders the checkpoints and galleries these choices "
                               "no longer name (e.g. a teacher's checkpoint once its students have finished)."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Write the store's finished runs to a folder of files that `kdcicam runs import` reads back."""
    from kdcicam.core.errors import ConfigError
    from kdcicam.store import open_store

    if checkpoints not in CHECKPOINT_CHOICES:
        raise ConfigError(f"--checkpoints {checkpoints!r}: must be one of {', '.join(CHECKPOINT_CHOICES)}")
    if galleries not in GALLERY_CHOICES:
        raise ConfigError(f"--galleries {galleries!r}: must be one of {', '.join(GALLERY_CHOICES)}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not an archive folder")
    with open_store(db_url(db), create=False) as store:
        every = store.list_runs()
        runs = store.list_runs(status="finished", labels_contain=cell_filter(cell))
        wanted = needed_checkpoints(every) if checkpoints == "needed" else {}
        if galleries == "report":
            from kdcicam.registry.ablations import load_registry
            from kdcicam.report.gallery import drawn_gallery_files

            for run_id, names in drawn_gallery_files(load_registry(registry),
                                                     [r for r in every if r.status == "finished"]).items():
                wanted.setdefault(run_id, set()).update(names)
        written = []
        for info in runs:
            rows = store.dump_run(info.id)
            files = _write_run(out / info.id, rows, info, checkpoints, galleries, wanted.get(info.id, set()))
            pruned = _prune(out / info.id / FILES_DIR, set(files)) if prune else []
            written.append({"run_id": info.id, "role": info.role, "files": files, "pruned": pruned})
    if as_json:
        typer.echo(json.dumps({"archive": str(out), "runs": written}, indent=2))
        return
    count = sum(len(w["files"]) for w in written)
    pruned = sum(len(w["pruned"]) for w in written)
    typer.echo(f"archived {len(written)} finished run(s) to {out} ({count} artifact file(s), "
               f"checkpoints: {checkpoints}, galleries: {galleries}" + (f"; {pruned} file(s) pruned" if prune else "")
               + ")")


def import_cmd(
    archive: Path = typer.Argument(..., help="An archive folder written by `kdcicam runs archive`."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    artifacts: Path = typer.Option(Path("runs"), help="Where the runs' files go (one folder per run), as for ablate."),
    as_json: bool = typer.Option(False, "--json", help="Print what was imported as JSON."),
) -> None:
    """Copy an archive's runs into the store: a run the store already has finished (or is training) is
    kept as it is; a pending or failed one is replaced by the archive's."""
    import os

    from kdcicam.core.errors import ConfigError
    from kdcicam.store import open_store
    from kdcicam.store.run_folder import check_artifacts_root, write_owner_file
    from kdcicam.store.transfer import REPLACEABLE

    if not archive.is_dir():
        raise ConfigError(f"{archive}: no archive folder there")
    folders = sorted(p for p in archive.iterdir() if (p / ROWS_FILE).is_file())
    if not folders:
        raise ConfigError(f"{archive}: no archived run in it (folders holding {ROWS_FILE})")
    root = check_artifacts_root(artifacts)
    dumps = [(folder, _read_rows(folder)) for folder in folders]  # every file readable before any write
    outcome: dict[str, list[str]] = {"added": [], "replaced": [], "kept": []}
    for folder, rows in dumps:
        if folder.name != rows["run"]["id"]:
            raise ConfigError(f"{folder}: holds run {str(rows['run']['id'])[:12]}, not {folder.name[:12]}")
    with open_store(db_url(db)) as store:
        status = {info.id: info.status for info in store.list_runs()}
        for folder, rows in dumps:
            run_id = rows["run"]["id"]
            target = root / run_id
            if run_id in status and status[run_id] not in REPLACEABLE:
                outcome["kept"].append(run_id)  # a finished or running run's files are its own: untouched
                continue
            _copy_files(folder / FILES_DIR, target)  # files first: a run in the store has its checkpoints
            write_owner_file(target, run_id, store.label)
            outcome[store.load_run(rows, str(target))].append(run_id)
    if as_json:
        typer.echo(json.dumps({"archive": str(archive), "artifacts": os.fspath(root), **outcome}, indent=2))
        return
    kept = f"; kept {len(outcome['kept'])} the store already had" if outcome["kept"] else ""
    typer.echo(f"imported {len(outcome['added'])} run(s), replaced {len(outcome['replaced'])} pending or failed "
               f"one(s){kept}")


def needed_checkpoints(runs: list[RunInfo]) -> dict[str, set[str]]:
    """Teacher run id -> the checkpoint files (names) that the unfinished runs among ``runs`` distil from."""
    from kdcicam.execution.run_models import checkpoint_for

    out: dict[str, set[str]] = {}
    for info in runs:
        if info.status == "finished":
            continue
        teachers = info.config.get("teachers") or {}
        for kind in ("cls", "loc"):
            teacher = teachers.get(f"{kind}_run")
            select = teachers.get(f"{kind}_select")
            if teacher and select:
                out.setdefault(teacher, set()).add(checkpoint_for(Path("."), select).name)
    return out


def _write_run(folder: Path, rows: dict[str, Any], info: RunInfo, checkpoints: str, galleries: str,
               wanted: set[str]) -> list[str]:
    """Write one run's archive folder; the artifact files copied, by name relative to the run's folder.

    ``wanted``: the checkpoint and gallery files of this run that the "needed" and "report" choices name."""
    from kdcicam.core.errors import ConfigError
    from kdcicam.store.run_folder import OWNER_FILE

    folder.mkdir(parents=True, exist_ok=True)
    data = json.dumps(rows, sort_keys=True, separators=(",", ":")).encode()
    _replace_if_changed(folder / ROWS_FILE, gzip.compress(data, compresslevel=9, mtime=0))
    source = Path(info.artifacts_dir) if info.artifacts_dir else None
    if source is None or not source.is_dir():
        return []
    copied = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        name = path.relative_to(source).as_posix()
        if name == OWNER_FILE or path.name.startswith("."):  # the owner file names the source store
            continue
        if path.suffix == CHECKPOINT_SUFFIX and not (checkpoints == "all" or name in wanted):
            continue
        if path.name.startswith(GALLERY_PREFIX) and not (galleries == "all" or name in wanted):
            continue
        try:
            _replace_if_changed(folder / FILES_DIR / name, path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot archive {path}: {exc.strerror or exc}") from None
        copied.append(name)
    return copied


def _prune(files: Path, kept: set[str]) -> list[str]:
    """Remove the checkpoints and galleries in an archived run's ``files`` folder that are not in ``kept``."""
    if not files.is_dir():
        return []
    gone = []
    for path in sorted(p for p in files.rglob("*") if p.is_file()):
        name = path.relative_to(files).as_posix()
        if name not in kept and (path.suffix == CHECKPOINT_SUFFIX or path.name.startswith(GALLERY_PREFIX)):
            path.unlink()
            gone.append(name)
    return gone


def _replace_if_changed(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically, unless it already holds exactly that."""
    import os

    if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _read_rows(folder: Path) -> dict[str, Any]:
    from kdcicam.core.errors import ConfigError

    try:
        rows = json.loads(gzip.decompress((folder / ROWS_FILE).read_bytes()))
    except (OSError, EOFError, ValueError) as exc:
        raise ConfigError(f"{folder / ROWS_FILE}: not a readable run dump ({type(exc).__name__})") from None
    if not isinstance(rows, dict) or not isinstance(rows.get("run"), dict) or "id" not in rows["run"]:
        raise ConfigError(f"{folder / ROWS_FILE}: not a run dump (no run row)")
    return rows


def _copy_files(source: Path, target: Path) -> None:
    """Copy an archived run's files into its artifacts folder (files of the same name are replaced)."""
    if not source.is_dir():
        return
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        _replace_if_changed(target / path.relative_to(source), path.read_bytes())

