"""Reading a registry TOML file and checking its values: allowed and required keys, types, dotted config
overrides and keys; every failure is one ConfigError line naming the file and the key."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from kdcicam.core.config import RunConfig, to_dict, with_overrides
from kdcicam.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML file; a syntax or read error is one ConfigError line."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: TOML syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: cannot read ({exc})") from None


def check_keys(where: str, data: dict[str, Any], required: set[str], optional: set[str]) -> None:
    """``data`` is a table holding every ``required`` key and no key outside ``required | optional``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = sorted(set(data) - required - optional)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(required | optional))})")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{where}: missing key {missing[0]!r}")


def typed(where: str, value: Any, tp: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is of type ``tp`` (a bool only where ``tp`` names bool); else ConfigError naming ``what``."""
    if not isinstance(value, tp) or (isinstance(value, bool) and bool not in (tp if isinstance(tp, tuple) else (tp,))):
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    return value


def check_overrides(where: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides are dotted config keys; check each names a real, correctly typed field."""
    typed(where, overrides, dict, "a table of dotted config keys")
    if overrides:
        with_overrides(RunConfig(), overrides, where=where)
    return dict(overrides)


def default_of(dotted: str) -> Any:
    """The default value of a dotted config key (``train.lr``); ConfigError if no such key."""
    node: Any = to_dict(RunConfig())
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"unknown key {dotted!r}")
        node = node[part]
    return node


def guarded(path: Path, read: Any) -> Any:
    """``read(path)``; a value of the wrong shape that no check above names is still one ConfigError line."""
    try:
        return read(path)
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        raise ConfigError(f"{path.name}: a value has the wrong type or shape ({type(exc).__name__}: {exc})") from None
