"""Config dataclasses to and from nested dicts: JSON-ready dicts (:func:`to_dict`), a strict, type-checked
build from a dict (:func:`from_dict`: unknown keys and wrong types are one-line ConfigErrors naming the
dotted key) and dotted-key overrides (:func:`with_overrides`)."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

from kdcicam.core.errors import ConfigError


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready nested dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types.

    Missing keys take the dataclass defaults. Errors name the dotted key: ``where: key``.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}expected a table/object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    return cls(**kwargs)


# Optional keys for which the string "none" means None, so that a TOML profile or `--set` (neither has a
# null) can unset a value a profile set: `--set model.weights=none` trains from random init.
NONE_WORD_KEYS = frozenset({"model.weights", "model.weights_sha256"})


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if key in NONE_WORD_KEYS and isinstance(value, str) and value.lower() == "none":
        return None
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{key} = {value!r}: must be one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r}: expected a list")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} = {value!r}: expected {len(args)} values")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r}: expected a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key} = {value!r}: expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r}: expected a string")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r}: expected a table")
        return value
    return value


def with_overrides(cfg: Any, overrides: dict[str, Any], where: str = "override") -> Any:
    """Return ``cfg`` with dotted-key overrides applied (``{"train.lr": 1e-3}``), type-checked."""
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{where}: unknown key {dotted!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"{where}: unknown key {dotted!r}")
        if isinstance(node[parts[-1]], dict) and not isinstance(value, dict):
            first = next(iter(node[parts[-1]]), "key")
            raise ConfigError(f"{where}: {dotted!r} is a section, not a value (set its keys, e.g. {dotted}.{first})")
        node[parts[-1]] = value
    try:
        return from_dict(type(cfg), data, where="")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
