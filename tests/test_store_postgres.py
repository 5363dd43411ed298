"""Run store on PostgreSQL: the SQLite store's behaviour, on a real server these tests start.

The session fixture ``server`` initdb's and starts a throwaway PostgreSQL (tests/pg_server.py); each
test gets a fresh, empty database. Without the server binaries or psycopg every test here SKIPs,
naming what is missing; with ``KDCICAM_REQUIRE_POSTGRES=1`` (CI) it FAILs instead.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import threading
import time
import traceback
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pg_server import PgServer, Unavailable, start_server
from sqlalchemy.engine import make_url

from kdcicam.core.errors import StoreError
from kdcicam.store import IMAGE_RECORD_FIELDS, head_revision, open_store
from kdcicam.store import api as store_api
from kdcicam.store.schema import Base

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
RUN = "abcdef0123456789"


class FakeClock:
    """A settable clock: ``clock.now`` is what the store sees as now."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="session")
def server():
    try:
        started = start_server()
    except Unavailable as exc:
        if os.environ.get("KDCICAM_REQUIRE_POSTGRES"):
            pytest.fail(f"KDCICAM_REQUIRE_POSTGRES is set but no PostgreSQL server could start: {exc}")
        pytest.skip(f"no PostgreSQL server for these tests: {exc}")
    yield started
    started.stop()


@pytest.fixture
def pg_url(server: PgServer) -> str:
    """A fresh, empty database on the test server."""
    return server.new_database()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(pg_url: str, clock: FakeClock):
    with open_store(pg_url, clock=clock) as opened:
        yield opened


def _new_run(store, run_id: str = RUN, **overrides):
    fields = dict(config_hash="cfg" + run_id[:4], role="student", profile="smoke", variant="paper",
                  dataset="synthetic", seed=0, config={"profile": "smoke", "train": {"lr": 5e-4}})
    fields.update(overrides)
    return store.get_or_create_run(run_id, **fields)


def _record(i: int, prefix: str = "img", **overrides) -> dict:
    record = dict(image_id=f"{prefix}_{i:05d}", label=i % 10, top5=[i % 10, 1, 2, 3, 4],
                  top5_scores=[0.5, 0.2, 0.1, 0.1, 0.1], box=[1.0, 2.0, 30.0, 40.0], iou=0.75,
                  correct_top1_cls=True, correct_top5_cls=True, correct_top1_loc=False,
                  correct_top5_loc=True, correct_gt_known=True)
    record.update(overrides)
    return record


def _database(url: str) -> str:
    return make_url(url).database


def _snapshot(server: PgServer, url: str) -> dict:
    """Every column of every table, and every row of the store's tables: 'unchanged' = equal."""
    with server.connect(_database(url)) as conn:
        columns = conn.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                               "WHERE table_schema = 'public' ORDER BY 1, 2").fetchall()
        tables = sorted({row[0] for row in columns})
        rows = {table: conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall() for table in tables}
    return {"columns": columns, "rows": rows}


def _start_method_context():
    # fork: the children need not re-import pandas/sqlalchemy (seconds on a busy 2-core box); each
    # still opens its own connections, exactly as separate `kdcicam train` processes would.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


# -- opening, schema, migrations --------------------------------------------------------------


