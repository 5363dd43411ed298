"""The run store's results: per-epoch and final metrics, and per-image records, as methods of
:class:`kdcicam.store.api.Store` (a mixin: every method runs in the store's own transactions)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from kdcicam.core.config import PROTOCOLS, SELECTIONS
from kdcicam.store.rows import (
    EPOCH_COLUMNS,
    FINAL_COLUMNS,
    IMAGE_RECORD_FIELDS,
    MECHANISM_RECORD_FIELDS,
    check_choice,
    check_fits,
    db_float,
    decode_image_row,
    image_row,
    to_frame,
)
from kdcicam.store.schema import EVAL_SPLITS, METRIC_SPLITS, THRESHOLD_POLICIES, EpochMetric, FinalMetric, ImageRecord


class ResultsMixin:
    """Metrics and per-image records. Needs the store's ``_tx``, ``_require_run``, ``_now`` and ``_text_order``."""

    def add_epoch_metrics(self, run_id: str, epoch: int, split: str, metrics: Mapping[str, float]) -> None:
        """Record one epoch's values (re-recording a name for the same epoch and split replaces it)."""
        check_choice(split, METRIC_SPLITS, "split")
        if not metrics:
            return

        for name in metrics:
            check_fits(EpochMetric.__table__, {"name": name}, "epoch metric")

        def op(session: Session) -> None:
            self._require_run(session, run_id, lock=True)
            session.execute(delete(EpochMetric).where(
                EpochMetric.run_id == run_id, EpochMetric.epoch == epoch, EpochMetric.split == split,
                EpochMetric.name.in_(list(metrics))))
            now = self._now()
            session.execute(insert(EpochMetric), [
                {"run_id": run_id, "epoch": int(epoch), "split": split, "name": name,
                 "value": db_float(value), "created_at": now}
                for name, value in metrics.items()])

        self._tx(op, write=True)

    def set_final_metrics(self, run_id: str, protocol: str, selection: str, threshold_policy: str,
                          split: str, metrics: Mapping[str, float]) -> None:
        """Record evaluated numbers; a name already stored for this group is replaced.

        Args:
            run_id: the run evaluated.
            protocol: "paper" | "standard".
            selection: checkpoint criterion: "top1_loc" | "gt_known_loc" | "top1_cls" | "last".
            threshold_policy: how θ was chosen: "fixed" | "val" | "oracle".
            split: "test" | "val".
            metrics: name -> value (e.g. top1_cls, top1_loc, gt_known_loc, maxboxacc_v2, theta).
        """
        check_choice(protocol, PROTOCOLS, "protocol")
        check_choice(selection, SELECTIONS, "selection")
        check_choice(threshold_policy, THRESHOLD_POLICIES, "threshold_policy")
        check_choice(split, EVAL_SPLITS, "split")
        if not metrics:
            return
        group = {"run_id": run_id, "protocol": protocol, "selection": selection,
                 "threshold_policy": threshold_policy, "split": split}

        for name in metrics:
            check_fits(FinalMetric.__table__, {"name": name}, "final metric")

        def op(session: Session) -> None:
            self._require_run(session, run_id, lock=True)
            session.execute(delete(FinalMetric).where(
                *(getattr(FinalMetric, key) == value for key, value in group.items()),
                FinalMetric.name.in_(list(metrics))))
            now = self._now()
            session.execute(insert(FinalMetric), [
                {**group, "name": name, "value": db_float(value), "created_at": now}
                for name, value in metrics.items()])

        self._tx(op, write=True)

    def final_metrics(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Final metrics in long format.

        Args:
            run_ids: restrict to these runs (full ids); None = every run.

        Returns:
            Columns run_id, protocol, selection, threshold_policy, split, name, value (NaN for a
            stored NaN), created_at (UTC).
        """
        ids = None if run_ids is None else list(run_ids)

        def op(session: Session) -> list[tuple]:
            table = FinalMetric.__table__
            query = select(*(table.c[col] for col in FINAL_COLUMNS)).order_by(
                *(self._text_order(table.c[col]) for col in FINAL_COLUMNS[:6]))
            if ids is not None:
                query = query.where(table.c.run_id.in_(ids))
            return [tuple(row) for row in session.execute(query)]

        return to_frame(self._tx(op, write=False), FINAL_COLUMNS)

    def epoch_metrics(self, run_id: str) -> pd.DataFrame:
        """One run's training curves in long format: run_id, epoch, split, name, value, created_at."""
        def op(session: Session) -> list[tuple]:
            table = EpochMetric.__table__
            query = (select(*(table.c[col] for col in EPOCH_COLUMNS))
                     .where(table.c.run_id == run_id)
                     .order_by(table.c.epoch, self._text_order(table.c.split),
                               self._text_order(table.c.name)))
            return [tuple(row) for row in session.execute(query)]

        return to_frame(self._tx(op, write=False), EPOCH_COLUMNS)

    # -- per-image records ----------------------------------------------------------------------

    def add_image_records(self, run_id: str, protocol: str, selection: str, split: str,
                          records: Iterable[Mapping[str, Any]], threshold_policy: str = "fixed") -> int:
        """Replace the per-image records of one (run, protocol, selection, split, θ policy) in one bulk insert.

        Args:
            run_id: the run evaluated.
            protocol: "paper" | "standard".
            selection: the checkpoint criterion evaluated.
            split: "test" | "val".
            records: dicts with exactly the keys of :data:`IMAGE_RECORD_FIELDS`; top5 and
                top5_scores are length-5 lists, box is [x0, y0, x1, y1] or None, iou a float or None.
            threshold_policy: how θ was chosen: "fixed" | "val" | "oracle".

        Returns:
            The number of records stored.
        """
        check_choice(protocol, PROTOCOLS, "protocol")
        check_choice(selection, SELECTIONS, "selection")
        check_choice(split, EVAL_SPLITS, "split")
        check_choice(threshold_policy, THRESHOLD_POLICIES, "threshold_policy")
        group = {"run_id": run_id, "protocol": protocol, "selection": selection, "split": split,
                 "threshold_policy": threshold_policy}
        rows = [image_row(record, group) for record in records]  # encode before taking the lock
        table = ImageRecord.__table__

        def op(session: Session) -> int:
            self._require_run(session, run_id, lock=True)  # two evaluators replace in turn, not mixed
            session.execute(delete(table).where(*(table.c[key] == value for key, value in group.items())))
            if rows:
                session.execute(insert(table), rows)  # executemany: one statement, many rows
            return len(rows)

        return self._tx(op, write=True)

    def get_image_records(self, run_id: str, protocol: str, selection: str, split: str,
                          threshold_policy: str = "fixed") -> pd.DataFrame:
        """The per-image records of one group, in insertion order.

        Returns:
            One row per image with the columns of :data:`IMAGE_RECORD_FIELDS` (lists decoded,
            box None when there was none, correctness flags as bool), and those of
            :data:`MECHANISM_RECORD_FIELDS` the group holds (synthetic benchmark, standard protocol).
        """
        table = ImageRecord.__table__
        columns = (*IMAGE_RECORD_FIELDS, *MECHANISM_RECORD_FIELDS)

        def op(session: Session) -> list[tuple]:
            query = (select(*(table.c[col] for col in columns))
                     .where(table.c.run_id == run_id, table.c.protocol == protocol,
                            table.c.selection == selection, table.c.split == split,
                            table.c.threshold_policy == threshold_policy)
                     .order_by(table.c.id))
            return [decode_image_row(row) for row in session.execute(query)]

        frame = to_frame(self._tx(op, write=False), list(columns))
        for col in IMAGE_RECORD_FIELDS[6:]:
            frame[col] = frame[col].astype(bool)
        empty = [col for col in MECHANISM_RECORD_FIELDS if frame[col].isna().all()]
        return frame.drop(columns=empty)
