"""The ablation registry: ``ablations/*.toml`` read into typed, validated objects.

One file per paper artefact (``table3.toml``, ``table4.toml``, ``table5.toml``, ``figure1b.toml``,
and any extra file a user adds), the shared teacher definitions (``teachers.toml``), the profiles
(``profiles.toml``) and the paper's settings (``paper-hyperparameters.csv``). A cell is data: what
it turns on, the hyperparameters it overrides, the paper's numbers. No code branches on a table's
name; every error names the file, the cell and the key.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdcicam.core.config import (
    BACKBONES,
    ROLES,
    SELECTIONS,
    RunConfig,
    SynthConfig,
    from_dict,
    to_dict,
    with_overrides,
)
from kdcicam.core.errors import ConfigError
from kdcicam.registry.mechanism_metrics import MECHANISM_METRICS
from kdcicam.registry.released import ReleasedSetting, read_released_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_REGISTRY = Path(__file__).resolve().parents[2] / "ablations"
METRICS = ("top1_cls", "top5_cls", "top1_loc", "top5_loc", "gt_known_loc", "maxboxacc_v2")
NON_TABLE_FILES = {"teachers.toml", "profiles.toml", "released-settings.toml"}
TABLE_KINDS = ("table", "scatter", "sweep")
# "difference": cell minus versus, per seed; "pareto": one run of cell beats every run of versus on two metrics;
# "dilemma": no run of the cell is the best on both metrics at once (no versus)
CLAIM_KINDS = ("difference", "pareto", "dilemma")
# Which of the paper's dataset settings a dataset borrows (the synthetic benchmark stands in for CUB).
SETTINGS_FROM = {"synthetic": "cub", "cub": "cub", "wsol": "cub", "ilsvrc": "ilsvrc"}

# paper-hyperparameters.csv column -> config key
_HP_COLUMNS = {
    "lr": "train.lr",
    "batch_size": "train.batch_size",
    "update_rate_lambda": "model.update_rate",
    "epochs": "train.epochs",
    "T_cls": "loss.T_cls",
    "T_loc": "loss.T_loc",
    "alpha": "loss.alpha",
    "cls_teacher_mu": "loss.mu",
    "cls_teacher_eta": "loss.eta",
    "loc_teacher_beta": "loss.beta",
    "loc_teacher_delta": "loss.delta",
    "test_resize": "eval.test_resize",
    "test_crop": "eval.test_crop",
    "box_threshold_theta": "eval.theta",
    "nonlocal_blocks": "model.nonlocal_blocks",
}
_INT_KEYS = {"train.batch_size", "train.epochs", "eval.test_resize", "eval.test_crop", "model.nonlocal_blocks"}


@dataclass(frozen=True)
class TeacherDef:
    name: str
    role: str
    context_pool: bool
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TeacherUse:
    """Which teacher runs a distilled cell learns from, and how each teacher's checkpoint is chosen."""

    cls: str | None = None
    cls_select: str = "top1_cls"
    loc: str | None = None
    loc_select: str = "gt_known_loc"


@dataclass(frozen=True)
class Cell:
    table: str
    key: str
    name: str
    role: str | None  # None for a cell that reports a teacher run itself (``teacher`` is set)
    context_pool: bool = True
    teachers: TeacherUse | None = None
    teacher: str | None = None  # report this teacher run ...
    select: str = "last"  # ... (or this cell's run) at the checkpoint this criterion picks
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, tuple[float, ...]] = field(default_factory=dict)  # key -> multipliers
    paper: dict[str, dict[str, float]] = field(default_factory=dict)  # "cub/vgg16" -> metric -> %


@dataclass(frozen=True)
class Claim:
    table: str
    key: str
    text: str
    cell: str
    versus: str
    metrics: tuple[str, ...]
    direction: str = "increase"
    kind: str = "difference"
    # the paper's words, with their section, where the claim is our reading of its text (no number printed)
    quote: str | None = None


@dataclass(frozen=True)
class Table:
    key: str  # file stem, e.g. "table3"
    path: Path
    title: str
    caption: str
    kind: str  # "table" | "scatter" | "sweep"
    reference_cell: str | None
    metrics: tuple[str, ...]
    cells: tuple[Cell, ...]
    claims: tuple[Claim, ...] = ()
    sweep_key: str | None = None  # kind "sweep": the config key set to each of sweep_values (every cell, its teachers)
    sweep_values: tuple[float, ...] = ()
    gallery: tuple[str, ...] = ()  # cells shown side by side in the report's localization gallery, in order

    def cell(self, key: str) -> Cell:
        for c in self.cells:
            if c.key == key:
                return c
        raise ConfigError(f"{self.path.name}: no cell {key!r} (cells: {', '.join(c.key for c in self.cells)})")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    reduced: bool
    needs_real_data: bool = False
    needs_weights: bool = False
    needs_gpu: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    synth: dict[str, Any] = field(default_factory=dict)
    variant: dict[str, Any] = field(default_factory=dict)  # variant -> overrides (+ "role" -> role -> overrides)
    backbone: dict[str, dict[str, Any]] = field(default_factory=dict)  # backbone -> overrides (after ``overrides``)