def test_fresh_store_is_at_head_with_exactly_the_orm_schema(store, server, pg_url):
    assert head_revision() == "0004"
    with server.connect(_database(pg_url)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0004",)]
        kinds = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = 'runs'").fetchall())
    assert kinds["heartbeat_at"] == "timestamp without time zone"  # naive UTC, as on SQLite
    assert kinds["config"] == "text"  # JSON as canonical text, the same bytes as on SQLite
    with store._engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "30s"  # the busy timeout
        assert conn.exec_driver_sql("SHOW transaction_isolation").scalar() == "read committed"
    assert store._engine.dialect.driver == "psycopg"


def test_bare_postgresql_url_means_psycopg_3(server):
    url = server.new_database().replace("postgresql+psycopg://", "postgresql://")
    with open_store(url) as store:
        assert store._engine.dialect.driver == "psycopg"
        assert _new_run(store).status == "pending"


def test_reopening_keeps_data_and_revision(pg_url, server, clock):
    with open_store(pg_url, clock=clock) as first:
        _new_run(first)
    with open_store(pg_url, clock=clock) as second:
        assert [run.id for run in second.list_runs()] == [RUN]
    with server.connect(_database(pg_url)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0004",)]


def test_newer_schema_is_refused_and_left_unchanged(pg_url, server, clock):
    with open_store(pg_url, clock=clock) as store:
        _new_run(store)
    with server.connect(_database(pg_url)) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
    before = _snapshot(server, pg_url)
    with pytest.raises(StoreError) as err:
        open_store(pg_url)
    assert str(err.value) == f"{pg_url} was written by a newer kdcicam (schema 9999_future); upgrade kdcicam"
    assert _snapshot(server, pg_url) == before
    assert before["rows"]["alembic_version"] == [("9999_future",)]


def test_foreign_database_is_refused_and_unchanged(pg_url, server):
    with server.connect(_database(pg_url)) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER)")
    before = _snapshot(server, pg_url)
    with pytest.raises(StoreError) as err:
        open_store(pg_url)
    assert str(err.value) == f"{pg_url} is a PostgreSQL database but not a kdcicam run store (tables: photos)"
    assert _snapshot(server, pg_url) == before  # in particular, no alembic_version table


def test_create_false_refuses_an_empty_database_and_creates_nothing(pg_url, server):
    with pytest.raises(StoreError) as err:
        open_store(pg_url, create=False)
    assert str(err.value) == f"no run store at {pg_url} (nothing has been trained with this --db yet)"
    assert _snapshot(server, pg_url)["columns"] == []


def test_unreachable_server_is_one_store_error_without_the_password():
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")
    import socket

    with socket.socket() as sock:  # a port nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreError) as err:
        open_store(f"postgresql+psycopg://someone:s3cret@127.0.0.1:{port}/runs")
    message = str(err.value)
    shown = f"postgresql+psycopg://someone:***@127.0.0.1:{port}/runs"
    assert message.startswith(f"cannot open run store {shown}: ")
    assert "s3cret" not in message and "\n" not in message


def test_missing_psycopg_is_one_store_error_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now raises ImportError
    with pytest.raises(StoreError) as err:
        open_store("postgresql+psycopg://u@127.0.0.1:1/runs")
    message = str(err.value)
    assert message.startswith("cannot open run store postgresql+psycopg://u@127.0.0.1:1/runs: ")
    assert message.endswith("pip install 'psycopg[binary]' (the kdcicam[postgres] extra)")


def test_store_url_masks_the_password(server):
    url = server.new_database().replace("://kdcicam@", "://kdcicam:pw@")
    with open_store(url) as store:  # trust auth ignores the password
        assert store.url == url.replace(":pw@", ":***@")
        assert "pw@" not in repr(store)


# -- every API gives the same answers as on SQLite ----------------------------------------------


def _exercise(store, clock: FakeClock) -> dict:
    """Call every API once, in a fixed order; everything it returns, by name."""
    out: dict = {}
    out["dataset"] = store.ensure_dataset("fp1", "synthetic", "/data/ü", {"classes": 10, "who": "café ☕"})
    out["dataset_again"] = store.ensure_dataset("fp1", "other", None, {})
    clock.advance(1.123456)  # microseconds survive on both backends
    out["run"] = store.get_or_create_run(
        RUN, config_hash="c1", role="distilled", profile="paper", variant="reference", dataset="cub",
        dataset_fingerprint="fp1", seed=2**31 - 1,
        config={"b": [1, 2.5, None], "a": {"ü": "☕"}, "x": 1e300},
        git_commit="deadbeef", device="cuda:0", torch_version="2.4.0", host="box",
        artifacts_dir="/runs/abc", weights={"backbone": "vgg16.pth"}, labels={"table3": ["kd"]})
    # Same created_at as RUN, so list_runs orders by id: bytewise, "Z" (0x5a) < "a" (0x61).
    for run_id in ("aaaa1111", "Zzzz0000", "aaaa0000"):
        _new_run(store, run_id)
    out["claimed"] = store.claim_run(RUN, pid=11, host="a", device="cpu", git_commit="abc")
    out["claimed_again"] = store.claim_run(RUN, pid=12, host="b")
    clock.advance(30)
    out["beats"] = (store.heartbeat(RUN, pid=12), store.heartbeat(RUN, pid=11))
    out["failed"] = store.fail_run(RUN, "loss diverged at epoch 3 — NaN")
    out["reclaimed"] = store.claim_run(RUN, pid=12, host="b")
    out["labels"] = [store.add_labels(RUN, "table4", "base"), store.add_labels(RUN, "table4", "base"),
                     store.add_labels("Zzzz0000", "table3", "kd")]
    store.add_epoch_metrics(RUN, 0, "train", {"loss": 2.0, "top1_cls": 0.1})
    store.add_epoch_metrics(RUN, 0, "val", {"top1_cls": 0.15})
    store.add_epoch_metrics(RUN, 1, "train", {"loss": 1.5, "Loss_b": 3.0})
    clock.advance(5)
    store.add_epoch_metrics(RUN, 1, "train", {"loss": 1.25, "grad_norm": float("nan")})  # resumed epoch
    store.set_final_metrics(RUN, "paper", "last", "fixed", "test", {"a": 0.5, "B": 0.3, "_x": 0.1})
    store.set_final_metrics(RUN, "paper", "last", "fixed", "test", {"a": 0.6})  # re-evaluated
    store.set_final_metrics("aaaa0000", "standard", "top1_loc", "val", "val", {"maxboxacc_v2": float("nan")})
    records = [_record(0), _record(1, box=None, iou=None, correct_top1_cls=False, correct_gt_known=False)]
    out["n_records"] = store.add_image_records(RUN, "paper", "last", "test", records)
    store.add_image_records(RUN, "paper", "last", "test", records[::-1])  # replaces the group
    out["finished"] = store.finish_run(RUN, train_seconds=90.5, eval_seconds=9.5)
    out["runs"] = store.list_runs()
    out["filtered"] = [store.list_runs(status="pending"), store.list_runs(labels_contain=("table3", "kd")),
                       store.list_runs(labels_contain="table4"), store.list_runs(role="distilled")]
    out["resolved"] = [store.resolve_run(name).id for name in ("aaaa1", "ZZZZ", "Zzzz0000", RUN[:6])]
    errors = []
    for name in ("aaa", "aaa%", "aaaa", "cccc"):
        try:
            store.resolve_run(name)
        except StoreError as exc:
            errors.append(str(exc))
    out["resolve_errors"] = errors
    out["epoch"] = store.epoch_metrics(RUN)
    out["final"] = store.final_metrics()
    out["final_none"] = store.final_metrics([])
    out["images"] = store.get_image_records(RUN, "paper", "last", "test")
    out["no_images"] = store.get_image_records(RUN, "standard", "last", "test")
    try:  # one id missing: nothing is deleted
        store.delete_runs(["aaaa1111", "nope0000"])
    except StoreError as exc:
        out["delete_error"] = str(exc)
    out["deleted"] = store.delete_runs(["aaaa0000", "aaaa0000"])
    out["after_delete"] = [r.id for r in store.list_runs()]
    out["final_after_delete"] = store.final_metrics()
    return out


def test_every_api_gives_the_same_answers_as_on_sqlite(pg_url, tmp_path):
    answers = []
    for url in (pg_url, f"sqlite:///{tmp_path / 'runs.db'}"):
        clock = FakeClock()
        with open_store(url, clock=clock) as store:
            answers.append(_exercise(store, clock))
    got, want = answers
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(got[key], value, obj=key)
        else:
            assert got[key] == value, key
    # ... and those answers are the right ones (not merely equally wrong):
    run = got["run"]
    assert run.config == {"a": {"ü": "☕"}, "b": [1, 2.5, None], "x": 1e300}
    assert run.created_at == T0 + timedelta(seconds=1.123456)
    assert got["dataset"].meta == {"classes": 10, "who": "café ☕"}
    assert (got["claimed"], got["claimed_again"], got["reclaimed"]) == (True, False, True)
    assert got["beats"] == (False, True)  # pid 12 does not own the run, pid 11 does
    assert got["failed"].message == "loss diverged at epoch 3 — NaN"
    finished = got["finished"]
    assert (finished.status, finished.pid, finished.train_seconds) == ("finished", 12, 90.5)
    assert [r.id for r in got["runs"]] == ["Zzzz0000", "aaaa0000", "aaaa1111", RUN]  # all created at once
    assert got["labels"][1] == {"table3": ["kd"], "table4": ["base"]}
    assert got["resolved"] == ["aaaa1111", "Zzzz0000", "Zzzz0000", RUN]
    assert got["resolve_errors"] == [
        "no run matches 'aaa' (a prefix needs at least 4 characters)", "no run matches 'aaa%'",
        "'aaaa' matches 2 runs (aaaa0000, aaaa1111); give more characters", "no run matches 'cccc'"]
    epoch = got["epoch"]
    assert list(zip(epoch["epoch"], epoch["split"], epoch["name"])) == [
        (0, "train", "loss"), (0, "train", "top1_cls"), (0, "val", "top1_cls"),
        (1, "train", "Loss_b"), (1, "train", "grad_norm"), (1, "train", "loss")]  # "L" < "g" bytewise
    assert math.isnan(epoch["value"][4]) and epoch["value"][5] == 1.25
    final = got["final"][got["final"]["run_id"] == RUN]
    assert list(zip(final["name"], final["value"])) == [("B", 0.3), ("_x", 0.1), ("a", 0.6)]
    assert list(got["images"]["image_id"]) == ["img_00001", "img_00000"]
    assert got["images"]["box"][0] is None and math.isnan(got["images"]["iou"][0])
    assert got["delete_error"] == "no run matches 'nope0000'" and got["deleted"] == 1
    assert got["after_delete"] == ["Zzzz0000", "aaaa1111", RUN]
    assert "aaaa0000" in set(got["final"]["run_id"]) and "aaaa0000" not in set(got["final_after_delete"]["run_id"])


def test_values_postgresql_would_reject_are_refused_on_both_backends(pg_url, tmp_path):
    for url in (pg_url, f"sqlite:///{tmp_path / 'runs.db'}"):
        with open_store(url) as store:
            with pytest.raises(StoreError, match=r"^run seed=2147483648 does not fit the run store's 32-bit"):
                _new_run(store, seed=2**31)
            too_long = r"^run role is 33 characters long; the run store holds at most 32: 'rrr"
            with pytest.raises(StoreError, match=too_long):
                _new_run(store, role="r" * 33)
            assert store.list_runs() == []  # nothing was written
            run_id = _new_run(store).id
            with pytest.raises(StoreError, match=r"^claim host is 256 characters long"):
                store.claim_run(run_id, pid=1, host="h" * 256)
            with pytest.raises(StoreError, match=r"^epoch metric name is 65 characters long"):
                store.add_epoch_metrics(run_id, 0, "train", {"n" * 65: 1.0})
            with pytest.raises(StoreError, match=r"^image record image_id is 262 characters long"):
                store.add_image_records(run_id, "paper", "last", "test", [_record(0, prefix="i" * 256)])
            assert store.get_run(run_id).status == "pending"
            assert store.epoch_metrics(run_id).empty


def test_timestamps_ignore_the_session_time_zone(pg_url, monkeypatch):
    monkeypatch.setenv("PGTZ", "Asia/Kolkata")  # libpq sets the session TimeZone from PGTZ (+05:30)
    berlin = timezone(timedelta(hours=1))
    with open_store(pg_url, clock=lambda: datetime(2025, 3, 1, 13, 0, tzinfo=berlin)) as store:
        with store._engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "Asia/Kolkata"
        assert _new_run(store).created_at == T0  # 13:00+01:00 is 12:00 UTC
        assert store.get_run(RUN).created_at == T0


def test_bulk_insert_of_6000_image_records_reads_back_in_order(store):
    # how fast: benchmarks/store_insert.py
    run_id = _new_run(store).id
    store.add_image_records(run_id, "paper", "last", "test", [_record(i) for i in range(6000)])
    frame = store.get_image_records(run_id, "paper", "last", "test")
    assert len(frame) == 6000 and list(frame.columns) == list(IMAGE_RECORD_FIELDS)
    assert frame["image_id"].iloc[5999] == "img_05999"
    assert frame["top5"].iloc[13] == [3, 1, 2, 3, 4]  # 13 % 10 = 3


# -- lifecycle and claims -------------------------------------------------------------------------


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
    assert store.claim_run(run_id, pid=3, host="c", stale_after_s=120) is False  # fresh again


def _wait_until_blocked(server: PgServer, url: str, timeout_s: float = 20.0) -> None:
    """Return once some session of the database waits on a lock (the call under test blocked)."""
    deadline = time.monotonic() + timeout_s
    with server.connect(_database(url)) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                                   "AND wait_event_type = 'Lock'", (_database(url),)).fetchone()[0]
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the store call never waited on the held row lock")


