"""Checkpoints: plain dicts, written atomically, verified by checksum, loaded with ``weights_only=True``.

A run's folder holds ``last.pt`` (the newest epoch), ``prev.pt`` (the one before it, kept so a
torn or corrupted ``last.pt`` can fall back), and one ``best_<criterion>.pt`` per selection
criterion. ``checksums.json`` maps each file name to the sha256 of its bytes; it is rewritten
atomically after every checkpoint, so a file whose digest does not match was torn or altered.
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

from kdcicam.errors import RunError

MANIFEST = "checksums.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_manifest(folder: Path) -> dict[str, str]:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def save_checkpoint(state: dict[str, Any], folder: Path, name: str) -> str:
    """Atomically save ``state`` as ``folder/name`` and record its sha256; returns the digest."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    folder = Path(folder)
    atomic_write_bytes(folder / name, data)
    manifest = _read_manifest(folder)
    manifest[name] = digest
    atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return digest


def rotate_last(folder: Path) -> None:
    """Keep the current ``last.pt`` as ``prev.pt`` (with its checksum) before a new one is written."""
    folder = Path(folder)
    last = folder / "last.pt"
    if not last.exists():
        return
    manifest = _read_manifest(folder)
    os.replace(last, folder / "prev.pt")
    if "last.pt" in manifest:
        manifest["prev.pt"] = manifest.pop("last.pt")
        atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` after checking its sha256 against the manifest.

    Raises:
        RunError: the file is missing, its checksum does not match, or it cannot be unpickled safely.
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found")
    data = path.read_bytes()
    expected = _read_manifest(path.parent).get(path.name)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise RunError(f"{path}: checksum mismatch (torn or corrupted checkpoint)")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise RunError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None


def load_resume_state(folder: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any] | None, list[str]]:
    """The newest intact training checkpoint of a run folder: ``last.pt``, else ``prev.pt``.

    Returns:
        (state or None when there is nothing to resume, warnings about checkpoints that were skipped).
    """
    warnings: list[str] = []
    for name in ("last.pt", "prev.pt"):
        path = Path(folder) / name
        if not path.exists():
            continue
        try:
            return load_checkpoint(path, map_location), warnings
        except RunError as exc:
            warnings.append(f"{exc}; falling back to an older checkpoint")
    return None, warnings
