"""How a registry cell becomes one run's config: the layers of defaults, paper and released settings,
profile, cell and command line (``resolve_config``), and a cell's grid of multipliers."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from kdcicam.core.config import RunConfig, TeacherRefs, to_dict, with_overrides
from kdcicam.core.errors import ConfigError
from kdcicam.registry.ablations import Registry
from kdcicam.registry.definitions import Cell
from kdcicam.registry.paper_settings import SETTINGS_FROM
from kdcicam.registry.released import released_layers


@dataclass(frozen=True)
class Scope:
    """Where a plan runs: the dataset (and its folder) and the backbone."""

    dataset: str = "synthetic"
    backbone: str = "vgg16"
    root: str | None = None

    @property
    def paper_scope(self) -> str:
        """The paper's table scope whose numbers this scope is shown beside (synthetic -> cub)."""
        return f"{SETTINGS_FROM.get(self.dataset, self.dataset)}/{self.backbone}"


def resolve_config(
    reg: Registry,
    *,
    scope: Scope,
    profile: str,
    variant: str,
    role: str,
    context_pool: bool,
    seed: int,
    num_classes: int,
    overrides: dict[str, Any] | None = None,
    teachers: TeacherRefs | None = None,
    cli_overrides: dict[str, Any] | None = None,
    teacher: str | None = None,
) -> RunConfig:
    """Resolve one run's config: defaults < paper settings < released settings (variant
    ``reference`` only) < profile < cell < command line. ``teacher``: the teacher definition the
    run trains, if any (released settings may be limited to one)."""
    prof = reg.profile(profile)
    key = (SETTINGS_FROM.get(scope.dataset, scope.dataset), scope.backbone)
    if key not in reg.paper_settings:
        known = ", ".join(f"{d}/{b}" for d, b in sorted(reg.paper_settings))
        raise ConfigError(f"no paper settings for {key[0]}/{key[1]} (known: {known})")
    layers: list[tuple[str, dict[str, Any]]] = [("paper-hyperparameters.csv", reg.paper_settings[key])]
    if variant == "reference":
        layers += released_layers(reg.released, f"{key[0]}/{key[1]}", role, context_pool, teacher)
    layers.append((f"profile {profile}", prof.overrides))
    layers.append((f"profile {profile} backbone {scope.backbone}", prof.backbone.get(scope.backbone, {})))
    vover = dict(prof.variant.get(variant, {}))
    role_over = vover.pop("role", {}).get(role, {})
    layers += [(f"profile {profile} variant {variant}", vover),
               (f"profile {profile} variant {variant} role {role}", role_over),
               ("cell", overrides or {}), ("command line", cli_overrides or {})]
    cfg = RunConfig(profile=profile, variant=variant)  # type: ignore[arg-type]
    cfg = with_overrides(cfg, {"model.backbone": scope.backbone, "data.dataset": scope.dataset,
                               "data.root": scope.root, "model.num_classes": num_classes,
                               "model.context_pool": context_pool, "loss.role": role,
                               "train.seed": seed})
    if scope.dataset == "synthetic" and prof.synth:
        cfg = with_overrides(cfg, {f"data.synth.{k}": v for k, v in prof.synth.items()}, where=f"profile {profile}")
    for where, layer in layers:
        if layer:
            cfg = with_overrides(cfg, layer, where=where)
    if teachers is not None:
        cfg = with_overrides(cfg, {f"teachers.{k}": v for k, v in to_dict(teachers).items()})
    return cfg.validate()


def grid_points(cell: Cell) -> list[dict[str, float]]:
    """Every combination of the cell's grid multipliers (one empty point when it has no grid)."""
    if not cell.grid:
        return [{}]
    keys = sorted(cell.grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(cell.grid[k] for k in keys))]


def apply_multipliers(cfg: RunConfig, point: dict[str, float]) -> RunConfig:
    """Scale the resolved values of ``cfg`` by a grid point's multipliers (ints are rounded, >= 1)."""
    if not point:
        return cfg
    values = {}
    for key, mult in point.items():
        base = _get(cfg, key)
        scaled = base * mult
        values[key] = max(1, round(scaled)) if isinstance(base, int) and not isinstance(base, bool) else scaled
    return with_overrides(cfg, values, where="grid").validate()


def _get(cfg: RunConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