@pytest.mark.parametrize(("first_claimer", "second_wins"), [("commit", False), ("rollback", True)])
def test_claim_waits_for_a_concurrent_claim_then_rechecks_the_committed_row(
        store, server, pg_url, first_claimer, second_wins):
    # Why the single conditional UPDATE is atomic under READ COMMITTED: the second UPDATE blocks on
    # the first one's row lock, then re-evaluates its WHERE on the row as committed.
    run_id = _new_run(store).id
    with server.connect(_database(pg_url)) as first:
        first.autocommit = False
        first.execute("UPDATE runs SET status = 'running', pid = 99, heartbeat_at = %s WHERE id = %s",
                      (T0.replace(tzinfo=None), run_id))  # a claim at "now", not committed yet
        result = {}
        second = threading.Thread(target=lambda: result.update(won=store.claim_run(run_id, pid=2, host="b")))
        second.start()
        _wait_until_blocked(server, pg_url)
        assert result == {}  # still waiting for the first claimer
        getattr(first, first_claimer)()
        second.join(timeout=30)
    assert result == {"won": second_wins}
    assert store.get_run(run_id).pid == (2 if second_wins else 99)


def test_get_or_create_run_that_loses_the_insert_race_returns_the_winners_run(store, server, pg_url):
    with server.connect(_database(pg_url)) as first:
        first.autocommit = False
        first.execute("INSERT INTO runs (id, config_hash, role, profile, variant, dataset, seed, config, "
                      "status, created_at, labels) VALUES (%s, 'c1', 'student', 'smoke', 'paper', "
                      "'synthetic', 0, '{}', 'pending', %s, '{}')", (RUN, T0.replace(tzinfo=None)))
        result = {}
        second = threading.Thread(target=lambda: result.update(run=_new_run(store, config_hash="c1")))
        second.start()
        _wait_until_blocked(server, pg_url)  # its INSERT waits on the uncommitted duplicate key
        first.commit()
        second.join(timeout=30)
    assert result["run"].config == {}  # the winner's row (ours would have a config), found on retry


