"""What the run store hands out and takes in: frozen snapshots of rows, and the conversions and checks
between Python values and the store's columns (JSON text, naive-UTC times, NULL for NaN, column sizes)."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Integer, String, Table

from kdcicam.core.errors import StoreError, StoreWarning
from kdcicam.store.run_folder import from_stored
from kdcicam.store.schema import Dataset, ImageRecord, Run

_INT32 = (-(2**31), 2**31 - 1)  # PostgreSQL INTEGER

IMAGE_RECORD_FIELDS: tuple[str, ...] = (
    "image_id", "label", "top5", "top5_scores", "box", "iou", "correct_top1_cls",
    "correct_top5_cls", "correct_top1_loc", "correct_top5_loc", "correct_gt_known",
)
# optional per-image fields (the synthetic benchmark's mechanism measures): NULL when a record lacks them
MECHANISM_RECORD_FIELDS: tuple[str, ...] = (
    "cam_mass_part", "cam_mass_body", "cam_mass_background", "context_preferred",
    "correct_top1_cls_context_swapped",
)
FINAL_COLUMNS = ["run_id", "protocol", "selection", "threshold_policy", "split", "name", "value",
                 "created_at"]
EPOCH_COLUMNS = ["run_id", "epoch", "split", "name", "value", "created_at"]


@dataclass(frozen=True)
class RunInfo:
    """A snapshot of one run row; JSON columns decoded, timestamps aware UTC."""

    id: str
    config_hash: str
    role: str
    profile: str
    variant: str
    dataset: str
    dataset_fingerprint: str | None
    seed: int
    config: dict[str, Any]
    status: str
    message: str | None
    git_commit: str | None
    device: str | None
    torch_version: str | None
    host: str | None
    pid: int | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    train_seconds: float | None
    eval_seconds: float | None
    artifacts_dir: str | None
    weights: Any
    labels: dict[str, list[str]]

    @property
    def short_id(self) -> str:
        """The first 12 characters of the id, as the CLI shows it."""
        return self.id[:12]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (timestamps as ISO 8601 strings)."""
        return {key: value.isoformat() if isinstance(value, datetime) else value
                for key, value in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class DatasetInfo:
    """A snapshot of one dataset row."""

    fingerprint: str
    name: str
    root: str | None
    meta: dict[str, Any]
    created_at: datetime


def utc_now() -> datetime:
    """The default clock: now, aware UTC."""
    return datetime.now(timezone.utc)


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def to_db_time(moment: datetime) -> datetime:
    """Aware (any zone) or naive-UTC datetime -> naive UTC, as the DateTime columns hold it."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def from_db_time(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(tzinfo=timezone.utc)


def db_float(value: Any) -> float | None:
    """A metric value as stored: float, with NaN as NULL (SQLite turns NaN into NULL anyway)."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def run_info(row: Run, folder: Path | None = None) -> RunInfo:
    """The row as a RunInfo; a relative artifacts_dir is resolved against ``folder`` (the store's)."""
    return RunInfo(
        id=row.id, config_hash=row.config_hash, role=row.role, profile=row.profile,
        variant=row.variant, dataset=row.dataset, dataset_fingerprint=row.dataset_fingerprint,
        seed=row.seed, config=json.loads(row.config), status=row.status, message=row.message,
        git_commit=row.git_commit, device=row.device, torch_version=row.torch_version,
        host=row.host, pid=row.pid, heartbeat_at=from_db_time(row.heartbeat_at),
        created_at=from_db_time(row.created_at), started_at=from_db_time(row.started_at),
        finished_at=from_db_time(row.finished_at), train_seconds=row.train_seconds,
        eval_seconds=row.eval_seconds, artifacts_dir=from_stored(row.artifacts_dir, folder),
        weights=None if row.weights is None else json.loads(row.weights),
        labels=json.loads(row.labels),
    )


def dataset_info(row: Dataset) -> DatasetInfo:
    return DatasetInfo(fingerprint=row.fingerprint, name=row.name, root=row.root,
                       meta=json.loads(row.meta), created_at=from_db_time(row.created_at))


def check_choice(value: str, choices: Iterable[str], what: str) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, got {value!r}")


def check_keys(given: Iterable[str], allowed: Iterable[str], what: str) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)} (allowed: {', '.join(allowed)})")


