"""The ablation registry: ``ablations/*.toml`` read into typed, validated objects.

One file per paper artefact (``table3.toml``, ``table4.toml``, ``table5.toml``, ``figure1b.toml``,
and any extra file a user adds), the shared teacher definitions (``teachers.toml``), the profiles
(``profiles.toml``) and the paper's settings (``paper-hyperparameters.csv``). A cell is data: what
it turns on, the hyperparameters it overrides, the paper's numbers. No code branches on a table's
name; every error names the file, the cell and the key.

This module reads the folder (:func:`load_registry`); the objects are ``definitions.py``, each file's
reader ``table_files.py``, ``teachers_file.py``, ``profiles_file.py``, ``paper_settings.py`` and
``released.py``, the shared checks ``toml_checks.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcicam.core.errors import ConfigError
from kdcicam.registry.definitions import Profile, Table, TeacherDef
from kdcicam.registry.paper_settings import read_paper_settings
from kdcicam.registry.profiles_file import read_profiles
from kdcicam.registry.released import ReleasedSetting, read_released_settings
from kdcicam.registry.table_files import read_table
from kdcicam.registry.teachers_file import read_teachers
from kdcicam.registry.toml_checks import guarded, read_toml

__all__ = ["DEFAULT_REGISTRY", "NON_TABLE_FILES", "Registry", "load_registry"]

DEFAULT_REGISTRY = Path(__file__).resolve().parents[2] / "ablations"
NON_TABLE_FILES = {"teachers.toml", "profiles.toml", "released-settings.toml"}


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


def load_registry(root: Path | None = None) -> Registry:
    """Read and validate every file of the registry folder (default: the repository's ``ablations/``)."""
    root = Path(root) if root is not None else DEFAULT_REGISTRY
    if not root.is_dir():
        raise ConfigError(f"{root}: registry folder not found")
    teachers = guarded(root / "teachers.toml", read_teachers)
    tables = {}
    for path in sorted(root.glob("*.toml")):
        if path.name in NON_TABLE_FILES:
            continue
        tables[path.stem] = guarded(path, lambda p: read_table(p, teachers))
    released_path = root / "released-settings.toml"
    released = (guarded(released_path, lambda p: read_released_settings(p, read_toml(p), set(teachers)))
                if released_path.is_file() else ())
    return Registry(root=root, tables=tables, teachers=teachers,
                    profiles=guarded(root / "profiles.toml", read_profiles),
                    paper_settings=read_paper_settings(root / "paper-hyperparameters.csv"),
                    released=released)
