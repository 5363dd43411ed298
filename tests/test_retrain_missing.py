"""``kdcicam ablate --retrain-missing``: a finished teacher whose checkpoint is gone is reopened, trained again
in place, and its new numbers compared with the stored ones; without the flag, a one-line refusal."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from _runs import kdcicam_env, smoke_cache  # noqa: F401

from kdcicam.core.config import TeacherRefs
from kdcicam.core.errors import RunError, StoreError
from kdcicam.execution.teacher_restore import (
    EARLIER_RECORD,
    MissingTeacher,
    check_retrained,
    missing_teachers,
    refuse_missing,
    reopen_teachers,
)
from kdcicam.store import open_store

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
TEACHER, GONE, STUDENT = "tttt000011112222", "gggg000011112222", "ssss000011112222"


def _stored(store, root: Path, run_id: str, role: str, *, finish: bool = True, checkpoint: bool = True,
            teachers: dict | None = None) -> Path:
    folder = root / run_id
    folder.mkdir(parents=True)
    if checkpoint:
        (folder / "last.pt").write_bytes(b"weights")
    store.get_or_create_run(run_id, config_hash="c" + run_id[:4], role=role, profile="smoke", variant="reference",
                            dataset="synthetic", seed=0, config={"teachers": teachers or {}},
                            artifacts_dir=str(folder))
    store.add_labels(run_id, "table3", role)
    if finish:
        store.claim_run(run_id, pid=1, host="here")
        store.add_epoch_metrics(run_id, 0, "train", {"loss": 1.5})
        store.set_final_metrics(run_id, "paper", "last", "fixed", "test", {"top1_cls": 0.5, "gt_known_loc": 0.25})
        store.finish_run(run_id, train_seconds=3.0)
    return folder


def _planned(run_id: str, **refs) -> SimpleNamespace:
    return SimpleNamespace(run_id=run_id, cfg=SimpleNamespace(teachers=TeacherRefs(**refs)))


@pytest.fixture
def store(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'runs.db'}", clock=lambda: T0) as s:
        _stored(s, tmp_path / "art", TEACHER, "cls_teacher")
        _stored(s, tmp_path / "art", GONE, "loc_teacher", checkpoint=False)
        _stored(s, tmp_path / "art", STUDENT, "distilled", finish=False,
                teachers={"cls_run": TEACHER, "loc_run": GONE})
        yield s


def test_reopen_run_makes_a_finished_run_pending_without_results_and_keeps_its_labels(store):
    assert store.reopen_run(GONE, "why") is True
    info = store.get_run(GONE)
    assert (info.status, info.message, info.finished_at, info.train_seconds) == ("pending", "why", None, None)
    assert info.labels == {"table3": ["loc_teacher"]} and info.config == {"teachers": {}}
    assert store.final_metrics([GONE]).empty and store.epoch_metrics(GONE).empty
    assert not store.final_metrics([TEACHER]).empty  # another run's results stay
    assert store.reopen_run(GONE, "again") is False  # not finished any more: the second caller does nothing
    assert store.reopen_run(STUDENT, "pending") is False
    with pytest.raises(StoreError):
        store.reopen_run("nope000011112222", "no such run")


def test_missing_teachers_are_the_finished_ones_an_unfinished_student_needs_without_their_file(store, tmp_path):
    student = _planned(STUDENT, cls_run=TEACHER, cls_select="last", loc_run=GONE, loc_select="last")
    assert missing_teachers([student], store) == [MissingTeacher(GONE, tmp_path / "art" / GONE / "last.pt")]
    # a teacher read at another checkpoint the folder lacks is missing too
    other = _planned(STUDENT, cls_run=TEACHER, cls_select="top1_cls")
    assert [m.run_id for m in missing_teachers([other], store)] == [TEACHER]
    # a finished student reads no teacher again; a teacher not stored yet is the plan's to train
    store.claim_run(STUDENT, pid=1, host="here")
    store.finish_run(STUDENT)
    assert missing_teachers([student], store) == []
    assert missing_teachers([_planned("pppp000011112222", loc_run="nnnn000011112222")], store) == []


def test_without_the_flag_the_refusal_is_one_line_naming_it(store):
    student = _planned(STUDENT, loc_run=GONE, loc_select="last")
    with pytest.raises(RunError) as refused:
        refuse_missing(missing_teachers([student], store))
    assert "gggg00001111 is finished but its checkpoint is gone" in str(refused.value)
    assert "--retrain-missing" in str(refused.value) and "\n" not in str(refused.value)
    refuse_missing([])  # nothing missing: nothing said


def test_reopen_keeps_the_earlier_record_and_the_check_names_each_difference(store, tmp_path):
    art = tmp_path / "art"
    earlier = reopen_teachers(store, [MissingTeacher(GONE, art / GONE / "last.pt")], art)
    assert list(earlier) == [GONE] and store.get_run(GONE).status == "pending"
    kept = json.loads(gzip.decompress((art / GONE / EARLIER_RECORD).read_bytes()))
    assert kept == earlier[GONE] and kept["final_metrics"]["value"] == [0.5, 0.25]
    assert reopen_teachers(store, [MissingTeacher(GONE, art / GONE / "last.pt")], art) == {}  # reopened already
    assert check_retrained(store, earlier, art) == []  # not finished again yet: nothing to compare

    store.claim_run(GONE, pid=2, host="here")
    store.set_final_metrics(GONE, "paper", "last", "fixed", "test", {"top1_cls": 0.5, "gt_known_loc": 0.3})
    store.finish_run(GONE)
    [check] = check_retrained(store, earlier, art)
    assert not check.came_back and check.compared == 2 and check.unmatched == 0
    assert check.differences == (("paper/last/fixed/test/gt_known_loc", 0.25, 0.3),)
    assert "1 of 2 final numbers differ (largest: paper/last/fixed/test/gt_known_loc 0.25 -> 0.3)" in check.describe()
    assert check.to_dict()["differences"] == [{"metric": "paper/last/fixed/test/gt_known_loc", "before": 0.25,
                                              "after": 0.3}]


def test_the_same_numbers_come_back_and_a_lost_one_is_counted(store, tmp_path):
    art = tmp_path / "art"
    earlier = reopen_teachers(store, [MissingTeacher(GONE, art / GONE / "last.pt")], art)
    store.claim_run(GONE, pid=2, host="here")
    store.set_final_metrics(GONE, "paper", "last", "fixed", "test", {"top1_cls": 0.5, "gt_known_loc": 0.25})
    store.finish_run(GONE)
    [check] = check_retrained(store, earlier, art)
    assert check.came_back and "its 2 final numbers came back exactly" in check.describe()
    earlier[GONE]["final_metrics"] = {k: [*v, v[-1]] for k, v in earlier[GONE]["final_metrics"].items()}
    earlier[GONE]["final_metrics"]["name"][-1] = "pxap"
    [check] = check_retrained(store, earlier, art)
    assert not check.came_back and check.unmatched == 1 and "1 present on one side only" in check.describe()


def _ablate(args, cache, tmp_path):
    env = {**kdcicam_env(cache), "KDCICAM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "kdcicam", "ablate", "table3", "--profile", "smoke", "--set",
                           "train.epochs=1", "--db", f"sqlite:///{tmp_path / 'runs.db'}", "--artifacts",
                           str(tmp_path / "runs"), *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=900)


@pytest.mark.slow
def test_ablate_trains_a_lost_teacher_again_and_its_numbers_come_back(smoke_cache, tmp_path):  # noqa: F811
    first = _ablate(["--json"], smoke_cache, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    with open_store(db) as s:
        runs = s.list_runs()
        distilled = next(r for r in runs if r.role == "distilled")
        teachers = sorted(r.id for r in runs if r.role.endswith("_teacher"))
        labels = {t: s.get_run(t).labels for t in teachers}
        before = s.final_metrics(teachers).drop(columns="created_at").sort_values(
            ["run_id", "protocol", "selection", "threshold_policy", "split", "name"]).reset_index(drop=True)
        s.reopen_run(distilled.id, "a student still to train")
    for teacher in teachers:  # their networks are lost (an archive imported without checkpoints)
        for path in (tmp_path / "runs" / teacher).glob("*.pt"):
            path.unlink()

    refused = _ablate([], smoke_cache, tmp_path)
    assert refused.returncode != 0 and "--retrain-missing" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    with open_store(db) as s:
        assert {s.get_run(t).status for t in teachers} == {"finished"}  # nothing touched
    plan = _ablate(["--dry-run", "--json"], smoke_cache, tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    shown = {r["run_id"]: r["status"] for r in json.loads(plan.stdout)["runs"]}
    assert {shown[t] for t in teachers} == {"finished, checkpoint gone (--retrain-missing trains it again)"}
    assert shown[distilled.id] == "new"

    again = _ablate(["--retrain-missing", "--json"], smoke_cache, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    out = json.loads(again.stdout)
    checks = {c["run_id"]: c for c in out["retrained_teachers"]}
    assert sorted(checks) == teachers  # Table 3's distilled cell learns from both teachers
    assert all(c["came_back"] and c["compared"] > 0 and not c["differences"] for c in checks.values()), checks
    trained = {r["run_id"] for r in out["runs"] if not r["reused"]}
    assert trained == {*teachers, distilled.id}
    with open_store(db) as s:
        assert all(s.get_run(r.id).status == "finished" for r in s.list_runs())
        assert {t: s.get_run(t).labels for t in teachers} == labels
        after = s.final_metrics(teachers).drop(columns="created_at").sort_values(
            ["run_id", "protocol", "selection", "threshold_policy", "split", "name"]).reset_index(drop=True)
    assert after.equals(before)
    for teacher in teachers:
        assert (tmp_path / "runs" / teacher / EARLIER_RECORD).is_file()
        assert any((tmp_path / "runs" / teacher).glob("*.pt"))