@dataclass(frozen=True)
class Registry:
    root: Path
    tables: dict[str, Table]
    teachers: dict[str, TeacherDef]
    profiles: dict[str, Profile]
    paper_settings: dict[tuple[str, str], dict[str, Any]]  # (dataset, backbone) -> config overrides
    released: tuple[ReleasedSetting, ...] = ()  # the released scripts' settings (variant "reference")

    def table(self, key: str) -> Table:
        if key not in self.tables:
            raise ConfigError(f"unknown table {key!r} (known: {', '.join(sorted(self.tables))}, all)")
        return self.tables[key]

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise ConfigError(f"unknown profile {name!r} (known: {', '.join(sorted(self.profiles))})")
        return self.profiles[name]


# ----------------------------------------------------------------------------------- reading

def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: TOML syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: cannot read ({exc})") from None


def _keys(where: str, data: dict[str, Any], required: set[str], optional: set[str]) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = sorted(set(data) - required - optional)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(required | optional))})")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{where}: missing key {missing[0]!r}")


def _typed(where: str, value: Any, tp: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, tp) or (isinstance(value, bool) and bool not in (tp if isinstance(tp, tuple) else (tp,))):
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    return value


def _check_overrides(where: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides are dotted config keys; check each names a real, correctly typed field."""
    _typed(where, overrides, dict, "a table of dotted config keys")
    if overrides:
        with_overrides(RunConfig(), overrides, where=where)
    return dict(overrides)


_CELL_KEYS = {"key", "name"}
_CELL_OPTIONAL = {"role", "context_pool", "teachers", "teacher", "select", "overrides", "grid", "paper"}


def _read_cell(path: Path, table_key: str, raw: dict[str, Any], teachers: dict[str, TeacherDef]) -> Cell:
    key = raw.get("key", "?") if isinstance(raw, dict) else "?"
    where = f"{path.name}: cell {key!r}"
    _keys(where, raw, _CELL_KEYS, _CELL_OPTIONAL)
    _check_cell_key(where, raw["key"])
    _typed(f"{where}: name", raw["name"], str, "a string")
    for optional in ("role", "teacher", "select"):
        if optional in raw:
            _typed(f"{where}: {optional}", raw[optional], str, "a string")
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
        _keys(f"{where}: teachers", t, set(), {"cls", "cls_select", "loc", "loc_select"})
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
    overrides = _check_overrides(f"{where}: overrides", raw.get("overrides", {}))
    grid: dict[str, tuple[float, ...]] = {}
    for gkey, values in _typed(f"{where}: grid", raw.get("grid", {}), dict, "a table").items():
        try:
            _default_of(gkey)
        except ConfigError as exc:
            raise ConfigError(f"{where}: grid: {exc}") from None
        if not isinstance(values, list) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
            raise ConfigError(f"{where}: grid.{gkey}: expected a non-empty list of positive multipliers")
        grid[gkey] = tuple(float(v) for v in values)
    paper: dict[str, dict[str, float]] = {}
    for scope, numbers in _typed(f"{where}: paper", raw.get("paper", {}), dict, "a table").items():
        if scope.count("/") != 1:
            raise ConfigError(f"{where}: paper.{scope!r}: scope must be 'dataset/backbone'")
        _typed(f"{where}: paper.{scope}", numbers, dict, "a table of metric = value")
        for metric, value in numbers.items():
            if metric not in METRICS:
                raise ConfigError(f"{where}: paper.{scope}.{metric}: unknown metric (known: {', '.join(METRICS)})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise ConfigError(f"{where}: paper.{scope}.{metric} = {value!r}: expected a percentage")
        paper[scope] = {m: float(v) for m, v in numbers.items()}
    context_pool = raw.get("context_pool", True)
    _typed(f"{where}: context_pool", context_pool, bool, "true or false")
    return Cell(table=table_key, key=str(raw["key"]), name=str(raw["name"]), role=role,
                context_pool=context_pool, teachers=use, teacher=teacher, select=select,
                overrides=overrides, grid=grid, paper=paper)


CELL_KEY_FORBIDDEN = "/@"  # they separate table, cell and seed in "table/cell@seed"


def _check_cell_key(where: str, key: Any) -> None:
    """A cell key is a non-empty string without '/', '@' or blanks (``table/cell@seed`` addresses it)."""
    _typed(f"{where}: key", key, str, "a string")
    bad = [ch for ch in key if ch in CELL_KEY_FORBIDDEN or ch.isspace()]
    if not key or bad:
        raise ConfigError(f"{where}: key {key!r}: must be non-empty, without blanks, '/' or '@' "
                          "(they separate table, cell and seed in table/cell@seed)")


def _metric_list(where: str, value: Any, known: tuple[str, ...] = METRICS) -> tuple[str, ...]:
    """A list of metric names out of ``known``."""
    _typed(where, value, list, "a list of metric names")
    for m in value:
        if m not in known:
            raise ConfigError(f"{where}: unknown metric {m!r} (known: {', '.join(known)})")
    return tuple(value)


def _default_of(dotted: str) -> Any:
    node: Any = to_dict(RunConfig())
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"unknown key {dotted!r}")
        node = node[part]
    return node


def _read_table(path: Path, teachers: dict[str, TeacherDef]) -> Table:
    raw = _read_toml(path)
    key = path.stem
    _keys(path.name, raw, {"title", "cells"}, {"caption", "kind", "reference_cell", "metrics", "claims", "sweep",
                                                       "gallery"})
    _typed(f"{path.name}: title", raw["title"], str, "a string")
    _typed(f"{path.name}: caption", raw.get("caption", ""), str, "a string")
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
        _keys(where, c, {"key", "text", "cell", "metrics"} | ({"versus"} if claim_kind != "dilemma" else set()),
              {"direction", "kind", "quote"})
        # a difference claim may also test a mechanism metric (kdcicam.registry.mechanism_metrics)
        _metric_list(f"{where}: metrics", c["metrics"],
                     METRICS + MECHANISM_METRICS if claim_kind == "difference" else METRICS)
        for slot in ("key", "text", "cell", "versus", "kind", "direction", "quote"):
            if slot in c:
                _typed(f"{where}: {slot}", c[slot], str, "a string")
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
    sweep = _typed(f"{name}: sweep", raw.get("sweep"), dict, 'a table: sweep = { key = "...", values = [...] }')
    _keys(f"{name}: sweep", sweep, {"key", "values"}, set())
    key = sweep["key"]
    try:
        default = _default_of(key)
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


def _read_teachers(path: Path) -> dict[str, TeacherDef]:
    raw = _read_toml(path)
    _keys(path.name, raw, {"teachers"}, set())
    out = {}
    for name, t in _typed(f"{path.name}: teachers", raw["teachers"], dict, "a table of teachers").items():
        where = f"{path.name}: teacher {name!r}"
        _keys(where, t, {"role"}, {"description", "context_pool", "overrides"})
        _typed(f"{where}: description", t.get("description", ""), str, "a string")
        _typed(f"{where}: context_pool", t.get("context_pool", True), bool, "true or false")
        if not isinstance(t["role"], str) or t["role"] not in ("cls_teacher", "loc_teacher"):
            raise ConfigError(f"{where}: role = {t['role']!r}: must be 'cls_teacher' or 'loc_teacher'")
        out[name] = TeacherDef(name=name, role=t["role"], context_pool=t.get("context_pool", True),
                               description=t.get("description", ""),
                               overrides=_check_overrides(f"{where}: overrides", t.get("overrides", {})))
    return out


def _read_profiles(path: Path) -> dict[str, Profile]:
    """Read ``profiles.toml``. A profile may ``extends`` another: it starts from that profile's synth,
    overrides and per-variant overrides and changes what it names (its own description, ``reduced``
    and ``needs_*`` are always its own)."""
    raw = _read_toml(path)
    out: dict[str, Profile] = {}
    for name, p in raw.items():
        where = f"{path.name}: profile {name!r}"
        _keys(where, p, {"description", "reduced"},
              {"extends", "needs_real_data", "needs_weights", "needs_gpu", "overrides", "synth", "variant", "backbone"})
        _typed(f"{where}: description", p["description"], str, "a string")
        for flag in ("reduced", "needs_real_data", "needs_weights", "needs_gpu"):
            _typed(f"{where}: {flag}", p.get(flag, False), bool, "true or false")
        for section in ("overrides", "synth", "variant", "backbone"):
            _typed(f"{where}: {section}", p.get(section, {}), dict, "a table")
        synth = _merged(raw, name, "synth", path.name)
        from_dict(SynthConfig, synth, where=f"{where}: synth")
        variant = _merged(raw, name, "variant", path.name)
        for vname, v in variant.items():
            v = dict(_typed(f"{where}: variant.{vname}", v, dict, "a table of dotted config keys"))
            roles = _typed(f"{where}: variant.{vname}.role", v.pop("role", {}), dict, "a table of roles")
            _check_overrides(f"{where}: variant.{vname}", v)
            for rname, r in roles.items():
                if rname not in ROLES:
                    raise ConfigError(f"{where}: variant.{vname}.role.{rname}: unknown role")
                _check_overrides(f"{where}: variant.{vname}.role.{rname}", r)
        backbone = _merged(raw, name, "backbone", path.name)
        for bname, b in backbone.items():
            if bname not in BACKBONES:
                raise ConfigError(f"{where}: backbone.{bname}: unknown backbone (known: {', '.join(BACKBONES)})")
            backbone[bname] = _check_overrides(f"{where}: backbone.{bname}", b)
        out[name] = Profile(name=name, description=p["description"], reduced=bool(p["reduced"]),
                            needs_real_data=p.get("needs_real_data", False),
                            needs_weights=p.get("needs_weights", False), needs_gpu=p.get("needs_gpu", False),
                            overrides=_check_overrides(f"{where}: overrides", _merged(raw, name, "overrides", path.name)),
                            synth=synth, variant=variant, backbone=backbone)
    return out


def _merged(raw: dict[str, Any], name: str, section: str, file: str) -> dict[str, Any]:
    """Profile ``name``'s ``section`` on top of the profile it ``extends`` (recursively; nested tables
    merged key by key)."""
    chain = [name]
    while "extends" in raw[chain[-1]]:
        base = raw[chain[-1]]["extends"]
        where = f"{file}: profile {chain[-1]!r}: extends"
        if not isinstance(base, str) or base not in raw:
            raise ConfigError(f"{where}: unknown profile {base!r} (known: {', '.join(sorted(raw))})")
        if base in chain:
            raise ConfigError(f"{where}: {' -> '.join([*chain, base])} is a cycle")
        chain.append(base)
    merged: dict[str, Any] = {}
    for prof in reversed(chain):  # the base first, the named profile last
        _deep_update(merged, raw[prof].get(section, {}))
    return merged


def _deep_update(into: dict[str, Any], update: dict[str, Any]) -> None:
    """Merge ``update`` into ``into``: nested tables key by key (copied, never shared), other values replaced."""
    for key, value in update.items():
        if isinstance(value, dict):
            if not isinstance(into.get(key), dict):
                into[key] = {}
            _deep_update(into[key], value)
        else:
            into[key] = value


def _read_paper_settings(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        rows = list(csv.DictReader(path.open(encoding="utf-8")))
    except OSError as exc:
        raise ConfigError(f"{path.name}: cannot read ({exc})") from None
    for i, row in enumerate(rows, start=2):
        settings: dict[str, Any] = {}
        for col, key in _HP_COLUMNS.items():
            try:
                value = float(row[col])
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"{path.name}:{i}: column {col!r} missing or not a number") from None
            settings[key] = int(value) if key in _INT_KEYS else value
        opt = row.get("optimizer", "")
        if opt.startswith("adam("):
            b1, b2 = opt[5:-1].split(";")
            settings["train.betas"] = [float(b1), float(b2)]
        settings["data.crop"] = settings["eval.test_crop"]
        settings["data.train_resize"] = round(settings["eval.test_crop"] * 256 / 224)
        out[(row["dataset"], row["backbone"])] = settings
    return out


def load_registry(root: Path | None = None) -> Registry:
    """Read and validate every file of the registry folder (default: the repository's ``ablations/``)."""
    root = Path(root) if root is not None else DEFAULT_REGISTRY
    if not root.is_dir():
        raise ConfigError(f"{root}: registry folder not found")
    teachers = _guarded(root / "teachers.toml", _read_teachers)
    tables = {}
    for path in sorted(root.glob("*.toml")):
        if path.name in NON_TABLE_FILES:
            continue
        tables[path.stem] = _guarded(path, lambda p: _read_table(p, teachers))
    released_path = root / "released-settings.toml"
    released = (_guarded(released_path, lambda p: read_released_settings(p, _read_toml(p), set(teachers)))
                if released_path.is_file() else ())
    return Registry(root=root, tables=tables, teachers=teachers,
                    profiles=_guarded(root / "profiles.toml", _read_profiles),
                    paper_settings=_read_paper_settings(root / "paper-hyperparameters.csv"),
                    released=released)


def _guarded(path: Path, read: Any) -> Any:
    """``read(path)``; a value of the wrong shape that no check above names is still one ConfigError line."""
    try:
        return read(path)
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        raise ConfigError(f"{path.name}: a value has the wrong type or shape ({type(exc).__name__}: {exc})") from None
