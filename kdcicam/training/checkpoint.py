"""Checkpoints: plain dicts, written atomically, verified by checksum, loaded with ``weights_only=True``.

A run's folder holds ``last.pt`` (the newest training state), ``prev.pt`` (the one before it, kept so
a torn or corrupted ``last.pt`` can fall back), and one ``best_<criterion>.pt`` per selection
criterion. ``checksums.json`` maps each file name to the sha256 digests its bytes may have.

Every file is written to a temp file, synced and renamed over its name, so a reader sees the old
bytes or the new ones. The manifest is updated in two steps around each rename: first the new
digest is *added* (both the old and the new bytes verify), then the rename, then the old digest is
dropped. A process killed at any instant therefore leaves every file verifiable, and a file whose
digest is not listed was torn or altered by something else (a crash of the disk or of a copy, a
truncation): :func:`load_resume_state` then reports it and falls back to ``prev.pt``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdcicam.core.errors import RunError
from kdcicam.core.runtime import crash_point

MANIFEST = "checksums.json"
LAST = "last.pt"
PREV = "prev.pt"
_TMP_SUFFIX = ".tmp"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        crash_point(f"before-rename:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: Path) -> list[str]:
    """Delete temp files a killed writer left in ``folder``; returns their names.

    Call it only when no other process writes to the folder (the run's owner, at resume).
    """
    removed = []
    for tmp in Path(folder).glob(f".*{_TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp.name)
    return sorted(removed)


def _read_manifest(folder: Path) -> dict[str, list[str]]:
    """name -> accepted digests (a plain string, as older manifests hold, is one digest)."""
    try:
        raw = json.loads((Path(folder) / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {name: [v] if isinstance(v, str) else [d for d in v if isinstance(d, str)]
            for name, v in raw.items() if isinstance(v, (str, list))}


def _write_manifest(folder: Path, manifest: dict[str, list[str]]) -> None:
    atomic_write_bytes(Path(folder) / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())


def _put(folder: Path, name: str, data: bytes, digest: str) -> None:
    """Rename ``data`` in as ``folder/name`` with the manifest valid at every instant (module doc)."""
    manifest = _read_manifest(folder)
    old = manifest.get(name, [])
    if not old and (folder / name).is_file():  # an unlisted file (older manifest): list what is there
        old = [hashlib.sha256((folder / name).read_bytes()).hexdigest()]
    _write_manifest(folder, {**manifest, name: [digest, *old]})  # old and new bytes both verify
    atomic_write_bytes(folder / name, data)
    _write_manifest(folder, {**manifest, name: [digest]})


def save_checkpoint(state: dict[str, Any], folder: Path, name: str) -> str:
    """Atomically save ``state`` as ``folder/name`` and record its sha256; returns the digest."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _put(folder, name, data, digest)
    return digest


def rotate_last(folder: Path) -> None:
    """Keep the current ``last.pt`` as ``prev.pt`` (with its checksum) before a new one is written."""
    folder = Path(folder)
    last = folder / LAST
    if not last.exists():
        return
    manifest = _read_manifest(folder)
    moving = manifest.get(LAST) or [hashlib.sha256(last.read_bytes()).hexdigest()]
    # prev.pt may hold its old bytes or last.pt's until the rename is done: accept both meanwhile
    _write_manifest(folder, {**manifest, PREV: [*moving, *manifest.get(PREV, [])]})
    os.replace(last, folder / PREV)
    settled = {k: v for k, v in manifest.items() if k != LAST}
    settled[PREV] = moving
    _write_manifest(folder, settled)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` after checking its sha256 against the manifest.

    A file the manifest does not list (written by hand, or the manifest lost) is loaded unverified.

    Raises:
        RunError: the file is missing, its checksum does not match, or it cannot be unpickled safely.
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found")
    data = path.read_bytes()
    accepted = _read_manifest(path.parent).get(path.name)
    if accepted and hashlib.sha256(data).hexdigest() not in accepted:
        raise RunError(f"{path}: checksum mismatch (torn or corrupted checkpoint)")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise RunError(f"{path}: cannot load checkpoint ({type(exc).__name__}: "
                       f"{(str(exc).splitlines() or [''])[0][:120]})") from None


def load_resume_state(folder: Path,
                      map_location: str | torch.device = "cpu") -> tuple[dict[str, Any] | None, list[str]]:
    """The newest intact training checkpoint of a run folder: ``last.pt``, else ``prev.pt``.

    Returns:
        (state or None when there is nothing to resume, warnings about checkpoints that were skipped).
    """
    warnings: list[str] = []
    for name in (LAST, PREV):
        path = Path(folder) / name
        if not path.exists():
            continue
        try:
            return load_checkpoint(path, map_location), warnings
        except RunError as exc:
            warnings.append(f"{exc}; falling back to an older checkpoint")
    return None, warnings
