"""Reading one table file of the registry (``table3.toml``, ``figure1b.toml``, ...): its cells, claims,
gallery and sweep, each checked against the teachers and the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdcicam.core.config import ROLES, SELECTIONS, RunConfig, with_overrides
from kdcicam.core.errors import ConfigError
from kdcicam.registry.definitions import (
    CLAIM_KINDS,
    METRICS,
    TABLE_KINDS,
    Cell,
    Claim,
    Table,
    TeacherDef,
    TeacherUse,
)
from kdcicam.registry.mechanism_metrics import MECHANISM_METRICS
from kdcicam.registry.toml_checks import check_keys, check_overrides, default_of, read_toml, typed

_CELL_KEYS = {"key", "name"}
_CELL_OPTIONAL = {"role", "context_pool", "teachers", "teacher", "select", "overrides", "grid", "paper"}


def _read_cell(path: Path, table_key: str, raw: dict[str, Any], teachers: dict[str, TeacherDef]) -> Cell:
    key = raw.get("key", "?") if isinstance(raw, dict) else "?"
    where = f"{path.name}: cell {key!r}"
    check_keys(where, raw, _CELL_KEYS, _CELL_OPTIONAL)
    _check_cell_key(where, raw["key"])
    typed(f"{where}: name", raw["name"], str, "a string")
    for optional in ("role", "teacher", "select"):
        if optional in raw:
            typed(f"{where}: {optional}", raw[optional], str, "a string")
    role = raw.get("role")
    teacher = raw.get("teacher")
    if (role is None) == (teacher is None):
        raise ConfigError(f"{where}: give exactly one of 'role' (a run of its own) or 'teacher' (report a teacher run)")
    if role is not None and role not in ROLES:
        raise ConfigError(f"{where}: role = {role!r}: must be one of {', '.join(ROLES)}")
    if teacher is not None and teacher not in teachers:
        raise ConfigError(f"{where}: teacher = {teacher!r}: no such teacher in teachers.toml "
                          f"(known: {', '.join(sorted(teachers))})")
    select = raw.get("select", "last")
    if select not in SELECTIONS:
        raise ConfigError(f"{where}: select = {select!r}: must be one of {', '.join(SELECTIONS)}")
    use = None
    if "teachers" in raw:
        t = raw["teachers"]
        check_keys(f"{where}: teachers", t, set(), {"cls", "cls_select", "loc", "loc_select"})
        for slot in ("cls", "loc"):
            name = t.get(slot)
            if name is not None and name not in teachers:
                raise ConfigError(f"{where}: teachers.{slot} = {name!r}: no such teacher in teachers.toml "
                                  f"(known: {', '.join(sorted(teachers))})")
            sel = t.get(f"{slot}_select", "top1_cls" if slot == "cls" else "gt_known_loc")
            if sel not in SELECTIONS:
                raise ConfigError(f"{where}: teachers.{slot}_select = {sel!r}: must be one of {', '.join(SELECTIONS)}")
        use = TeacherUse(cls=t.get("cls"), cls_select=t.get("cls_select", "top1_cls"),
                         loc=t.get("loc"), loc_select=t.get("loc_select", "gt_known_loc"))
        if use.cls is None and use.loc is None:
            raise ConfigError(f"{where}: teachers: name at least one of 'cls' or 'loc'")
    if role == "distilled" and use is None:
        raise ConfigError(f"{where}: role 'distilled' needs a 'teachers' table")
    if role is not None and role != "distilled" and use is not None:
        raise ConfigError(f"{where}: 'teachers' is only for role 'distilled' (this cell is {role!r})")
    overrides = check_overrides(f"{where}: overrides", raw.get("overrides", {}))
    grid: dict[str, tuple[float, ...]] = {}
    for gkey, values in typed(f"{where}: grid", raw.get("grid", {}), dict, "a table").items():
        try:
            default_of(gkey)
        except ConfigError as exc:
            raise ConfigError(f"{where}: grid: {exc}") from None
        if not isinstance(values, list) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
            raise ConfigError(f"{where}: grid.{gkey}: expected a non-empty list of positive multipliers")
        grid[gkey] = tuple(float(v) for v in values)
    paper: dict[str, dict[str, float]] = {}
    for scope, numbers in typed(f"{where}: paper", raw.get("paper", {}), dict, "a table").items():
        if scope.count("/") != 1:
            raise ConfigError(f"{where}: paper.{scope!r}: scope must be 'dataset/backbone'")
        typed(f"{where}: paper.{scope}", numbers, dict, "a table of metric = value")
        for metric, value in numbers.items():
            if metric not in METRICS:
                raise ConfigError(f"{where}: paper.{scope}.{metric}: unknown metric (known: {', '.join(METRICS)})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise ConfigError(f"{where}: paper.{scope}.{metric} = {value!r}: expected a percentage")
        paper[scope] = {m: float(v) for m, v in numbers.items()}
    context_pool = raw.get("context_pool", True)
    typed(f"{where}: context_pool", context_pool, bool, "true or false")
    return Cell(table=table_key, key=str(raw["key"]), name=str(raw["name"]), role=role,
                context_pool=context_pool, teachers=use, teacher=teacher, select=select,
                overrides=overrides, grid=grid, paper=paper)


CELL_KEY_FORBIDDEN = "/@"  # they separate table, cell and seed in "table/cell@seed"


def _check_cell_key(where: str, key: Any) -> None:
    """A cell key is a non-empty string without '/', '@' or blanks (``table/cell@seed`` addresses it)."""
    typed(f"{where}: key", key, str, "a string")
    bad = [ch for ch in key if ch in CELL_KEY_FORBIDDEN or ch.isspace()]
    if not key or bad:
        raise ConfigError(f"{where}: key {key!r}: must be non-empty, without blanks, '/' or '@' "
                          "(they separate table, cell and seed in table/cell@seed)")


def _metric_list(where: str, value: Any, known: tuple[str, ...] = METRICS) -> tuple[str, ...]:
    """A list of metric names out of ``known``."""
    typed(where, value, list, "a list of metric names")
    for m in value:
        if m not in known:
            raise ConfigError(f"{where}: unknown metric {m!r} (known: {', '.join(known)})")
    return tuple(value)


def read_table(path: Path, teachers: dict[str, TeacherDef]) -> Table:
    raw = read_toml(path)
    key = path.stem
    check_keys(path.name, raw, {"title", "cells"}, {"caption", "kind", "reference_cell", "metrics", "claims", "sweep",
                                                       "gallery"})
    typed(f"{path.name}: title", raw["title"], str, "a string")
    typed(f"{path.name}: caption", raw.get("caption", ""), str, "a string")
    kind = raw.get("kind", "table")
    if not isinstance(kind, str) or kind not in TABLE_KINDS:
        raise ConfigError(f"{path.name}: kind = {kind!r}: must be one of {', '.join(map(repr, TABLE_KINDS))}")
    sweep_key, sweep_values = _read_sweep(path.name, kind, raw)
    metrics = _metric_list(f"{path.name}: metrics", raw.get("metrics", list(METRICS[:5])))
    if not isinstance(raw["cells"], list) or not raw["cells"]:
        raise ConfigError(f"{path.name}: 'cells' must be a non-empty array of tables ([[cells]])")
    cells = tuple(_read_cell(path, key, c, teachers) for c in raw["cells"])
    keys = [c.key for c in cells]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise ConfigError(f"{path.name}: cell key {sorted(dup)[0]!r} is used twice")
    gallery = tuple(raw.get("gallery", ()))
    for g in gallery:
        if g not in keys:
            raise ConfigError(f"{path.name}: gallery: no cell {g!r} (cells: {', '.join(keys)})")
    ref = raw.get("reference_cell")
    if ref is not None and ref not in keys:
        raise ConfigError(f"{path.name}: reference_cell = {ref!r}: no such cell (cells: {', '.join(keys)})")
    claims = []
    for c in raw.get("claims", []):
        where = f"{path.name}: claim {c.get('key', '?')!r}" if isinstance(c, dict) else f"{path.name}: claim"
        claim_kind = c.get("kind", "difference") if isinstance(c, dict) else "difference"
        # a dilemma is within one cell's runs: it has no "versus"
        check_keys(where, c, {"key", "text", "cell", "metrics"} | ({"versus"} if claim_kind != "dilemma" else set()),
              {"direction", "kind", "quote"})
        # a difference claim may also test a mechanism metric (kdcicam.registry.mechanism_metrics)
        _metric_list(f"{where}: metrics", c["metrics"],
                     METRICS + MECHANISM_METRICS if claim_kind == "difference" else METRICS)
        for slot in ("key", "text", "cell", "versus", "kind", "direction", "quote"):
            if slot in c:
                typed(f"{where}: {slot}", c[slot], str, "a string")
        if claim_kind not in CLAIM_KINDS:
            raise ConfigError(f"{where}: kind = {claim_kind!r}: must be one of {', '.join(map(repr, CLAIM_KINDS))}")
        if claim_kind != "difference" and len(c["metrics"]) != 2:
            raise ConfigError(f"{where}: a {claim_kind} claim needs exactly two metrics (x, y), got {len(c['metrics'])}")
        c = {**c, "versus": c.get("versus", c["cell"])}
        for slot in ("cell", "versus"):
            if c[slot] not in keys:
                raise ConfigError(f"{where}: {slot} = {c[slot]!r}: no such cell (cells: {', '.join(keys)})")
        direction = c.get("direction", "increase")
        if direction not in ("increase", "decrease"):
            raise ConfigError(f"{where}: direction = {direction!r}: must be 'increase' or 'decrease'")
        claims.append(Claim(table=key, key=c["key"], text=c["text"], cell=c["cell"], versus=c["versus"],
                            metrics=tuple(c["metrics"]), direction=direction, kind=claim_kind, quote=c.get("quote")))
    if kind == "sweep":
        if ref is None:
            raise ConfigError(f"{path.name}: a sweep needs reference_cell (the gap of every other cell is taken to it)")
        gridded = [c.key for c in cells if c.grid]
        if gridded:
            raise ConfigError(f"{path.name}: cell {gridded[0]!r}: a sweep's cells take no grid")
    return Table(key=key, path=path, title=raw["title"], caption=raw.get("caption", ""), kind=kind,
                 reference_cell=ref, metrics=metrics, cells=cells, claims=tuple(claims),
                 sweep_key=sweep_key, sweep_values=sweep_values, gallery=gallery)


def _read_sweep(name: str, kind: str, raw: dict) -> tuple[str | None, tuple[float, ...]]:
    """``sweep = { key = "data.synth.context_correlation", values = [0.5, 0.9] }`` of a kind = "sweep" file."""
    if kind != "sweep":
        if "sweep" in raw:
            raise ConfigError(f"{name}: 'sweep' is only for kind = \"sweep\"")
        return None, ()
    sweep = typed(f"{name}: sweep", raw.get("sweep"), dict, 'a table: sweep = { key = "...", values = [...] }')
    check_keys(f"{name}: sweep", sweep, {"key", "values"}, set())
    key = sweep["key"]
    try:
        default = default_of(key)
    except ConfigError as exc:
        raise ConfigError(f"{name}: sweep.key: {exc}") from None
    values = sweep["values"]
    if (isinstance(default, bool) or not isinstance(default, (int, float)) or not isinstance(values, list) or not values
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise ConfigError(f"{name}: sweep: {key} takes numbers: expected a non-empty list of numbers, got {values!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{name}: sweep.values: {values!r} repeats a value")
    for v in values:
        try:
            with_overrides(RunConfig(), {key: v}, where=f"{name}: sweep").validate()
        except ConfigError as exc:
            raise ConfigError(f"{name}: sweep.values: {exc}") from None
    return key, tuple(sorted(float(v) for v in values))
