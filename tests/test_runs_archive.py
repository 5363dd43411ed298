"""``kdcicam runs archive`` / ``runs import`` and the store's run dumps: a round trip keeps every row and
the files a resumed campaign reads; what the target already holds is never overwritten."""

from __future__ import annotations

import gzip
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kdcicam.cli import main
from kdcicam.core.errors import StoreError
from kdcicam.store import open_store
from kdcicam.store.run_folder import OWNER_FILE, write_owner_file

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
TEACHER, DISTILLED, WAITING = "tttt000011112222", "dddd000011112222", "wwww000011112222"
RECORD = {"image_id": "im0", "label": 2, "top5": [2, 1, 0, 3, 4], "top5_scores": [0.6, 0.1, 0.1, 0.1, 0.1],
          "box": [1, 2, 30, 40], "iou": 0.625, "correct_top1_cls": True, "correct_top5_cls": True,
          "correct_top1_loc": True, "correct_top5_loc": True, "correct_gt_known": True,
          "cam_mass_part": 0.25, "cam_mass_body": 0.5, "cam_mass_background": 0.25, "context_preferred": False,
          "correct_top1_cls_context_swapped": True}


def _run(store, root: Path, run_id: str, role: str, teachers: dict | None = None, finish: bool = True,
         cell: str | None = None, seed: int = 3) -> Path:
    """A run labelled table3/``cell`` (default: its role, no cell of the registry's) with three checkpoints
    and a gallery in its folder; finished with metrics, epochs and two records unless ``finish`` is False."""
    folder = root / run_id
    folder.mkdir(parents=True)
    for name in ("best_top1_cls.pt", "best_gt_known_loc.pt", "last.pt"):
        (folder / name).write_bytes(f"{run_id} {name}".encode())
    (folder / "gallery_last.npz").write_bytes(b"gallery " + run_id.encode())
    write_owner_file(folder, run_id, store.label)
    store.ensure_dataset("fp0", "synthetic", None, {"size": 96})
    store.get_or_create_run(run_id, config_hash="c" + run_id[:4], role=role, profile="medium", variant="reference",
                            dataset="synthetic", seed=seed, config={"teachers": teachers or {}},
                            dataset_fingerprint="fp0", artifacts_dir=str(folder))
    store.add_labels(run_id, "table3", cell or role)
    if finish:
        store.claim_run(run_id, pid=1, host="elsewhere")
        store.add_epoch_metrics(run_id, 0, "train", {"loss": 1.5, "nan": math.nan})
        store.set_final_metrics(run_id, "paper", "last", "val", "test", {"top1_cls": 0.5, "theta": 0.25})
        store.add_image_records(run_id, "standard", "last", "test", [RECORD, {**RECORD, "image_id": "im1", "box": None,
                                                                             "iou": None, "cam_mass_part": None}],
                                threshold_policy="val")
        store.finish_run(run_id, train_seconds=12.5, eval_seconds=2.0)
    return folder


@pytest.fixture
def source(tmp_path: Path) -> str:
    """A finished loc teacher, a finished student distilled from it, and a pending one that will be."""
    url = f"sqlite:///{tmp_path / 'a' / 'runs.db'}"
    (tmp_path / "a").mkdir()
    with open_store(url, clock=lambda: T0) as store:
        _run(store, tmp_path / "a" / "art", TEACHER, "loc_teacher")
        refs = {"loc_run": TEACHER, "loc_select": "gt_known_loc"}
        _run(store, tmp_path / "a" / "art", DISTILLED, "distilled", refs, cell="conpool+kd")
        _run(store, tmp_path / "a" / "art", WAITING, "distilled", {**refs, "loc_select": "top1_cls"}, finish=False,
             cell="conpool+kd", seed=0)
    return url


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    return done.value.code or 0


def _everything(url: str) -> dict:
    """Every stored value of the store's finished runs, artifact paths and row ids aside."""
    with open_store(url) as store:
        runs = {r.id: {k: v for k, v in r.to_dict().items() if k != "artifacts_dir"}
                for r in store.list_runs(status="finished")}
        dumps = {run_id: store.dump_run(run_id) for run_id in runs}
        finals = store.final_metrics(list(runs)).drop(columns="created_at").to_dict("records")
        records = {r: store.get_image_records(r, "standard", "last", "test", "val").to_dict("records") for r in runs}
        epochs = {r: store.epoch_metrics(r).drop(columns="created_at").to_dict("records") for r in runs}
    return {"runs": runs, "dumps": dumps, "finals": finals, "records": records, "epochs": epochs}