def test_lock_held_for_good_is_one_store_error(pg_url, server, monkeypatch):
    monkeypatch.setattr(store_api, "_LOCK_BACKOFF_S", 0.01)
    with open_store(pg_url, busy_timeout_s=0.05) as store:
        run_id = _new_run(store).id
        store.claim_run(run_id, pid=1, host="h")
        with server.connect(_database(pg_url)) as holder:
            holder.autocommit = False
            holder.execute("UPDATE runs SET message = 'x' WHERE id = %s", (run_id,))  # holds the row lock
            with pytest.raises(StoreError) as err:
                store.heartbeat(run_id)
            holder.rollback()
        assert store.heartbeat(run_id) is True
    assert str(err.value) == f"run store {pg_url}: canceling statement due to lock timeout"


def test_lock_timeout_is_retried_then_succeeds(pg_url, server, monkeypatch):
    monkeypatch.setattr(store_api, "_LOCK_BACKOFF_S", 0.05)
    with open_store(pg_url, busy_timeout_s=0.05) as store:
        run_id = _new_run(store).id
        with server.connect(_database(pg_url)) as holder:
            holder.autocommit = False
            holder.execute("UPDATE runs SET message = 'x' WHERE id = %s", (run_id,))
            release = threading.Timer(0.3, holder.commit)
            release.start()
            try:
                # attempts at ~0, 0.1, 0.25, 0.5 s...: the first time out on the lock, a later one passes
                assert store.claim_run(run_id, pid=1, host="h") is True
            finally:
                release.join()
        assert store.get_run(run_id).message is None  # the claim cleared the holder's message