def check_fits(table: Table, values: Mapping[str, Any], what: str) -> None:
    """Refuse values a column cannot hold on every backend (SQLite would store them anyway).

    Raises:
        StoreError: a string longer than its VARCHAR(n) or an integer outside 32 bits.
    """
    for key, value in values.items():
        kind = table.c[key].type
        if isinstance(value, str) and isinstance(kind, String) and kind.length is not None:
            if len(value) > kind.length:
                raise StoreError(f"{what} {key} is {len(value)} characters long; the run store holds "
                                 f"at most {kind.length}: {value[:40]!r}...")
        elif isinstance(value, int) and isinstance(kind, Integer) and not _INT32[0] <= value <= _INT32[1]:
            raise StoreError(f"{what} {key}={value} does not fit the run store's 32-bit integer column")


def image_row(record: Mapping[str, Any], group: dict[str, str]) -> dict[str, Any]:
    """One per-image record as an image_records row (lists JSON-encoded, flags as bools)."""
    if not _IMAGE_FIELD_SET <= record.keys() <= _IMAGE_FIELD_SET | _MECHANISM_FIELD_SET:
        missing = sorted(_IMAGE_FIELD_SET - record.keys())
        extra = sorted(record.keys() - _IMAGE_FIELD_SET - _MECHANISM_FIELD_SET)
        raise ValueError(f"image record {record.get('image_id')!r}: missing {missing}, unknown {extra}")
    box = record["box"]
    image_id = str(record["image_id"])
    check_fits(ImageRecord.__table__, {"image_id": image_id}, "image record")
    return {
        **group,
        "image_id": image_id,
        "label": int(record["label"]),
        "top5": dumps([int(c) for c in record["top5"]]),
        "top5_scores": dumps([float(s) for s in record["top5_scores"]]),
        "box": None if box is None else dumps([float(v) for v in box]),
        "iou": db_float(record["iou"]),
        "correct_top1_cls": bool(record["correct_top1_cls"]),
        "correct_top5_cls": bool(record["correct_top5_cls"]),
        "correct_top1_loc": bool(record["correct_top1_loc"]),
        "correct_top5_loc": bool(record["correct_top5_loc"]),
        "correct_gt_known": bool(record["correct_gt_known"]),
        **{name: _optional(name, record.get(name)) for name in MECHANISM_RECORD_FIELDS},
    }


def _optional(name: str, value: Any) -> Any:
    """A mechanism field as its column holds it: a float (NULL for NaN) or a flag, None when absent."""
    if value is None:
        return None
    return db_float(value) if name.startswith("cam_mass_") else bool(value)


_IMAGE_FIELD_SET = frozenset(IMAGE_RECORD_FIELDS)
_MECHANISM_FIELD_SET = frozenset(MECHANISM_RECORD_FIELDS)


def decode_image_row(row: Any) -> tuple:
    """An image_records row with its JSON columns (top5, top5_scores, box) decoded."""
    image_id, label, top5, top5_scores, box, *rest = row
    return (image_id, label, json.loads(top5), json.loads(top5_scores),
            None if box is None else json.loads(box), *rest)


def to_frame(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    """A DataFrame of query rows; created_at becomes tz-aware UTC, value float (NULL -> NaN).

    A value that is not a number (a damaged row) is dropped with a StoreWarning.
    """
    frame = pd.DataFrame(rows, columns=columns)
    if "value" in frame:
        values = pd.to_numeric(frame["value"], errors="coerce").astype(float)
        bad = values.isna() & frame["value"].notna()
        for row in frame[bad].itertuples(index=False):
            warnings.warn(f"run {row.run_id}: metric {row.name!r} skipped, its stored value {row.value!r} "
                          "is not a number", StoreWarning, stacklevel=3)
        frame = frame[~bad].reset_index(drop=True)
        frame["value"] = values[~bad].reset_index(drop=True)
    if "created_at" in frame:
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame
