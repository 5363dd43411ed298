"""Options and helpers shared by the run-making commands (train, evaluate, ablate)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from kdcicam.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DB_HELP = "Run store: a SQLAlchemy URL or a SQLite file path (default: $KDCICAM_DB, else ./runs.db)."
REGISTRY_HELP = "Registry folder (default: the repository's ablations/)."
SET_HELP = "Override any config key, e.g. --set train.lr=0.001 --set eval.theta=0.2 (repeatable)."


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["train.lr=0.001", "model.weights=/p/vgg16.pth"]`` -> typed dict (TOML values, else strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. train.lr=0.001)")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def read_config_file(path: Path | None) -> dict[str, Any]:
    """A TOML file of dotted overrides (``"train.lr" = 0.001``) or nested tables ([train] lr = ...)."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a TOML file (not UTF-8 text: byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: dict[str, Any]) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(key + ".", v)
            else:
                flat[key] = v

    walk("", data)
    from kdcicam.core.config import RunConfig, with_overrides

    with_overrides(RunConfig(), flat, where=str(path))  # unknown keys and wrong types, named by this file
    return flat


def db_url(db: str | None) -> str:
    """The store URL a command uses: ``--db``, else $KDCICAM_DB, else the default (runs.db here)."""
    from kdcicam.store import resolve_db_url  # imported when a command runs, not at start-up

    return resolve_db_url(db, os.environ.get("KDCICAM_DB"))


CELL_HELP = "Only runs of a registry table (table3) or cell (table3/conpool+kd)."


def cell_filter(cell: str | None) -> str | tuple[str, str] | None:
    """``--cell`` as ``Store.list_runs(labels_contain=...)`` takes it: "table3", ("table3", "base") or None."""
    if cell is None:
        return None
    table, _, cell_key = cell.partition("/")
    return (table, cell_key) if cell_key else table


def cache_dir() -> Path:
    """Where generated data lives: $KDCICAM_CACHE, else $XDG_CACHE_HOME/kdcicam, else ~/.cache/kdcicam."""
    if os.environ.get("KDCICAM_CACHE"):
        return Path(os.environ["KDCICAM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kdcicam"


def configure_threads() -> None:
    """CPU threads for torch: $KDCICAM_THREADS (or $OMP_NUM_THREADS) when set, else every core this
    process may run on. On a machine shared with other busy processes, fewer threads than cores is
    much faster (threads that wait for a core stall each other): set KDCICAM_THREADS=1 there."""
    import torch

    wanted = os.environ.get("KDCICAM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if wanted:
        try:
            n = int(wanted)
        except ValueError:
            raise ConfigError(f"KDCICAM_THREADS / OMP_NUM_THREADS = {wanted!r}: expected a whole number") from None
    else:
        n = available_cores()
    torch.set_num_threads(max(1, n))


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def echo_json(data: Any) -> None:
    import json

    typer.echo(json.dumps(data, indent=2, default=str))
