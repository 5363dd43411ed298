"""Artifact paths relative to the store's folder, the 0003 migration, and the proof a folder is a run's own."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from kdcicam.core.errors import ConfigError
from kdcicam.store import open_store
from kdcicam.store.rows import MECHANISM_RECORD_FIELDS
from kdcicam.store.run_folder import (
    ATTEMPTS_FILE,
    append_attempt,
    check_artifacts_root,
    deletable_folder,
    from_stored,
    read_attempts,
    relocate_legacy,
    to_stored,
    write_owner_file,
)

RUN = "abcd000011112222"


def _add_run(store, folder: Path) -> None:
    store.get_or_create_run(RUN, config_hash="c", role="student", profile="smoke", variant="reference",
                            dataset="synthetic", seed=0, config={}, artifacts_dir=str(folder))


def _stored(db: Path) -> str:
    raw = sqlite3.connect(db)
    try:
        return raw.execute("SELECT artifacts_dir FROM runs").fetchone()[0]
    finally:
        raw.close()


def test_paths_convert_on_hand_worked_values(tmp_path):
    store_dir = Path("/p/proj")
    assert to_stored("/p/proj/runs/x", store_dir) == "runs/x"
    assert to_stored("/p/other/x", store_dir) == "/p/other/x"
    assert to_stored("/p/proj/runs/x", None) == "/p/proj/runs/x"
    assert from_stored("runs/x", store_dir) == "/p/proj/runs/x"
    assert from_stored("/q/x", store_dir) == "/q/x"
    (tmp_path / "runs" / RUN).mkdir(parents=True)
    assert relocate_legacy(f"/old/home/runs/{RUN}", RUN, tmp_path) == f"runs/{RUN}"
    assert relocate_legacy(f"/old/home/runs/{RUN}", RUN, tmp_path / "runs") == RUN
    assert relocate_legacy("/old/home/runs/other", RUN, tmp_path) is None


def test_a_moved_project_folder_still_finds_its_runs(tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    with open_store(f"sqlite:///{project / 'runs.db'}") as store:
        _add_run(store, project / "runs" / RUN)
    assert _stored(project / "runs.db") == f"runs/{RUN}"
    moved = tmp_path / "moved"
    project.rename(moved)
    with open_store(f"sqlite:///{moved / 'runs.db'}") as store:
        assert store.get_run(RUN).artifacts_dir == str(moved / "runs" / RUN)
        assert store.list_runs()[0].artifacts_dir == str(moved / "runs" / RUN)


def _legacy_store(db: Path, artifacts: str) -> None:
    """A store as revision 0002 left it: an absolute artifacts_dir."""
    with open_store(f"sqlite:///{db}") as store:
        _add_run(store, Path(artifacts))
    raw = sqlite3.connect(db)
    with raw:
        raw.execute("UPDATE runs SET artifacts_dir = ?", (artifacts,))
        for column in MECHANISM_RECORD_FIELDS:  # added by revision 0004
            raw.execute(f"ALTER TABLE image_records DROP COLUMN {column}")
        raw.execute("UPDATE alembic_version SET version_num = '0002'")
    raw.close()


def test_migration_makes_paths_inside_the_store_folder_relative(tmp_path):
    _legacy_store(tmp_path / "runs.db", str(tmp_path / "runs" / RUN))
    with open_store(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        assert store.get_run(RUN).artifacts_dir == str(tmp_path / "runs" / RUN)
    assert _stored(tmp_path / "runs.db") == f"runs/{RUN}"


def test_migration_points_a_copied_legacy_store_at_its_own_copy(tmp_path):
    original = tmp_path / "orig"
    (original / "runs" / RUN).mkdir(parents=True)
    _legacy_store(original / "runs.db", str(original / "runs" / RUN))
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    with open_store(f"sqlite:///{copy / 'runs.db'}") as store:
        assert store.get_run(RUN).artifacts_dir == str(copy / "runs" / RUN)
    # without a copy of the folder the path stays the original's (and runs delete will not touch it)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(original / "runs.db", lone / "runs.db")
    with open_store(f"sqlite:///{lone / 'runs.db'}") as store:
        info = store.get_run(RUN)
        assert info.artifacts_dir == str(original / "runs" / RUN)
        write_owner_file(original / "runs" / RUN, RUN, str(original / "runs.db"))
        folder, why = deletable_folder(info.artifacts_dir, RUN, store.folder, store.label)
    assert folder is None and "outside this store's folder" in why


def test_deletable_folder_needs_the_run_name_and_its_owner_file(tmp_path):
    label = str(tmp_path / "runs.db")
    folder = tmp_path / "runs" / RUN
    folder.mkdir(parents=True)
    assert deletable_folder(str(folder), RUN, tmp_path, label)[0] is None  # no owner file, no manifest
    (folder / "checksums.json").write_text("{}")  # a folder from before owner files, inside the store's
    assert deletable_folder(str(folder), RUN, tmp_path, label)[0] == folder
    write_owner_file(folder, "ffff000011112222", label)
    assert "names run ffff" in deletable_folder(str(folder), RUN, tmp_path, label)[1]
    write_owner_file(folder, RUN, label)
    assert deletable_folder(str(folder), RUN, tmp_path, label)[0] == folder
    assert "not named after" in deletable_folder(str(tmp_path / "runs"), RUN, tmp_path, label)[1]
    link = tmp_path / "link" / RUN
    link.parent.mkdir()
    link.symlink_to(folder)
    assert "symbolic link" in deletable_folder(str(link), RUN, tmp_path, label)[1]
    assert deletable_folder(str(tmp_path / "gone" / RUN), RUN, tmp_path, label) == (None, "")


def test_artifacts_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_artifacts_root(tmp_path / "f")
    assert check_artifacts_root(tmp_path / "new" / "a") == tmp_path / "new" / "a"
    assert not (tmp_path / "new").exists()
    with pytest.raises(ConfigError, match="is a file"):
        check_artifacts_root(tmp_path / "f" / "a")


def test_attempts_log_keeps_every_claim_in_order_and_skips_a_torn_line(tmp_path):
    folder = tmp_path / RUN
    assert read_attempts(folder) == [] and read_attempts(None) == []  # no folder, no log
    first = {"claimed_at": "2026-12-03T16:07:50+00:00", "device": "cpu (x86_64, 1 threads)", "pid": 7}
    second = {"claimed_at": "2026-12-03T16:41:38+00:00", "device": "cpu (AMD EPYC, x86_64, AVX2, 1 threads)", "pid": 9}
    append_attempt(folder, first)  # creates the folder
    with open(folder / ATTEMPTS_FILE, "a") as log:
        log.write('{"claimed_at": "2026-12-03T16:3')  # a crash in the middle of a write
    with open(folder / ATTEMPTS_FILE, "a") as log:
        log.write("\n[1, 2]\n")  # not an attempt
    append_attempt(folder, second)
    assert read_attempts(folder) == [first, second]
    assert read_attempts(str(folder)) == [first, second]