def test_a_store_archived_and_imported_holds_the_same_runs_rows_and_files(source, tmp_path, capsys):
    archive = tmp_path / "archive"
    assert _cli("runs", "archive", str(archive), "--db", source, "--json") == 0
    written = {w["run_id"]: w["files"] for w in json.loads(capsys.readouterr().out)["runs"]}
    # finished runs only; the pending student's teacher checkpoint goes in (it will be read), no other; the
    # gallery the report draws (Table 3's +KD cell at its lowest finished seed, selection "last"), no other
    assert written == {TEACHER: ["best_top1_cls.pt"], DISTILLED: ["gallery_last.npz"]}
    assert not (archive / WAITING).exists() and not (archive / TEACHER / "files" / OWNER_FILE).exists()

    target = f"sqlite:///{tmp_path / 'b' / 'runs.db'}"
    (tmp_path / "b").mkdir()
    assert _cli("runs", "import", str(archive), "--db", target, "--artifacts", str(tmp_path / "b" / "art")) == 0
    assert "imported 2 run(s), replaced 0" in capsys.readouterr().out
    before, after = _everything(source), _everything(target)
    assert json.dumps(after, sort_keys=True, default=str) == json.dumps(before, sort_keys=True, default=str)
    assert set(after["runs"]) == {TEACHER, DISTILLED} and len(after["records"][DISTILLED]) == 2
    assert after["records"][TEACHER][1]["box"] is None and after["records"][TEACHER][0]["iou"] == 0.625
    assert after["runs"][TEACHER]["finished_at"] == before["runs"][TEACHER]["finished_at"]
    with open_store(target) as store:
        teacher = store.get_run(TEACHER)
        assert store.get_dataset("fp0").meta == {"size": 96}
    # the files sit in the new artifacts folder, the store keeps the path relative, the owner file names the new store
    folder = tmp_path / "b" / "art" / TEACHER
    assert Path(teacher.artifacts_dir) == folder and (folder / "best_top1_cls.pt").read_bytes() == \
        f"{TEACHER} best_top1_cls.pt".encode()
    assert not (folder / "last.pt").exists()
    assert json.loads((folder / OWNER_FILE).read_text())["store"] == str(tmp_path / "b" / "runs.db")
    import sqlite3
    stored = sqlite3.connect(tmp_path / "b" / "runs.db").execute(
        "select artifacts_dir from runs where id = ?", (TEACHER,)).fetchone()[0]
    assert stored == f"art/{TEACHER}"


def test_archiving_again_rewrites_nothing_that_did_not_change(source, tmp_path, capsys):
    archive = tmp_path / "archive"
    assert _cli("runs", "archive", str(archive), "--db", source) == 0
    first = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in archive.rglob("*") if p.is_file()}
    assert _cli("runs", "archive", str(archive), "--db", source) == 0
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in archive.rglob("*") if p.is_file()} == first
    assert "archived 2 finished run(s)" in capsys.readouterr().out
    assert gzip.decompress((archive / TEACHER / "rows.json.gz").read_bytes()).startswith(b'{"dataset":')


def test_checkpoints_and_galleries_all_and_none(source, tmp_path, capsys):
    for choice, expected in (("all", {"best_top1_cls.pt", "best_gt_known_loc.pt", "last.pt", "gallery_last.npz"}),
                             ("none", set())):
        archive = tmp_path / choice
        assert _cli("runs", "archive", str(archive), "--db", source, "--checkpoints", choice, "--galleries", choice) == 0
        files = archive / TEACHER / "files"
        assert ({p.name for p in files.iterdir()} if files.exists() else set()) == expected


def test_prune_removes_the_checkpoints_no_longer_needed_and_nothing_else(source, tmp_path, capsys):
    archive = tmp_path / "archive"
    assert _cli("runs", "archive", str(archive), "--db", source) == 0
    (archive / TEACHER / "files" / "notes.txt").write_text("mine")
    with open_store(source) as store:  # the waiting student is trained: its teacher's checkpoint is not needed
        store.claim_run(WAITING, pid=1, host="h")
        store.finish_run(WAITING, train_seconds=1.0, eval_seconds=1.0)
    assert _cli("runs", "archive", str(archive), "--db", source) == 0
    assert (archive / TEACHER / "files" / "best_top1_cls.pt").exists()  # kept without --prune
    capsys.readouterr()
    assert _cli("runs", "archive", str(archive), "--db", source, "--prune", "--json") == 0
    runs = {w["run_id"]: w for w in json.loads(capsys.readouterr().out)["runs"]}
    assert runs[TEACHER]["pruned"] == ["best_top1_cls.pt"]
    assert not (archive / TEACHER / "files" / "best_top1_cls.pt").exists()
    assert (archive / TEACHER / "files" / "notes.txt").read_text() == "mine"  # not a file the archive names
    # the +KD gallery is now the lower seed's (the student just finished at seed 0)
    assert runs[DISTILLED]["pruned"] == ["gallery_last.npz"] and runs[WAITING]["files"] == ["gallery_last.npz"]


