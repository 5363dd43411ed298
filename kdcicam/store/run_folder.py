"""A run's artifact folder: how the store records its path, and proof that a folder is the run's own.

The store keeps ``artifacts_dir`` relative to the folder of its SQLite file when the run's folder lies
inside it, so a project folder (store + ``runs/``) can be copied, moved or archived and still works;
a folder elsewhere is kept absolute. Readers always get an absolute path.

A run's folder holds an owner file, ``run.json``: the run's id and the store that made the folder,
and an attempts log, ``attempts.jsonl``: one line per process that claimed the run (when, where, on
which device and commit), since the store's row keeps only the last attempt's.
``kdcicam runs delete`` removes a folder only when :func:`deletable_folder` proves it is the run's
own: its name is the run id, and its owner file names the run (a folder from before owner files: it
holds a checkpoint manifest), and it lies inside the store's folder or its owner file names this
store. Anything else is kept and reported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from kdcicam.core.errors import ConfigError, RunError

OWNER_FILE = "run.json"
ATTEMPTS_FILE = "attempts.jsonl"
CHECKPOINT_MANIFEST = "checksums.json"  # kdcicam.training.checkpoint.MANIFEST (a layer above)


def store_folder(db_file: Path | None) -> Path | None:
    """The folder relative artifact paths are resolved against: the SQLite file's folder (None for
    other backends, which keep absolute paths)."""
    return None if db_file is None else Path(os.path.abspath(db_file)).parent


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def to_stored(artifacts_dir: str | None, folder: Path | None) -> str | None:
    """The path as the store records it: relative (POSIX separators) when inside ``folder``."""
    if artifacts_dir is None or folder is None:
        return artifacts_dir
    path = Path(os.path.abspath(artifacts_dir))
    if not _inside(path, folder):
        return str(path)
    relative = path.relative_to(folder)
    return PurePosixPath(*relative.parts).as_posix() if relative.parts else "."


def from_stored(stored: str | None, folder: Path | None) -> str | None:
    """The absolute path of a stored ``artifacts_dir`` (a relative one is taken from ``folder``)."""
    if stored is None or folder is None or Path(stored).is_absolute():
        return stored
    return os.path.normpath(folder / Path(*PurePosixPath(stored).parts))


def relocate_legacy(stored: str, run_id: str, folder: Path) -> str | None:
    """The relative path of an absolute, out-of-store ``stored`` path whose tail exists in ``folder``.

    A store copied with its ``runs/`` before paths were relative names the original's folders; the
    copy's own folder is the shortest tail of that path (ending in the run id) found under ``folder``.
    None when there is none.
    """
    parts = Path(stored).parts
    if not parts or parts[-1] != run_id:
        return None
    for size in range(1, len(parts)):
        tail = parts[-size:]
        if (folder.joinpath(*tail)).is_dir():
            return PurePosixPath(*tail).as_posix()
    return None


def owner_record(run_id: str, store_label: str) -> dict[str, Any]:
    """What ``run.json`` holds."""
    return {"run_id": run_id, "store": store_label}


def write_owner_file(folder: Path, run_id: str, store_label: str) -> None:
    """Create ``folder`` if needed and record in it which run and store it belongs to."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if _read_owner(folder) == owner_record(run_id, store_label):
            return
        tmp = folder / f".{OWNER_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(owner_record(run_id, store_label), indent=1, sort_keys=True))
        os.replace(tmp, folder / OWNER_FILE)
    except OSError as exc:
        raise RunError(f"cannot write the run's artifact folder {folder}: {exc.strerror or exc}") from None


def append_attempt(folder: Path, record: dict[str, Any]) -> None:
    """Add one attempt (a JSON object: claimed_at, host, pid, device, git_commit, torch_version) to the
    run folder's attempts log. One ``write`` of one line in append mode: a crash leaves whole lines."""
    line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ATTEMPTS_FILE, "a", encoding="utf-8") as log:
            log.write(line)
    except OSError as exc:
        raise RunError(f"cannot write the run's artifact folder {folder}: {exc.strerror or exc}") from None


def read_attempts(folder: Path | str | None) -> list[dict[str, Any]]:
    """The run folder's attempts log, oldest first ([] without a folder or a log); a torn line is skipped."""
    if folder is None:
        return []
    try:
        lines = (Path(folder) / ATTEMPTS_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    attempts = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            attempts.append(record)
    return attempts


def check_artifacts_root(root: Path) -> Path:
    """The absolute ``--artifacts`` folder, once it is known that it is (or can be created as) a writable folder.

    Nothing is created: a folder that does not exist yet needs its nearest existing parent to be writable.

    Raises:
        ConfigError: it is a file, or it (or the parent it would be created in) is not writable.
    """
    root = Path(os.path.abspath(root))
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--artifacts {root} is a file, not a folder")
    existing = root
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--artifacts {root} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == root else f" (its parent {existing} is not writable)"
        raise ConfigError(f"--artifacts {root} is not writable{where}")
    return root


def _read_owner(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def deletable_folder(artifacts_dir: str | None, run_id: str, folder: Path | None,
                     store_label: str) -> tuple[Path | None, str]:
    """Whether ``runs delete`` may remove a run's artifact folder.

    Args:
        artifacts_dir: the run's absolute folder as :class:`RunInfo` gives it.
        run_id: the run's full id.
        folder: the store's folder (:func:`store_folder`).
        store_label: the store as owner files name it.

    Returns:
        (the folder, "") when it is provably the run's own; (None, why not) otherwise; (None, "")
        when the run has no folder on disk.
    """
    if not artifacts_dir:
        return None, ""
    path = Path(artifacts_dir)
    if path.is_symlink():
        return None, f"{path} is a symbolic link, not the run's folder"
    if not path.is_dir():
        return None, ""
    if path.name != run_id:
        return None, f"{path} is not named after run {run_id[:12]}"
    owner = _read_owner(path)
    inside = folder is not None and _inside(Path(os.path.abspath(path)), folder)
    if owner is None:
        if inside and (path / CHECKPOINT_MANIFEST).is_file():
            return path, ""
        return None, f"{path} holds no {OWNER_FILE} naming run {run_id[:12]}"
    if owner.get("run_id") != run_id:
        return None, f"{path}/{OWNER_FILE} names run {str(owner.get('run_id'))[:12]}, not {run_id[:12]}"
    if not inside and owner.get("store") != store_label:
        return None, f"{path} lies outside this store's folder and belongs to the store {owner.get('store')}"
    return path, ""
