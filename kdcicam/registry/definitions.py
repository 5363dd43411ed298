"""The registry's typed objects: a table file's cells and claims, the teachers, the profiles, and the
metric, table-kind and claim-kind vocabularies they are checked against."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdcicam.core.errors import ConfigError

METRICS = ("top1_cls", "top5_cls", "top1_loc", "top5_loc", "gt_known_loc", "maxboxacc_v2")
TABLE_KINDS = ("table", "scatter", "sweep")
# "difference": cell minus versus, per seed; "pareto": one run of cell beats every run of versus on two metrics;
# "dilemma": no run of the cell is the best on both metrics at once (no versus)
CLAIM_KINDS = ("difference", "pareto", "dilemma")


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