def test_the_report_galleries_are_those_of_each_scopes_lowest_seed(source, tmp_path, capsys):
    with open_store(source) as store:
        _run(store, tmp_path / "a" / "art", "eeee000011112222", "distilled", cell="conpool+kd", seed=1)
        _run(store, tmp_path / "a" / "art", "ffff000011112222", "student", cell="base", seed=4)
    assert _cli("runs", "archive", str(tmp_path / "archive"), "--db", source, "--json") == 0
    galleries = {w["run_id"][:4] for w in json.loads(capsys.readouterr().out)["runs"] if "gallery_last.npz" in w["files"]}
    assert galleries == {"eeee", "ffff"}  # +KD at seed 1 (not seed 3), Base at its only seed


def test_import_keeps_what_the_store_has_finished_and_replaces_a_pending_run(source, tmp_path, capsys):
    archive = tmp_path / "archive"
    assert _cli("runs", "archive", str(archive), "--db", source) == 0
    target = f"sqlite:///{tmp_path / 'b' / 'runs.db'}"
    (tmp_path / "b").mkdir()
    art = tmp_path / "b" / "art"
    with open_store(target) as store:  # the teacher finished here with other numbers; the student is pending
        mine = _run(store, art, TEACHER, "loc_teacher")
        store.set_final_metrics(TEACHER, "paper", "last", "val", "test", {"top1_cls": 0.75})
        _run(store, art, DISTILLED, "distilled", {"loc_run": TEACHER}, finish=False)
    (mine / "gallery_last.npz").write_bytes(b"my own gallery")
    capsys.readouterr()
    assert _cli("runs", "import", str(archive), "--db", target, "--artifacts", str(art), "--json") == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["kept"] == [TEACHER] and outcome["replaced"] == [DISTILLED] and outcome["added"] == []
    with open_store(target) as store:
        finals = store.final_metrics([TEACHER])
        assert finals.loc[finals["name"] == "top1_cls", "value"].tolist() == [0.75]
        assert store.get_run(DISTILLED).status == "finished"
        assert len(store.get_image_records(DISTILLED, "standard", "last", "test", "val")) == 2
    assert (mine / "gallery_last.npz").read_bytes() == b"my own gallery"
    # importing twice adds nothing
    assert _cli("runs", "import", str(archive), "--db", target, "--artifacts", str(art)) == 0
    assert "imported 0 run(s), replaced 0 pending or failed one(s); kept 2" in capsys.readouterr().out


@pytest.mark.parametrize("damage, message", [
    (lambda a: (a / TEACHER / "rows.json.gz").write_bytes(b"not gzip"), "not a readable run dump"),
    (lambda a: (a / TEACHER / "rows.json.gz").write_bytes(gzip.compress(b"[1, 2]")), "not a run dump"),
    (lambda a: (a / TEACHER).rename(a / "xxxx000011112222"), "holds run tttt00001111, not xxxx00001111"),
])
def test_a_damaged_archive_is_one_line_and_imports_nothing(source, tmp_path, capsys, damage, message):
    archive = tmp_path / "archive"
    assert _cli("runs", "archive", str(archive), "--db", source) == 0
    damage(archive)
    capsys.readouterr()
    db = tmp_path / "b.db"
    assert _cli("runs", "import", str(archive), "--db", str(db), "--artifacts", str(tmp_path / "art")) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not db.exists() and not (tmp_path / "art").exists()


def test_bad_arguments_are_one_line(source, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in ((["archive", str(tmp_path / "x"), "--db", source, "--checkpoints", "some"],
                           "--checkpoints 'some': must be one of needed, all, none"),
                          (["archive", str(tmp_path / "file"), "--db", source], "is a file, not an archive folder"),
                          (["archive", str(tmp_path / "x"), "--db", str(tmp_path / "none.db")], "no run store at"),
                          (["import", str(tmp_path / "nowhere")], "no archive folder there"),
                          (["import", str(empty)], "no archived run in it")):
        assert _cli("runs", *args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_a_dump_from_another_schema_or_format_is_refused(source):
    with open_store(source) as store:
        dump = store.dump_run(TEACHER)
        with pytest.raises(StoreError, match="not a run dump of format 1"):
            store.load_run({**dump, "format": 99}, None)
        dump["run"] = {**dump["run"], "id": "nnnn000011112222", "colour": "red"}
        with pytest.raises(StoreError, match="column.s. this store does not: colour"):
            store.load_run(dump, None)
        assert store.load_run(store.dump_run(TEACHER), None) == "kept"
        uneven = store.dump_run(TEACHER)
        uneven["run"]["id"] = "mmmm000011112222"
        uneven["image_records"]["iou"].pop()
        with pytest.raises(StoreError, match=r"columns have different lengths \(\[1, 2\]\)"):
            store.load_run(uneven, None)
        assert [r.id for r in store.list_runs() if r.id.startswith("mmmm")] == []
