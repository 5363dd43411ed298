"""Reading the registry's shared teacher definitions (``teachers.toml``)."""

from __future__ import annotations

from pathlib import Path

from kdcicam.core.errors import ConfigError
from kdcicam.registry.definitions import TeacherDef
from kdcicam.registry.toml_checks import check_keys, check_overrides, read_toml, typed


def read_teachers(path: Path) -> dict[str, TeacherDef]:
    raw = read_toml(path)
    check_keys(path.name, raw, {"teachers"}, set())
    out = {}
    for name, t in typed(f"{path.name}: teachers", raw["teachers"], dict, "a table of teachers").items():
        where = f"{path.name}: teacher {name!r}"
        check_keys(where, t, {"role"}, {"description", "context_pool", "overrides"})
        typed(f"{where}: description", t.get("description", ""), str, "a string")
        typed(f"{where}: context_pool", t.get("context_pool", True), bool, "true or false")
        if not isinstance(t["role"], str) or t["role"] not in ("cls_teacher", "loc_teacher"):
            raise ConfigError(f"{where}: role = {t['role']!r}: must be 'cls_teacher' or 'loc_teacher'")
        out[name] = TeacherDef(name=name, role=t["role"], context_pool=t.get("context_pool", True),
                               description=t.get("description", ""),
                               overrides=check_overrides(f"{where}: overrides", t.get("overrides", {})))
    return out