def _claim_worker(url: str, run_ids: list[str], barrier, results) -> None:
    store = open_store(url)
    won = []
    for run_id in run_ids:
        barrier.wait(timeout=60)  # both processes claim each run at the same moment
        won.append(store.claim_run(run_id, pid=os.getpid(), host="test"))
    store.close()
    results.put((os.getpid(), won))


def test_claim_is_atomic_across_two_processes(pg_url):
    run_ids = [f"race{i}000000" for i in range(5)]
    with open_store(pg_url) as store:
        for run_id in run_ids:
            _new_run(store, run_id)
    ctx = _start_method_context()
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_claim_worker, args=(pg_url, run_ids, barrier, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    outcomes = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    (pid_a, won_a), (pid_b, won_b) = outcomes.items()
    assert [a + b for a, b in zip(won_a, won_b)] == [1] * len(run_ids)  # exactly one winner each
    with open_store(pg_url) as store:
        owners = [store.get_run(run_id).pid for run_id in run_ids]
    assert owners == [pid_a if a else pid_b for a in won_a]


POOL = [f"pool{i:02d}00000000" for i in range(10)]
SHARED = "shared0000000000"
N_WORKERS = 4


def _writer_worker(url: str, index: int, barrier, results) -> None:
    """One sweep job: open (maybe migrate) the store, register the plan, write, claim."""
    try:
        barrier.wait(timeout=60)  # all open a never-migrated database at once
        store = open_store(url)
        store.ensure_dataset("fp-synth", "synthetic", "/data", {"seed": 0})
        for run_id in [*POOL, SHARED]:  # every job registers the whole plan, as the runner does
            _new_run(store, run_id)
        own = _new_run(store, f"own{index}000000000").id
        barrier.wait(timeout=60)
        for cell in range(5):  # read-modify-write of one JSON column from every process
            store.add_labels(SHARED, f"table{index}", f"cell{cell}")
        mine = [_record(i, prefix=f"w{index}") for i in range(300)]
        store.add_image_records(SHARED, "paper", "last", "test", mine)  # all replace one group
        won = []
        for step, run_id in enumerate(POOL[index:] + POOL[:index]):  # different orders, same contention
            if store.claim_run(run_id, pid=os.getpid(), host=f"node{index}"):
                won.append(run_id)
            store.add_epoch_metrics(own, step, "train", {"loss": 1.0 / (1 + step), "won": len(won)})
            store.heartbeat(own)
        store.close()
        results.put((index, os.getpid(), won, None))
    except BaseException:  # report, so the test shows the error instead of a timeout
        results.put((index, os.getpid(), [], traceback.format_exc(limit=4)))


def test_concurrent_writers_from_many_processes(pg_url, server):
    ctx = _start_method_context()
    barrier = ctx.Barrier(N_WORKERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=_writer_worker, args=(pg_url, i, barrier, results)) for i in range(N_WORKERS)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert [error for *_, error in outcomes if error] == []
    assert [proc.exitcode for proc in procs] == [0] * N_WORKERS
    won_by = {run_id: pid for _, pid, won, _ in outcomes for run_id in won}
    assert sum(len(won) for _, _, won, _ in outcomes) == len(POOL) == len(won_by)  # each exactly once
    with open_store(pg_url) as store:
        assert {run_id: store.get_run(run_id).pid for run_id in POOL} == won_by
        assert len(store.list_runs()) == len(POOL) + 1 + N_WORKERS  # no duplicate registrations
        labels = store.get_run(SHARED).labels
        assert labels == {f"table{i}": [f"cell{c}" for c in range(5)] for i in range(N_WORKERS)}  # none lost
        images = store.get_image_records(SHARED, "paper", "last", "test")
        assert len(images) == 300 and images["image_id"].str[:3].nunique() == 1  # one writer's whole set
        for index, _, won, _ in outcomes:
            epochs = store.epoch_metrics(f"own{index}000000000")
            assert len(epochs) == 2 * len(POOL)  # one epoch per claim attempt, 2 names each
            assert epochs[epochs["name"] == "won"]["value"].iloc[-1] == len(won)
    with server.connect(_database(pg_url)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0004",)]
        assert conn.execute("SELECT count(*) FROM datasets").fetchone() == (1,)


def test_runs_archived_from_sqlite_import_into_postgresql_with_every_value(pg_url, tmp_path):
    """``runs archive`` on SQLite, ``runs import`` into PostgreSQL: the same runs, metrics and records."""
    from test_runs_archive import TEACHER, _cli, _everything, _run

    sqlite_url = f"sqlite:///{tmp_path / 'a' / 'runs.db'}"
    (tmp_path / "a").mkdir()
    with open_store(sqlite_url, clock=FakeClock()) as source:
        _run(source, tmp_path / "a" / "art", TEACHER, "loc_teacher")
    assert _cli("runs", "archive", str(tmp_path / "archive"), "--db", sqlite_url) == 0
    assert _cli("runs", "import", str(tmp_path / "archive"), "--db", pg_url, "--artifacts", str(tmp_path / "art")) == 0
    before, after = _everything(sqlite_url), _everything(pg_url)
    assert repr(after) == repr(before) and len(after["records"][TEACHER]) == 2
    with open_store(pg_url) as store:
        assert store.get_run(TEACHER).artifacts_dir == str(tmp_path / "art" / TEACHER)  # absolute on a server
