"""The run store's tables (SQLAlchemy 2.0 typed declarative).

One row of :class:`Run` per trained model; its metrics in long format (:class:`EpochMetric`,
:class:`FinalMetric`), its per-image evaluation records (:class:`ImageRecord`) and the datasets it
was trained on (:class:`Dataset`). JSON payloads are stored as text the store serialises itself, so
the bytes are canonical (sorted keys), identical on SQLite and PostgreSQL, and readable with any
client (``psql``, ``sqlite3``).

Timestamps are naive UTC ``DateTime`` columns (PostgreSQL: ``timestamp without time zone``, so the
server's and session's time zone never shift them); the API hands them out as aware UTC datetimes.
PostgreSQL enforces the ``String(n)`` lengths and 32-bit ``Integer`` that SQLite ignores; the API
checks them on both backends. The migrations in ``kdcicam/store/migrations`` create exactly these
tables (a test compares them, on each backend).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kdcicam.core.lifecycle import RUN_STATUSES  # noqa: F401 - the store's vocabulary, defined in core

THRESHOLD_POLICIES: tuple[str, ...] = ("fixed", "val", "oracle")
# epoch metrics: "val" / "test_decision" = the split whose numbers picked checkpoints (eval.select_on;
# a select_on="test" run also records "val", unused); "test_audit" = test numbers no decision read
METRIC_SPLITS: tuple[str, ...] = ("train", "val", "test_decision", "test_audit")
EVAL_SPLITS: tuple[str, ...] = ("test", "val")  # final metrics and image records


class Base(DeclarativeBase):
    pass


class Dataset(Base):
    """A dataset a run was trained on, keyed by its content fingerprint."""

    __tablename__ = "datasets"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    root: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[str] = mapped_column(Text, default="{}")  # JSON: generator params or index-file hashes
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Run(Base):
    """One trained model (student, cls teacher, loc teacher or distilled student) and its lifecycle."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'running', 'finished', 'failed')", name="ck_runs_status"),
        Index("ix_runs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # config hash + dataset + seed
    config_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(32))
    profile: Mapped[str] = mapped_column(String(32))
    variant: Mapped[str] = mapped_column(String(32))
    dataset: Mapped[str] = mapped_column(String(64))
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(64))  # soft link to datasets
    seed: Mapped[int] = mapped_column(Integer)
    config: Mapped[str] = mapped_column(Text)  # JSON of the resolved RunConfig
    status: Mapped[str] = mapped_column(String(16), default="pending")
    message: Mapped[str | None] = mapped_column(Text)  # failure reason
    git_commit: Mapped[str | None] = mapped_column(String(64))
    device: Mapped[str | None] = mapped_column(String(64))
    torch_version: Mapped[str | None] = mapped_column(String(64))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    train_seconds: Mapped[float | None] = mapped_column(Float)
    eval_seconds: Mapped[float | None] = mapped_column(Float)
    artifacts_dir: Mapped[str | None] = mapped_column(Text)  # checkpoints + records
    weights: Mapped[str | None] = mapped_column(Text)  # JSON: pretrained weights loaded, or random init
    labels: Mapped[str] = mapped_column(Text, default="{}")  # JSON: {"table3": ["base"]}


class EpochMetric(Base):
    """One training-curve value: (run, epoch, split, name) -> value."""

    __tablename__ = "epoch_metrics"
    __table_args__ = (
        UniqueConstraint("run_id", "epoch", "split", "name", name="uq_epoch_metrics"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("runs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)  # NULL = NaN (SQLite cannot store NaN)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class FinalMetric(Base):
    """One evaluated number of a finished run; re-evaluating replaces it."""

    __tablename__ = "final_metrics"
    __table_args__ = (
        UniqueConstraint("run_id", "protocol", "selection", "threshold_policy", "split", "name",
                         name="uq_final_metrics"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("runs.id", ondelete="CASCADE"))
    protocol: Mapped[str] = mapped_column(String(16))  # paper | standard
    selection: Mapped[str] = mapped_column(String(16))  # checkpoint criterion: top1_loc | ... | last
    threshold_policy: Mapped[str] = mapped_column(String(16))  # fixed | val | oracle
    split: Mapped[str] = mapped_column(String(16))  # test | val
    name: Mapped[str] = mapped_column(String(64))  # top1_cls, top1_loc, gt_known_loc, theta, ...
    value: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class ImageRecord(Base):
    """One evaluated image of one (run, protocol, selection, threshold policy, split); written in bulk."""

    __tablename__ = "image_records"
    __table_args__ = (
        Index("ix_image_records_group", "run_id", "protocol", "selection", "split", "threshold_policy"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("runs.id", ondelete="CASCADE"))
    protocol: Mapped[str] = mapped_column(String(16))
    selection: Mapped[str] = mapped_column(String(16))
    split: Mapped[str] = mapped_column(String(16))
    # fixed | val | oracle (revision 0002; records stored before it are the fixed θ's)
    threshold_policy: Mapped[str] = mapped_column(String(16), server_default="fixed")
    image_id: Mapped[str] = mapped_column(String(255))
    label: Mapped[int] = mapped_column(Integer)
    top5: Mapped[str] = mapped_column(Text)  # JSON list of 5 class indices, best first
    top5_scores: Mapped[str] = mapped_column(Text)  # JSON list of their scores
    box: Mapped[str | None] = mapped_column(Text)  # JSON [x0, y0, x1, y1] of the predicted box
    iou: Mapped[float | None] = mapped_column(Float)  # best IoU with a ground-truth box
    correct_top1_cls: Mapped[bool] = mapped_column(Boolean)
    correct_top5_cls: Mapped[bool] = mapped_column(Boolean)
    correct_top1_loc: Mapped[bool] = mapped_column(Boolean)
    correct_top5_loc: Mapped[bool] = mapped_column(Boolean)
    correct_gt_known: Mapped[bool] = mapped_column(Boolean)
    # synthetic benchmark, standard protocol (revision 0004; NULL elsewhere): kdcicam/evaluation/mechanism.py
    cam_mass_part: Mapped[float | None] = mapped_column(Float)
    cam_mass_body: Mapped[float | None] = mapped_column(Float)
    cam_mass_background: Mapped[float | None] = mapped_column(Float)
    context_preferred: Mapped[bool | None] = mapped_column(Boolean)
    correct_top1_cls_context_swapped: Mapped[bool | None] = mapped_column(Boolean)


# a run's result tables, by the key a run dump names them with (kdcicam.store.transfer); a run's
# results are exactly their rows with its run_id
RESULT_MODELS = {"epoch_metrics": EpochMetric, "final_metrics": FinalMetric, "image_records": ImageRecord}
