"""The settings of the authors' released scripts, per dataset, backbone, role and teacher.

``ablations/released-settings.toml`` holds one ``[[settings]]`` entry per fact read from the
released code: the scope it applies to (``"cub/vgg16"``), optionally the roles, the context-pool
state (``false`` = the Base run) and the teacher definition it is limited to, the source file and
line, and the config overrides. :func:`released_layers` picks the entries that match a run, in
file order (a later entry wins). The ``reference`` variant resolves its runs with these layers
between the paper's settings and the profile; the ``paper`` variant never reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdcicam.core.config import ROLES, RunConfig, with_overrides
from kdcicam.core.errors import ConfigError

_ENTRY_KEYS = {"scope", "source", "overrides"}
_ENTRY_OPTIONAL = {"roles", "context_pool", "teacher", "note"}


@dataclass(frozen=True)
class ReleasedSetting:
    """One entry of released-settings.toml: where it applies and what it sets."""

    scope: str  # "dataset/backbone" of the paper's settings (e.g. "cub/vgg16")
    source: str  # released file and line the values come from
    overrides: dict[str, Any] = field(default_factory=dict)
    roles: tuple[str, ...] = ()  # empty = every role
    context_pool: bool | None = None  # None = either; False = the Base run only
    teacher: str | None = None  # a teacher definition's name: only runs of that teacher

    def matches(self, scope: str, role: str, context_pool: bool, teacher: str | None) -> bool:
        return (self.scope == scope and (not self.roles or role in self.roles)
                and (self.context_pool is None or self.context_pool == context_pool)
                and (self.teacher is None or self.teacher == teacher))


def read_released_settings(path: Path, raw: dict[str, Any], teachers: set[str]) -> tuple[ReleasedSetting, ...]:
    """Validate the parsed TOML ``raw`` of ``path``; every error names the file and the entry."""
    if set(raw) - {"settings"}:
        raise ConfigError(f"{path.name}: unknown key {min(set(raw) - {'settings'})!r} (allowed: settings)")
    entries = raw.get("settings", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path.name}: 'settings' must be an array of tables ([[settings]])")
    out = []
    for i, entry in enumerate(entries, start=1):
        where = f"{path.name}: settings #{i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table")
        unknown = sorted(set(entry) - _ENTRY_KEYS - _ENTRY_OPTIONAL)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} "
                              f"(allowed: {', '.join(sorted(_ENTRY_KEYS | _ENTRY_OPTIONAL))})")
        missing = sorted(_ENTRY_KEYS - set(entry))
        if missing:
            raise ConfigError(f"{where}: missing key {missing[0]!r}")
        scope = entry["scope"]
        if not isinstance(scope, str) or scope.count("/") != 1:
            raise ConfigError(f"{where}: scope = {scope!r}: must be 'dataset/backbone'")
        roles = entry.get("roles", [])
        if not isinstance(roles, list) or any(r not in ROLES for r in roles):
            raise ConfigError(f"{where}: roles = {roles!r}: a list of {', '.join(ROLES)}")
        pool = entry.get("context_pool")
        if pool is not None and not isinstance(pool, bool):
            raise ConfigError(f"{where}: context_pool = {pool!r}: expected true or false")
        teacher = entry.get("teacher")
        if teacher is not None and teacher not in teachers:
            raise ConfigError(f"{where}: teacher = {teacher!r}: no such teacher in teachers.toml "
                              f"(known: {', '.join(sorted(teachers))})")
        overrides = entry["overrides"]
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}: overrides: expected a table of dotted config keys")
        with_overrides(RunConfig(), overrides, where=f"{where}: overrides")
        out.append(ReleasedSetting(scope=scope, source=str(entry["source"]), overrides=dict(overrides),
                                   roles=tuple(roles), context_pool=pool, teacher=teacher))
    return tuple(out)


def released_layers(settings: tuple[ReleasedSetting, ...], scope: str, role: str, context_pool: bool,
                    teacher: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The ``(where, overrides)`` layers of the entries matching a run, in file order."""
    return [(f"released-settings.toml ({s.source})", s.overrides)
            for s in settings if s.matches(scope, role, context_pool, teacher)]
