"""Provenance: what produced a table or figure (dataset and fingerprint, backbone, sizes, epochs, profile,
variant, seeds, devices, torch and git versions), shown beside every one of them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kdcicam.analysis.results import ScopeKey, config_value
from kdcicam.store import RunInfo
from kdcicam.store.run_folder import read_attempts


def _distinct(values: Iterable[Any]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        text = "-" if value is None else str(value)
        if text not in out:
            out.append(text)
    return tuple(sorted(out))


def _attempted(run: RunInfo, key: str) -> list[Any]:
    """A run's ``device`` or ``git_commit`` over every attempt at it (its folder's attempts log), or
    its row's (the last attempt's) when it has no log: a run resumed elsewhere trained under each."""
    return [a.get(key) for a in read_attempts(run.artifacts_dir)] or [getattr(run, key)]


def _short_commit(commit: str) -> str:
    """A commit as provenance shows it: 12 hex digits, and "+dirty" when the tree had uncommitted changes."""
    head, plus, tail = commit.partition("+")
    return head[:12] + plus + tail


@dataclass(frozen=True)
class Provenance:
    """What produced a table or figure: shown beside every one of them."""

    dataset: str
    fingerprints: tuple[str, ...]
    backbone: str
    widths: tuple[str, ...]
    image_sizes: tuple[str, ...]
    epochs: tuple[str, ...]
    profile: str
    variant: str
    seeds: tuple[str, ...]
    devices: tuple[str, ...]
    torch_versions: tuple[str, ...]
    git_commits: tuple[str, ...]
    n_runs: int
    generated: str
    n_teachers: int = 0  # of n_runs, the teachers (a scope's header counts them; a table's cells do not)

    def items(self) -> list[tuple[str, str]]:
        """(label, value) pairs in display order."""
        def join(values: tuple[str, ...]) -> str:
            return ", ".join(values) if values else "-"

        return [
            ("dataset", f"{self.dataset} (fingerprint {join(self.fingerprints)})"),
            ("backbone", f"{self.backbone}, width {join(self.widths)}"),
            ("image size", join(self.image_sizes)),
            ("epochs", join(self.epochs)),
            ("profile / variant", f"{self.profile} / {self.variant}"),
            ("seeds", join(self.seeds)),
            ("runs", f"{self.n_runs} ({self.n_teachers} of them teachers)" if self.n_teachers else str(self.n_runs)),
            ("device", join(self.devices)),
            ("torch", join(self.torch_versions)),
            ("git commit", join(self.git_commits)),
            ("generated", self.generated),
        ]

    def line(self) -> str:
        """All of it on one line."""
        return "; ".join(f"{label}: {value}" for label, value in self.items())


def provenance(scope: ScopeKey, runs: Sequence[RunInfo], generated: str) -> Provenance:
    """The provenance of the runs behind one table or figure of ``scope``."""
    def size(run: RunInfo) -> str:
        crop = config_value(run.config, "data.crop")
        resize, test_crop = config_value(run.config, "eval.test_resize"), config_value(run.config, "eval.test_crop")
        return f"crop {crop} (test {resize}→{test_crop})"

    return Provenance(
        dataset=scope.dataset,
        fingerprints=tuple(fp[:12] for fp in _distinct(r.dataset_fingerprint for r in runs)),
        backbone=scope.backbone,
        widths=_distinct(config_value(r.config, "model.width") for r in runs),
        image_sizes=_distinct(size(r) for r in runs),
        epochs=_distinct(config_value(r.config, "train.epochs") for r in runs),
        profile=scope.profile,
        variant=scope.variant,
        seeds=tuple(str(s) for s in sorted({r.seed for r in runs})),
        devices=_distinct(d for r in runs for d in _attempted(r, "device")),
        torch_versions=_distinct(r.torch_version for r in runs),
        git_commits=_distinct(_short_commit(c) if c else None for r in runs for c in _attempted(r, "git_commit")),
        n_runs=len(runs),
        generated=generated,
        n_teachers=sum(r.role.endswith("_teacher") for r in runs),
    )
