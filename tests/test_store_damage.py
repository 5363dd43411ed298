"""A damaged store: one-line error naming `.recover`; a single bad row skipped with a warning; a read-only
store still readable."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from _cli import run_cli

from kdcicam.store import open_store

RUNS = ("aaaa000011112222", "bbbb000011112222")


def _store(db: Path) -> None:
    with open_store(f"sqlite:///{db}") as store:
        for run_id in RUNS:
            store.get_or_create_run(run_id, config_hash="c" + run_id[:4], role="student", profile="smoke",
                                    variant="reference", dataset="synthetic", seed=0, config={"a": 1})
            store.claim_run(run_id, pid=1, host="h")
            store.set_final_metrics(run_id, "paper", "last", "fixed", "test", {"top1_cls": 0.5, "top1_loc": 0.25})
            store.finish_run(run_id)


def _raw(db: Path, sql: str, *args) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute(sql, args)
    con.close()


def test_damaged_pages_give_one_line_naming_recover(tmp_path, capsys):
    db = tmp_path / "runs.db"
    _store(db)
    page = 4096
    size = db.stat().st_size
    with db.open("r+b") as fh:  # garbage over every page but the first (the header stays valid)
        for offset in range(page, size, page):
            fh.seek(offset)
            fh.write(b"\xa5" * page)
    code, _out, err = run_cli(["runs", "list", "--db", str(db)], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"the store at {db} is damaged" in err and f"sqlite3 {db} .recover" in err and "SELECT" not in err


def test_a_row_with_bad_config_json_is_skipped_with_a_warning(tmp_path, capsys):
    db = tmp_path / "runs.db"
    _store(db)
    _raw(db, "UPDATE runs SET config = '{not json' WHERE id = ?", RUNS[0])
    code, out, err = run_cli(["runs", "list", "--db", str(db), "--json"], capsys)
    assert code == 0, err
    assert "warning:" in err and f"run {RUNS[0]} skipped" in err
    assert RUNS[1] in out and RUNS[0] not in out


def test_text_in_a_metric_column_is_skipped_with_a_warning(tmp_path, capsys):
    db = tmp_path / "runs.db"
    _store(db)
    _raw(db, "UPDATE final_metrics SET value = 'lots' WHERE run_id = ? AND name = 'top1_cls'", RUNS[0])
    code, out, err = run_cli(["runs", "list", "--db", str(db)], capsys)
    assert code == 0, err
    assert "metric 'top1_cls' skipped" in err and "bbbb00001111" in out


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any file: a read-only store cannot be made")
def test_a_read_only_store_can_be_listed(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "runs.db"
    _store(db)
    db.chmod(stat.S_IRUSR)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        code, out, err = run_cli(["runs", "list", "--db", str(db), "--json"], capsys)
    finally:
        folder.chmod(stat.S_IRWXU)
        db.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert code == 0, err
    assert RUNS[0] in out and RUNS[1] in out


def test_a_read_only_store_can_be_listed_as_seen_by_os_access(tmp_path, capsys, monkeypatch):
    """The same, for root (who may write anything): the store is read-only as os.access reports it."""
    db = tmp_path / "runs.db"
    _store(db)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode & os.W_OK else real_access(p, mode))
    before = db.read_bytes()
    code, out, err = run_cli(["runs", "list", "--db", str(db), "--json"], capsys)
    assert code == 0, err
    assert RUNS[0] in out and db.read_bytes() == before


def test_showing_the_damaged_run_itself_is_one_line(tmp_path, capsys):
    db = tmp_path / "runs.db"
    _store(db)
    _raw(db, "UPDATE runs SET labels = 'x' WHERE id = ?", RUNS[0])
    code, _out, err = run_cli(["runs", "show", RUNS[0][:8], "--db", str(db)], capsys)
    assert code == 2 and err.count("\n") == 1 and f"run {RUNS[0]}'s row is damaged" in err, err


def test_a_row_with_a_damaged_timestamp_is_skipped_with_a_warning(tmp_path, capsys):
    db = tmp_path / "runs.db"
    _store(db)
    _raw(db, "UPDATE runs SET created_at = 'not a time' WHERE id = ?", RUNS[0])
    code, out, err = run_cli(["runs", "list", "--db", str(db), "--json"], capsys)
    assert code == 0, err
    assert f"run {RUNS[0]} skipped" in err and RUNS[1] in out and RUNS[0] not in out
