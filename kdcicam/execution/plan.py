"""Planning: registry cells -> the deduplicated, ordered list of runs they need.

A run is identified by the hash of its resolved config plus the dataset fingerprint
(:func:`run_id_for`); the seed is part of the config. Cells that need the same trained model
(Table 3's "+ConPool" and Table 4's "Stu"; a teacher used by Tables 3, 4 and 5) resolve to the
same run id and are planned once. Teachers come before the students that learn from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from kdcicam.core.config import DataConfig, RunConfig, TeacherRefs
from kdcicam.core.identity import config_hash
from kdcicam.data.base import DatasetIndex
from kdcicam.model.shipped import pin_shipped_weights
from kdcicam.registry.ablations import Registry
from kdcicam.registry.definitions import Cell
from kdcicam.registry.resolve import Scope, apply_multipliers, grid_points, resolve_config


def run_id_for(cfg: RunConfig, dataset_fingerprint: str) -> str:
    """A run's identity: its resolved config (seed included) and the data it trains on."""
    return config_hash(cfg, dataset_fingerprint)


@dataclass
class PlannedRun:
    run_id: str
    cfg: RunConfig
    dataset: DatasetIndex  # the data it trains and is evaluated on
    deps: tuple[str, ...] = ()  # run ids of the teachers this run learns from
    labels: list[tuple[str, str, int, str]] = field(default_factory=list)  # (table, cell, seed, grid point)

    @property
    def role(self) -> str:
        return self.cfg.loss.role


@dataclass(frozen=True)
class PlannedCell:
    """One cell at one seed (and grid point): the run whose checkpoint ``select`` it reports."""

    table: str
    cell: str
    name: str
    seed: int
    run_id: str
    select: str
    point: str = ""  # grid point label, e.g. "train.epochs x0.5, train.lr x2"


@dataclass
class Plan:
    scope: Scope
    profile: str
    variant: str
    runs: list[PlannedRun]  # teachers first
    cells: list[PlannedCell]

    def run(self, run_id: str) -> PlannedRun:
        for r in self.runs:
            if r.run_id == run_id:
                return r
        raise KeyError(run_id)


def _point_label(point: dict[str, float]) -> str:
    return ", ".join(f"{k} x{v:g}" for k, v in sorted(point.items()))


def make_plan(
    reg: Registry,
    table_keys: list[str],
    *,
    scope: Scope,
    profile: str,
    variant: str,
    seeds: list[int],
    open_data: Callable[[DataConfig], DatasetIndex],
    cli_overrides: dict | None = None,
) -> Plan:
    """Resolve every cell of the named tables, at every seed, into runs (deduplicated, teachers first).

    ``open_data(data_cfg)`` gives the dataset a run's data config names (the caller caches it):
    its class count completes the config and its fingerprint enters the run id.
    """
    runs: dict[str, PlannedRun] = {}
    cells: list[PlannedCell] = []

    def add(cfg: RunConfig, deps: tuple[str, ...] = ()) -> PlannedRun:
        index = open_data(cfg.data)
        cfg = replace(cfg, model=pin_shipped_weights(replace(cfg.model, num_classes=index.num_classes))).validate()
        rid = run_id_for(cfg, index.fingerprint)
        if rid not in runs:
            runs[rid] = PlannedRun(run_id=rid, cfg=cfg, dataset=index, deps=deps)
        return runs[rid]

    def resolve(role: str, context_pool: bool, seed: int, overrides: dict, teachers: TeacherRefs | None = None,
                teacher: str | None = None):
        return resolve_config(reg, scope=scope, profile=profile, variant=variant, role=role,
                              context_pool=context_pool, seed=seed, num_classes=2,
                              overrides=overrides, teachers=teachers, cli_overrides=cli_overrides, teacher=teacher)

    for key in table_keys:
        table = reg.table(key)
        # a sweep sets its key to each value in every cell and in the teachers they learn from
        settings = [{table.sweep_key: v} for v in table.sweep_values] if table.sweep_key else [{}]
        for seed in seeds:
            for setting in settings:
                def teacher_run(name: str, seed: int, setting: dict = setting) -> PlannedRun:
                    t = reg.teachers[name]
                    return add(resolve(t.role, t.context_pool, seed, {**t.overrides, **setting}, teacher=name))

                for cell in table.cells:
                    for point in grid_points(cell):
                        run = _cell_run(cell, seed, point, resolve, teacher_run, add, setting)
                        label_text = ", ".join([*(f"{k}={v:g}" for k, v in setting.items()),
                                                *([_point_label(point)] if point else [])])
                        label = (table.key, cell.key, seed, label_text)
                        if label not in run.labels:
                            run.labels.append(label)
                        cells.append(PlannedCell(table=table.key, cell=cell.key, name=cell.name, seed=seed,
                                                 run_id=run.run_id, select=cell.select, point=label_text))
    # teachers first, then plain runs, then the runs that wait for teachers (stable within each): with
    # --jobs N the long teacher chains start at once instead of after the students they do not need
    needed = {d for r in runs.values() for d in r.deps}
    ordered = sorted(runs.values(), key=lambda r: (len(r.deps) > 0, r.run_id not in needed))
    return Plan(scope=scope, profile=profile, variant=variant, runs=ordered, cells=cells)


def _cell_run(cell: Cell, seed: int, point: dict, resolve, teacher_run, add, setting: dict) -> PlannedRun:
    if cell.teacher is not None:  # the cell reports a teacher run itself
        return teacher_run(cell.teacher, seed)
    refs = None
    deps: tuple[str, ...] = ()
    if cell.teachers is not None:
        cls_run = teacher_run(cell.teachers.cls, seed).run_id if cell.teachers.cls else None
        loc_run = teacher_run(cell.teachers.loc, seed).run_id if cell.teachers.loc else None
        refs = TeacherRefs(cls_run=cls_run, cls_select=cell.teachers.cls_select,
                           loc_run=loc_run, loc_select=cell.teachers.loc_select)
        deps = tuple(r for r in (cls_run, loc_run) if r)
    cfg = apply_multipliers(resolve(cell.role, cell.context_pool, seed, {**cell.overrides, **setting}, refs), point)
    return add(cfg, deps)
