"""Run store: schema and migrations, refusing stores it must not touch, every API, concurrency."""

from __future__ import annotations

import math
import multiprocessing
import os
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import OperationalError

from kdcicam.core.errors import StoreError
from kdcicam.store import (
    DEFAULT_DB_URL,
    IMAGE_RECORD_FIELDS,
    head_revision,
    open_store,
    resolve_db_url,
    sqlite_file,
)
from kdcicam.store import _open as store_open
from kdcicam.store import api as store_api
from kdcicam.store.schema import Base

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


class FakeClock:
    """A settable clock: ``clock.now`` is what the store sees as now."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db_path: Path, clock: FakeClock):
    with open_store(_url(db_path), clock=clock) as opened:
        yield opened


def _new_run(store, run_id: str = "abcdef0123456789", **overrides):
    fields = dict(config_hash="cfg" + run_id[:4], role="student", profile="smoke", variant="paper",
                  dataset="synthetic", seed=0, config={"profile": "smoke", "train": {"lr": 5e-4}})
    fields.update(overrides)
    return store.get_or_create_run(run_id, **fields)


def _record(i: int, **overrides) -> dict:
    record = dict(image_id=f"img_{i:05d}", label=i % 10, top5=[i % 10, 1, 2, 3, 4],
                  top5_scores=[0.5, 0.2, 0.1, 0.1, 0.1], box=[1.0, 2.0, 30.0, 40.0], iou=0.75,
                  correct_top1_cls=True, correct_top5_cls=True, correct_top1_loc=False,
                  correct_top5_loc=True, correct_gt_known=True)
    record.update(overrides)
    return record


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file in a folder, by name, with its bytes: 'left unchanged' means equal snapshots."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- opening, schema, migrations --------------------------------------------------------------


def test_fresh_store_has_head_revision_wal_busy_timeout_and_foreign_keys(store, db_path):
    assert head_revision() == "0004"
    raw = sqlite3.connect(db_path)
    assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("0004",)]
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # persistent, stored in the file
    raw.close()
    # busy_timeout and foreign_keys are per connection: look at one of the store's own.
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_migrations_create_exactly_the_orm_schema(store):
    with store._engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == []


def test_migrations_ship_inside_the_installed_package():
    folder = Path(store_open._migrations_dir())
    assert (folder / "env.py").is_file()
    assert (folder / "versions" / "0001_initial.py").is_file()
    assert folder.parent == Path(store_open.__file__).resolve().parent  # kdcicam/store/migrations


def test_reopening_keeps_data_and_revision(db_path, clock):
    with open_store(_url(db_path), clock=clock) as first:
        _new_run(first)
    with open_store(_url(db_path), clock=clock) as second:
        assert [run.id for run in second.list_runs()] == ["abcdef0123456789"]
    raw = sqlite3.connect(db_path)
    assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("0004",)]
    raw.close()


def test_newer_schema_is_refused_and_left_byte_identical(db_path, clock):
    with open_store(_url(db_path), clock=clock) as store:
        _new_run(store)
    raw = sqlite3.connect(db_path)
    raw.execute("UPDATE alembic_version SET version_num = '9999_future'")
    raw.commit()
    raw.close()  # last connection: SQLite checkpoints the WAL into the file and removes it
    before = _snapshot(db_path.parent)
    with pytest.raises(StoreError) as err:
        open_store(_url(db_path))
    assert str(err.value) == (f"{db_path} was written by a newer kdcicam (schema 9999_future); "
                              "upgrade kdcicam")
    assert _snapshot(db_path.parent) == before


def test_newer_schema_is_refused_by_migrate_itself(db_path, clock):
    # The second line of defence (under the write lock), for a store that changed after the
    # file check: it must refuse before alembic touches anything.
    with open_store(_url(db_path), clock=clock):
        pass
    raw = sqlite3.connect(db_path)
    raw.execute("UPDATE alembic_version SET version_num = '9999_future'")
    raw.commit()
    raw.close()
    engine = store_open.create_store_engine(_url(db_path))
    try:
        with pytest.raises(StoreError, match="newer kdcicam"):
            store_open.migrate(engine, "runs.db")
    finally:
        engine.dispose()
    raw = sqlite3.connect(db_path)
    assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("9999_future",)]
    raw.close()


def test_non_sqlite_file_is_refused_and_unchanged(db_path):
    db_path.write_bytes(b"name,value\nlr,0.0005\n")
    before = _snapshot(db_path.parent)
    with pytest.raises(StoreError) as err:
        open_store(_url(db_path))
    assert "is not a SQLite database" in str(err.value)
    assert "\n" not in str(err.value)
    assert _snapshot(db_path.parent) == before


def test_foreign_sqlite_database_is_refused_and_unchanged(db_path):
    raw = sqlite3.connect(db_path)
    raw.execute("CREATE TABLE photos (id INTEGER)")
    raw.commit()
    raw.close()
    before = _snapshot(db_path.parent)
    with pytest.raises(StoreError, match=r"not a kdcicam run store \(tables: photos\)"):
        open_store(_url(db_path))
    assert _snapshot(db_path.parent) == before


def test_empty_file_becomes_a_store(db_path):
    db_path.touch()  # SQLite treats a 0-byte file as an empty database
    with open_store(_url(db_path)) as store:
        assert store.list_runs() == []


def test_folder_path_is_refused(tmp_path):
    with pytest.raises(StoreError, match="is a folder"):
        open_store(_url(tmp_path))


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(_url(tmp_path / "nope" / "runs.db"))
    assert not (tmp_path / "nope").exists()


def test_create_false_refuses_a_missing_store(db_path):
    with pytest.raises(StoreError, match="no run store at"):
        open_store(_url(db_path), create=False)
    assert not db_path.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions; see the os.access test")
def test_read_only_folder_is_refused(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(StoreError, match="not writable"):
            open_store(_url(tmp_path / "runs.db"))
    finally:
        tmp_path.chmod(0o755)
    assert list(tmp_path.iterdir()) == []


def test_read_only_folder_is_refused_as_seen_by_os_access(tmp_path, monkeypatch):
    # Runs as root too: pretend the OS says the folder is not writable.
    real_access = os.access
    monkeypatch.setattr(store_open.os, "access",
                        lambda path, mode: Path(path) != tmp_path and real_access(path, mode))
    with pytest.raises(StoreError) as err:
        open_store(_url(tmp_path / "runs.db"))
    assert str(err.value) == (f"cannot create run store {tmp_path / 'runs.db'}: "
                              f"folder {tmp_path} is not writable")
    assert list(tmp_path.iterdir()) == []


def test_existing_store_in_read_only_folder_is_refused(db_path, monkeypatch):
    with open_store(_url(db_path)):
        pass
    real_access = os.access
    monkeypatch.setattr(store_open.os, "access",
                        lambda path, mode: Path(path) != db_path.parent and real_access(path, mode))
    with pytest.raises(StoreError, match="-wal/-shm"):
        open_store(_url(db_path))


def test_in_memory_store_works():
    with open_store("sqlite://") as store:
        _new_run(store)
        assert len(store.list_runs()) == 1


def test_resolve_db_url_precedence():
    assert resolve_db_url(None, None) == DEFAULT_DB_URL == "sqlite:///runs.db"
    assert resolve_db_url("a.db", "b.db") == "sqlite:///a.db"  # --db wins over KDCICAM_DB
    assert resolve_db_url(None, "b.db") == "sqlite:///b.db"
    assert resolve_db_url("", "  ") == DEFAULT_DB_URL  # empty values count as unset
    assert resolve_db_url(None, "postgresql://u@h/db") == "postgresql://u@h/db"


def test_sqlite_file():
    assert sqlite_file("sqlite:///runs.db") == Path("runs.db")
    assert sqlite_file("sqlite:////abs/runs.db") == Path("/abs/runs.db")
    assert sqlite_file("sqlite://") is None
    assert sqlite_file("postgresql://u@h/db") is None
    with pytest.raises(StoreError, match="not a database URL"):
        sqlite_file("not a url")


# -- datasets and runs --------------------------------------------------------------------------


def test_dataset_round_trip_keeps_the_first_record(store):
    first = store.ensure_dataset("fp1", "synthetic", "/data/synth", {"classes": 10, "seed": 0})
    again = store.ensure_dataset("fp1", "other", "/elsewhere", {})
    assert first == again
    assert (again.name, again.root, again.meta, again.created_at) == ("synthetic", "/data/synth",
                                                                      {"classes": 10, "seed": 0}, T0)
    assert store.get_dataset("fp1") == first
    assert store.get_dataset("nope") is None


def test_run_round_trip_of_every_field(store):
    info = store.get_or_create_run(
        "abcdef0123456789", config_hash="c1", role="distilled", profile="paper", variant="reference",
        dataset="cub", dataset_fingerprint="fp1", seed=3, config={"b": [1, 2], "a": None},
        git_commit="deadbeef", device="cuda:0", torch_version="2.4.0", host="box",
        artifacts_dir="/runs/abc", weights={"backbone": "vgg16.pth"}, labels={"table3": ["kd"]})
    assert info.status == "pending"
    assert info.config == {"a": None, "b": [1, 2]}
    assert info.weights == {"backbone": "vgg16.pth"}
    assert info.labels == {"table3": ["kd"]}
    assert info.created_at == T0
    assert (info.role, info.seed, info.dataset_fingerprint, info.git_commit, info.device) == (
        "distilled", 3, "fp1", "deadbeef", "cuda:0")
    assert info.short_id == "abcdef012345"
    assert store.get_run("abcdef0123456789") == info
    # An existing run comes back unchanged, whatever else is passed.
    assert store.get_or_create_run("abcdef0123456789", config_hash="c1", role="student") == info
    assert info.to_dict()["created_at"] == "2025-03-01T12:00:00+00:00"


def test_run_config_may_be_given_as_json_text(store):
    assert _new_run(store, config='{"x": 1}').config == {"x": 1}


def test_get_or_create_run_rejects_misuse(store):
    _new_run(store)
    with pytest.raises(ValueError, match="exists with config_hash"):
        store.get_or_create_run("abcdef0123456789", config_hash="other")
    with pytest.raises(ValueError, match="needs fields: role"):
        store.get_or_create_run("0000aaaa", config_hash="c", profile="p", variant="v", dataset="d",
                                seed=0, config={})
    with pytest.raises(ValueError, match="unknown run field: colour"):
        store.get_or_create_run("0000aaaa", colour="red")
    with pytest.raises(StoreError, match="no run matches 'nope'"):
        store.get_run("nope")


def test_resolve_run_by_id_and_prefix(store):
    for run_id in ("aaaa1111000000", "aaaa2222000000", "bbbb3333000000"):
        _new_run(store, run_id)
    assert store.resolve_run("bbbb3333000000").id == "bbbb3333000000"
    assert store.resolve_run("bbbb").id == "bbbb3333000000"
    assert store.resolve_run("aaaa2").id == "aaaa2222000000"
    with pytest.raises(StoreError) as err:
        store.resolve_run("aaaa")
    assert str(err.value) == "'aaaa' matches 2 runs (aaaa11110000, aaaa22220000); give more characters"
    with pytest.raises(StoreError, match="^no run matches 'cccc'$"):
        store.resolve_run("cccc")
    with pytest.raises(StoreError, match="at least 4 characters"):
        store.resolve_run("bbb")  # unique, but too short to be a deliberate prefix
    with pytest.raises(StoreError, match="no run matches"):
        store.resolve_run("aa%a")  # LIKE wildcards are escaped


def test_ambiguous_prefix_lists_at_most_five(store):
    for i in range(7):
        _new_run(store, f"dddd{i}0000000")
    with pytest.raises(StoreError) as err:
        store.resolve_run("dddd")
    message = str(err.value)
    assert message.startswith("'dddd' matches 7 runs (dddd00000000, dddd10000000, dddd20000000, "
                              "dddd30000000, dddd40000000, ...)")


def test_list_runs_filters_and_order(store, clock):
    _new_run(store, "run0aaaa", role="cls_teacher")
    clock.advance(1)
    _new_run(store, "run1bbbb", role="student")
    clock.advance(1)
    _new_run(store, "run2cccc", role="student")
    store.claim_run("run1bbbb", pid=1, host="h")
    store.add_labels("run1bbbb", "table3", "base")
    store.add_labels("run2cccc", "table3", "kd")
    store.add_labels("run2cccc", "table4", "kd")
    assert [r.id for r in store.list_runs()] == ["run0aaaa", "run1bbbb", "run2cccc"]
    assert [r.id for r in store.list_runs(role="student")] == ["run1bbbb", "run2cccc"]
    assert [r.id for r in store.list_runs(status="running")] == ["run1bbbb"]
    assert [r.id for r in store.list_runs(labels_contain="table3")] == ["run1bbbb", "run2cccc"]
    assert [r.id for r in store.list_runs(labels_contain=("table3", "kd"))] == ["run2cccc"]
    assert store.list_runs(status="pending", role="student") == [store.get_run("run2cccc")]
    with pytest.raises(ValueError, match="status must be one of"):
        store.list_runs(status="done")


def test_add_labels_is_idempotent(store):
    _new_run(store)
    store.add_labels("abcdef0123456789", "table3", "base")
    labels = store.add_labels("abcdef0123456789", "table3", "base")
    assert labels == {"table3": ["base"]}
    assert store.add_labels("abcdef0123456789", "table3", "kd") == {"table3": ["base", "kd"]}
    assert store.get_run("abcdef0123456789").labels == {"table3": ["base", "kd"]}


# -- lifecycle ----------------------------------------------------------------------------------


def test_lifecycle_claim_heartbeat_fail_reclaim_finish(store, clock):
    run_id = _new_run(store).id
    assert store.claim_run(run_id, pid=11, host="a", device="cpu", git_commit="abc") is True
    info = store.get_run(run_id)
    assert (info.status, info.pid, info.host, info.device, info.git_commit) == (
        "running", 11, "a", "cpu", "abc")
    assert info.started_at == info.heartbeat_at == T0
    assert store.claim_run(run_id, pid=12, host="b") is False  # fresh heartbeat: still owned
    clock.advance(30)
    assert store.heartbeat(run_id, pid=12) is False  # not the owner
    assert store.heartbeat(run_id, pid=11) is True
    assert store.get_run(run_id).heartbeat_at == T0 + timedelta(seconds=30)
    failed = store.fail_run(run_id, "loss diverged at epoch 3")
    assert (failed.status, failed.message, failed.finished_at) == (
        "failed", "loss diverged at epoch 3", T0 + timedelta(seconds=30))
    assert store.heartbeat(run_id) is False  # not running any more
    assert store.claim_run(run_id, pid=12, host="b") is True  # a failed run can be retried
    retried = store.get_run(run_id)
    assert (retried.pid, retried.message, retried.finished_at) == (12, None, None)
    clock.advance(100)
    done = store.finish_run(run_id, train_seconds=90.5, eval_seconds=9.5)
    assert (done.status, done.train_seconds, done.eval_seconds) == ("finished", 90.5, 9.5)
    assert done.finished_at == T0 + timedelta(seconds=130)
    assert store.claim_run(run_id, pid=13, host="c") is False  # finished runs are never retaken


def test_lifecycle_misuse(store):
    run_id = _new_run(store).id
    with pytest.raises(ValueError, match="unknown timing: epochs"):
        store.finish_run(run_id, epochs=3)
    with pytest.raises(ValueError, match="unknown claim field: status"):
        store.claim_run(run_id, pid=1, host="h", status="finished")
    with pytest.raises(StoreError, match="no run matches 'nope'"):
        store.claim_run("nope", pid=1, host="h")
    with pytest.raises(StoreError, match="no run matches 'nope'"):
        store.fail_run("nope", "x")


def test_stale_heartbeat_lets_a_new_claimer_take_a_dead_run(store, clock):
    run_id = _new_run(store).id
    assert store.claim_run(run_id, pid=1, host="a")  # heartbeat at t=0
    clock.advance(100)
    assert store.heartbeat(run_id, pid=1)  # heartbeat at t=100
    clock.advance(119)  # t=219: heartbeat is 119 s old < 120 s
    assert store.claim_run(run_id, pid=2, host="b", stale_after_s=120) is False
    clock.advance(2)  # t=221: 121 s old > 120 s, the owner is presumed dead
    assert store.claim_run(run_id, pid=2, host="b", stale_after_s=120) is True
    assert store.get_run(run_id).pid == 2
    assert store.heartbeat(run_id, pid=1) is False  # the old owner learns it lost the run


def _claim_worker(url: str, run_ids: list[str], barrier, results) -> None:
    store = open_store(url)
    won = []
    for run_id in run_ids:
        barrier.wait(timeout=60)  # both processes claim each run at the same moment
        won.append(store.claim_run(run_id, pid=os.getpid(), host="test"))
    store.close()
    results.put((os.getpid(), won))


def test_claim_is_atomic_across_two_processes(db_path):
    run_ids = [f"race{i}000000" for i in range(5)]
    with open_store(_url(db_path)) as store:
        for run_id in run_ids:
            _new_run(store, run_id)
    # fork: the children need not re-import pandas/sqlalchemy (seconds on a busy 2-core box); each
    # still opens its own connection, exactly as two separate `kdcicam train` processes would.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_claim_worker, args=(_url(db_path), run_ids, barrier, results))
             for _ in range(2)]
    for proc in procs:
        proc.start()
    outcomes = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    (pid_a, won_a), (pid_b, won_b) = outcomes.items()
    assert [a + b for a, b in zip(won_a, won_b)] == [1] * len(run_ids)  # exactly one winner each
    with open_store(_url(db_path)) as store:
        owners = [store.get_run(run_id).pid for run_id in run_ids]
    assert owners == [pid_a if a else pid_b for a in won_a]


# -- metrics ------------------------------------------------------------------------------------


def test_epoch_metrics_round_trip_and_replace(store, clock):
    run_id = _new_run(store).id
    store.add_epoch_metrics(run_id, 0, "train", {"loss": 2.0, "top1_cls": 0.1})
    store.add_epoch_metrics(run_id, 0, "val", {"top1_cls": 0.15})
    store.add_epoch_metrics(run_id, 1, "train", {"loss": 1.5})
    clock.advance(5)
    store.add_epoch_metrics(run_id, 1, "train", {"loss": 1.25, "grad_norm": float("nan")})  # resumed epoch
    store.add_epoch_metrics(run_id, 2, "train", {})  # nothing to record: no-op
    frame = store.epoch_metrics(run_id)
    rows = list(frame[["epoch", "split", "name"]].itertuples(index=False, name=None))
    assert rows == [(0, "train", "loss"), (0, "train", "top1_cls"), (0, "val", "top1_cls"),
                    (1, "train", "grad_norm"), (1, "train", "loss")]
    assert list(frame["value"][:3]) == [2.0, 0.1, 0.15]
    assert math.isnan(frame["value"][3])
    assert frame["value"][4] == 1.25
    assert frame["created_at"][4] == T0 + timedelta(seconds=5)
    with pytest.raises(ValueError, match="split must be one of train, val"):
        store.add_epoch_metrics(run_id, 0, "test", {"loss": 1.0})
    with pytest.raises(StoreError, match="no run matches"):
        store.add_epoch_metrics("nope", 0, "train", {"loss": 1.0})
    assert store.epoch_metrics("nope").empty


def test_set_final_metrics_replaces_per_name(store):
    run_id = _new_run(store).id
    other = _new_run(store, "ffff0000").id
    store.set_final_metrics(run_id, "paper", "last", "fixed", "test", {"top1_cls": 0.5, "top1_loc": 0.3})
    store.set_final_metrics(run_id, "paper", "last", "fixed", "test", {"top1_cls": 0.6})  # re-evaluated
    store.set_final_metrics(run_id, "paper", "last", "oracle", "test", {"top1_loc": 0.4, "theta": 0.2})
    store.set_final_metrics(other, "standard", "top1_loc", "val", "val", {"maxboxacc_v2": float("nan")})
    mine = store.final_metrics([run_id])
    rows = list(mine[["threshold_policy", "name", "value"]].itertuples(index=False, name=None))
    assert rows == [("fixed", "top1_cls", 0.6), ("fixed", "top1_loc", 0.3),
                    ("oracle", "theta", 0.2), ("oracle", "top1_loc", 0.4)]
    everything = store.final_metrics()
    assert len(everything) == 5
    assert math.isnan(everything[everything["run_id"] == other]["value"].iloc[0])
    assert store.final_metrics([]).empty
    assert list(store.final_metrics([]).columns) == list(everything.columns)


def test_set_final_metrics_validates_its_keys(store):
    run_id = _new_run(store).id
    with pytest.raises(ValueError, match="protocol must be one of paper, standard"):
        store.set_final_metrics(run_id, "wsol", "last", "fixed", "test", {"x": 1.0})
    with pytest.raises(ValueError, match="selection must be one of"):
        store.set_final_metrics(run_id, "paper", "best", "fixed", "test", {"x": 1.0})
    with pytest.raises(ValueError, match="threshold_policy must be one of fixed, val, oracle"):
        store.set_final_metrics(run_id, "paper", "last", "best", "test", {"x": 1.0})
    with pytest.raises(ValueError, match="split must be one of test, val"):
        store.set_final_metrics(run_id, "paper", "last", "fixed", "train", {"x": 1.0})


# -- per-image records --------------------------------------------------------------------------


def test_image_records_round_trip_and_replace(store):
    run_id = _new_run(store).id
    records = [_record(0), _record(1, box=None, iou=None, correct_top1_cls=False, correct_gt_known=False)]
    assert store.add_image_records(run_id, "paper", "last", "test", records) == 2
    store.add_image_records(run_id, "standard", "last", "test", [_record(7)])  # another group
    frame = store.get_image_records(run_id, "paper", "last", "test")
    assert list(frame.columns) == list(IMAGE_RECORD_FIELDS)
    _assert_records_equal(frame, records)
    assert frame["correct_top1_cls"].dtype == bool
    # Re-evaluation replaces the whole group, and only that group.
    store.add_image_records(run_id, "paper", "last", "test", [_record(5)])
    assert list(store.get_image_records(run_id, "paper", "last", "test")["image_id"]) == ["img_00005"]
    assert list(store.get_image_records(run_id, "standard", "last", "test")["image_id"]) == ["img_00007"]
    empty = store.get_image_records(run_id, "paper", "top1_loc", "test")
    assert empty.empty and list(empty.columns) == list(IMAGE_RECORD_FIELDS)


def _assert_records_equal(frame, records) -> None:
    """Field by field: a None iou comes back as NaN (the column is float)."""
    got_records = frame.to_dict("records")
    assert len(got_records) == len(records)
    for got, want in zip(got_records, records):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if key == "iou" and value is None:
                assert math.isnan(got[key])
            else:
                assert got[key] == value, key


def test_image_records_reject_wrong_keys(store):
    run_id = _new_run(store).id
    bad = _record(0)
    del bad["iou"]
    bad["gt_box"] = [0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"missing \['iou'\], unknown \['gt_box'\]"):
        store.add_image_records(run_id, "paper", "last", "test", [bad])


def test_bulk_insert_of_6000_image_records_reads_back_in_order(store):
    # how fast: benchmarks/store_insert.py
    run_id = _new_run(store).id
    store.add_image_records(run_id, "paper", "last", "test", [_record(i) for i in range(6000)])
    frame = store.get_image_records(run_id, "paper", "last", "test")
    assert len(frame) == 6000
    assert frame["image_id"].iloc[5999] == "img_05999"
    assert frame["top5"].iloc[13] == [3, 1, 2, 3, 4]  # 13 % 10 = 3


# -- locking ------------------------------------------------------------------------------------


def test_locked_database_is_retried_then_succeeds(db_path, monkeypatch):
    monkeypatch.setattr(store_api, "_LOCK_BACKOFF_S", 0.05)
    with open_store(_url(db_path), busy_timeout_s=0.05) as store:
        run_id = _new_run(store).id
        holder = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's long write transaction
        release = threading.Timer(0.3, holder.execute, args=("COMMIT",))
        release.start()
        try:
            # attempts at ~0, 0.1, 0.25, 0.5 s...: the first fail on the lock, a later one passes
            assert store.claim_run(run_id, pid=1, host="h") is True
        finally:
            release.join()
            holder.close()


def test_database_locked_for_good_is_one_store_error(db_path, monkeypatch):
    monkeypatch.setattr(store_api, "_LOCK_BACKOFF_S", 0.01)
    with open_store(_url(db_path), busy_timeout_s=0.02) as store:
        run_id = _new_run(store).id
        holder = sqlite3.connect(db_path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError) as err:
                store.heartbeat(run_id)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    assert str(err.value) == f"run store {_url(db_path)}: database is locked"


def test_non_lock_operational_errors_are_not_retried(store, monkeypatch):
    calls = []

    def broken(session):
        calls.append(1)
        raise OperationalError("SELECT 1", {}, Exception("disk I/O error"))

    with pytest.raises(StoreError, match="disk I/O error"):
        store._tx(broken, write=False)
    assert calls == [1]
