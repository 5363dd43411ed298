"""Teachers trained again because their checkpoint is gone, and the check that their numbers come back.

A finished teacher keeps its numbers in the store, but the network its students distil from lives
only in its run folder. When that file is gone (an archive imported without checkpoints, a lost
folder) and a student still to train needs it, ``kdcicam ablate --retrain-missing`` reopens the
teacher (:meth:`~kdcicam.store.lifecycle.LifecycleMixin.reopen_run`), keeps its earlier record in
its run folder (``earlier-record.json.gz``, a run dump), lets the plan train it like any pending run,
and then compares the new final metrics with the earlier ones. Training is deterministic per seed on
one device string (:func:`kdcicam.core.runtime.device_name`), so on the machine that trained it the
numbers come back exactly; on another CPU they may not, and the comparison says by how much.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcicam.core.errors import KdcicamError, RunError
from kdcicam.execution.plan import PlannedRun
from kdcicam.execution.run_models import checkpoint_for
from kdcicam.store import Store

EARLIER_RECORD = "earlier-record.json.gz"  # in the retrained run's folder: its record before retraining
REOPEN_MESSAGE = "its checkpoint was missing: to be trained again (kdcicam ablate --retrain-missing)"


@dataclass(frozen=True)
class MissingTeacher:
    """A finished teacher a planned, unfinished student distils from, whose checkpoint file is gone."""

    run_id: str
    checkpoint: Path


@dataclass(frozen=True)
class RetrainCheck:
    """The retrained teacher's final metrics against its earlier ones."""

    run_id: str
    compared: int  # final metrics present before and after
    differences: tuple[tuple[str, float | None, float | None], ...]  # (metric key, before, after)
    unmatched: int  # metrics present on one side only
    earlier_record: Path

    @property
    def came_back(self) -> bool:
        return not self.differences and not self.unmatched

    def describe(self) -> str:
        head = f"teacher {self.run_id[:12]} trained again (its checkpoint was missing): "
        if self.came_back:
            return head + f"its {self.compared} final numbers came back exactly"
        parts = []
        if self.differences:
            key, before, after = max(self.differences, key=lambda d: _gap(d[1], d[2]))
            parts.append(f"{len(self.differences)} of {self.compared} final numbers differ (largest: {key} "
                         f"{_text(before)} -> {_text(after)})")
        if self.unmatched:
            parts.append(f"{self.unmatched} present on one side only")
        return (head + "; ".join(parts) + f"; the store holds the new numbers, the earlier record is "
                f"{self.earlier_record}")

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "came_back": self.came_back, "compared": self.compared,
                "unmatched": self.unmatched, "earlier_record": str(self.earlier_record),
                "differences": [{"metric": k, "before": b, "after": a} for k, b, a in self.differences]}


def _gap(before: float | None, after: float | None) -> float:
    if before is None or after is None:
        return math.inf
    return abs(after - before)


def _text(value: float | None) -> str:
    return "NaN" if value is None else f"{value:.6g}"


def missing_teachers(runs: Sequence[PlannedRun], store: Store) -> list[MissingTeacher]:
    """The finished teachers whose checkpoint file a planned, unfinished run would read and that is gone,
    once each (in plan order). A teacher with no artifact folder recorded counts as missing too."""
    statuses = {r.id: r.status for r in store.list_runs()}
    found: dict[str, MissingTeacher] = {}
    for run in runs:
        if statuses.get(run.run_id) == "finished":
            continue
        refs = run.cfg.teachers
        for run_id, selection in ((refs.cls_run, refs.cls_select), (refs.loc_run, refs.loc_select)):
            if not run_id or run_id in found or statuses.get(run_id) != "finished":
                continue
            folder = store.get_run(run_id).artifacts_dir
            path = checkpoint_for(Path(folder), selection) if folder else Path("(no artifact folder)")
            if not folder or not path.is_file():
                found[run_id] = MissingTeacher(run_id, path)
    return list(found.values())


def refuse_missing(missing: Sequence[MissingTeacher]) -> None:
    """Raise the one-line error ``ablate`` gives without ``--retrain-missing``.

    Raises:
        RunError: when anything is missing.
    """
    if missing:
        first = missing[0]
        more = f" (and {len(missing) - 1} more teacher(s))" if len(missing) > 1 else ""
        raise RunError(f"teacher run {first.run_id[:12]} is finished but its checkpoint is gone "
                       f"({first.checkpoint}){more}: its students cannot train. Pass --retrain-missing to "
                       f"train it again in place (its new numbers are compared with the stored ones)")


def reopen_teachers(store: Store, missing: Iterable[MissingTeacher], artifacts_root: Path) -> dict[str, dict]:
    """Keep each teacher's record in ``ARTIFACTS/<run id>/earlier-record.json.gz``, then reopen it.

    Returns:
        run id -> its earlier record (a run dump), for the teachers this call reopened (another process
        may have reopened one first).

    Raises:
        RunError: the earlier record cannot be written (nothing is reopened then).
    """
    earlier: dict[str, dict] = {}
    for teacher in missing:
        dump = store.dump_run(teacher.run_id)
        path = Path(artifacts_root) / teacher.run_id / EARLIER_RECORD
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(gzip.compress(json.dumps(dump, sort_keys=True).encode(), mtime=0))
            tmp.replace(path)
        except OSError as exc:
            raise RunError(f"cannot keep the earlier record of teacher {teacher.run_id[:12]} in {path}: "
                           f"{exc.strerror or exc}") from None
        if store.reopen_run(teacher.run_id, REOPEN_MESSAGE):
            earlier[teacher.run_id] = dump
    return earlier


def _final_values(columns: dict[str, list]) -> dict[str, float | None]:
    keys = ("protocol", "selection", "threshold_policy", "split", "name")
    rows = zip(*(columns.get(k, []) for k in (*keys, "value")))
    return {"/".join(str(v) for v in row[:-1]): row[-1] for row in rows}


def check_retrained(store: Store, earlier: dict[str, dict], artifacts_root: Path) -> list[RetrainCheck]:
    """Compare each reopened teacher that finished again with its earlier final metrics (exact equality;
    NaN, stored as NULL, equals NaN). A teacher that did not finish is left out."""
    checks = []
    for run_id, dump in earlier.items():
        try:
            if store.get_run(run_id).status != "finished":
                continue
            finals = store.final_metrics([run_id])
            now = _final_values({col: [None if v != v else v for v in finals[col]] if col == "value"
                                 else list(finals[col]) for col in finals.columns})  # NaN <- NULL, as dumped
        except KdcicamError:
            continue
        before = _final_values(dump.get("final_metrics") or {})
        shared = sorted(set(before) & set(now))
        differences = tuple((k, before[k], now[k]) for k in shared if before[k] != now[k])
        checks.append(RetrainCheck(run_id=run_id, compared=len(shared), differences=differences,
                                   unmatched=len(set(before) ^ set(now)),
                                   earlier_record=(Path(artifacts_root) / run_id / EARLIER_RECORD).resolve()))
    return checks
