"""``kdcicam runs list|show``: tables, JSON, filters, friendly empty store, one-line errors."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from kdcicam.cli import app, main
from kdcicam.cli.runs_format import headline
from kdcicam.store import open_store
from kdcicam.store.run_folder import append_attempt, write_owner_file

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
RUN_A = "aaaa111122223333"
RUN_B = "bbbb444455556666"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


@pytest.fixture
def filled(db_url: str) -> str:
    """A store with a finished, evaluated student (A) and a failed cls teacher (B)."""
    with open_store(db_url, clock=lambda: T0) as store:
        for run_id, role in ((RUN_A, "student"), (RUN_B, "cls_teacher")):
            store.get_or_create_run(run_id, config_hash="c" + run_id[:4], role=role, profile="smoke",
                                    variant="reference", dataset="synthetic", seed=1,
                                    config={"profile": "smoke", "eval": {"theta": 0.14}})
            store.claim_run(run_id, pid=42, host="box")
        store.set_final_metrics(RUN_A, "paper", "last", "fixed", "test",
                                {"top1_cls": 0.8125, "top1_loc": 0.5, "gt_known_loc": 0.625})
        store.set_final_metrics(RUN_A, "standard", "top1_loc", "val", "val", {"maxboxacc_v2": 0.4})
        store.add_epoch_metrics(RUN_A, 0, "train", {"loss": 2.5})
        store.add_epoch_metrics(RUN_A, 1, "train", {"loss": 1.5})
        store.add_epoch_metrics(RUN_A, 1, "val", {"top1_cls": 0.75})
        store.finish_run(RUN_A, train_seconds=125.0, eval_seconds=4.0)
        store.set_final_metrics(RUN_B, "standard", "top1_cls", "oracle", "val", {"top1_cls": 0.25})
        store.fail_run(RUN_B, "loss diverged at epoch 3")
    return db_url


def test_list_without_a_store_is_friendly_and_creates_nothing(runner, tmp_path):
    result = runner.invoke(app, ["runs", "list", "--db", str(tmp_path / "runs.db")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("no runs yet")
    assert not (tmp_path / "runs.db").exists()
    result = runner.invoke(app, ["runs", "list", "--db", str(tmp_path / "runs.db"), "--json"])
    assert json.loads(result.output) == []


def test_list_of_an_empty_store(runner, db_url):
    open_store(db_url).close()
    result = runner.invoke(app, ["runs", "list", "--db", db_url])
    assert (result.exit_code, result.output) == (0, "no runs yet\n")


def test_list_table(runner, filled):
    result = runner.invoke(app, ["runs", "list", "--db", filled])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row_a = next(line for line in lines if "aaaa11112222" in line)
    assert RUN_A not in result.output  # 12-character ids
    assert row_a.split() == ["aaaa11112222", "student", "smoke", "reference", "synthetic", "1",
                             "finished", "0.8125", "0.5", "0.625", "2025-03-01", "12:00"]
    row_b = next(line for line in lines if "bbbb44445555" in line)
    # B has only a standard/top1_cls/oracle/val evaluation, and only top1_cls of the headline three.
    assert row_b.split() == ["bbbb44445555", "cls_teacher", "smoke", "reference", "synthetic", "1",
                             "failed", "0.25", "-", "-", "standard/top1_cls/oracle/val",
                             "2025-03-01", "12:00"]


def test_list_json_and_filters(runner, filled):
    result = runner.invoke(app, ["runs", "list", "--db", filled, "--json"])
    runs = json.loads(result.output)
    assert [run["id"] for run in runs] == [RUN_A, RUN_B]
    assert runs[0]["headline"] == {"top1_cls": 0.8125, "top1_loc": 0.5, "gt_known_loc": 0.625}
    assert runs[0]["headline_from"] == "paper/last/fixed/test"
    assert runs[1]["message"] == "loss diverged at epoch 3"
    assert runs[0]["created_at"] == "2025-03-01T12:00:00+00:00"
    failed = json.loads(runner.invoke(app, ["runs", "list", "--db", filled, "--json",
                                            "--status", "failed"]).output)
    assert [run["id"] for run in failed] == [RUN_B]
    students = json.loads(runner.invoke(app, ["runs", "list", "--db", filled, "--json",
                                              "--role", "student"]).output)
    assert [run["id"] for run in students] == [RUN_A]
    none = runner.invoke(app, ["runs", "list", "--db", filled, "--role", "loc_teacher"])
    assert (none.exit_code, none.output) == (0, "no runs match these filters\n")


def test_list_rejects_an_unknown_status(runner, filled):
    result = runner.invoke(app, ["runs", "list", "--db", filled, "--status", "done"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())  # click's error box wraps the message
    assert "Invalid value for --status: must be one of pending, running, finished," in text


def test_db_comes_from_kdcicam_db_when_no_option(runner, filled, tmp_path):
    result = runner.invoke(app, ["runs", "list", "--json"], env={"KDCICAM_DB": filled})
    assert len(json.loads(result.output)) == 2
    # --db wins over the environment.
    result = runner.invoke(app, ["runs", "list", "--db", str(tmp_path / "other.db")],
                           env={"KDCICAM_DB": filled})
    assert result.output.startswith("no runs yet")


def test_show_by_prefix(runner, filled):
    result = runner.invoke(app, ["runs", "show", "aaaa", "--db", filled])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"run                                 {RUN_A}" in out
    assert "status                              finished" in out
    assert "2 min 5 s (125 s)" in out  # 125 s = 2 min 5 s
    assert "last epoch 1: train: loss=1.5; val: top1_cls=0.75" in out
    # one table per protocol and split: a row per metric, a column per (checkpoint, θ policy)
    assert "final metrics (columns: checkpoint selection / θ policy):" in out and "paper protocol, test split" in out
    rows = {cells[0]: cells[1:] for line in out.splitlines() if line.startswith("│")
            for cells in [[c.strip() for c in line.split("│")[1:-1]]]}
    assert rows["gt_known_loc"] == ["0.625"] and rows["top1_cls"] == ["0.8125"] and rows["top1_loc"] == ["0.5"]
    assert '"theta": 0.14' in out  # the config


def test_show_json(runner, filled):
    result = runner.invoke(app, ["runs", "show", RUN_B, "--db", filled, "--json"])
    payload = json.loads(result.output)
    assert payload["run"]["status"] == "failed"
    assert payload["run"]["config"] == {"profile": "smoke", "eval": {"theta": 0.14}}
    assert payload["final_metrics"] == [{"protocol": "standard", "selection": "top1_cls",
                                         "threshold_policy": "oracle", "split": "val",
                                         "metrics": {"top1_cls": 0.25}}]
    assert payload["last_epoch"] is None
    a = json.loads(runner.invoke(app, ["runs", "show", "aaaa1", "--db", filled, "--json"]).output)
    assert a["last_epoch"] == {"epoch": 1, "train": {"loss": 1.5}, "val": {"top1_cls": 0.75}}
    assert len(a["final_metrics"]) == 2


def test_show_lists_each_attempt_and_says_when_devices_or_commits_differ(runner, tmp_path):
    db, folder = tmp_path / "runs.db", tmp_path / "runs" / RUN_A
    with open_store(f"sqlite:///{db}") as store:
        store.get_or_create_run(RUN_A, config_hash="c", role="student", profile="medium", variant="reference",
                                dataset="synthetic", seed=1, config={})
        store.claim_run(RUN_A, pid=9, host="box", device="cpu (AMD EPYC, x86_64, AVX2, 1 threads)",
                        git_commit="4692eae9cd6b", artifacts_dir=str(folder))
    plain = runner.invoke(app, ["runs", "show", RUN_A, "--db", str(db)])
    assert plain.exit_code == 0 and "attempts" not in plain.output  # no log: nothing to list
    append_attempt(folder, {"claimed_at": "2026-12-03T16:07:50+00:00", "device": "cpu (x86_64, 1 threads)",
                            "git_commit": "dddb57f3f5f1", "host": "box", "pid": 7})
    append_attempt(folder, {"claimed_at": "2026-12-03T16:41:38+00:00",
                            "device": "cpu (AMD EPYC, x86_64, AVX2, 1 threads)", "git_commit": "4692eae9cd6b",
                            "host": "box", "pid": 9})
    out = runner.invoke(app, ["runs", "show", RUN_A, "--db", str(db)]).output
    assert "attempts: 2 (on devices and commits that differ)" in out
    assert "  2026-12-03T16:07:50+00:00  cpu (x86_64, 1 threads)  commit dddb57f3f5f1  box / 7" in out
    assert "  2026-12-03T16:41:38+00:00  cpu (AMD EPYC, x86_64, AVX2, 1 threads)  commit 4692eae9cd6b  box / 9" in out
    payload = json.loads(runner.invoke(app, ["runs", "show", RUN_A, "--db", str(db), "--json"]).output)
    assert [a["pid"] for a in payload["attempts"]] == [7, 9]


def test_show_errors_are_one_line(filled, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["runs", "show", "cccc", "--db", filled])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: no run matches 'cccc'\n"
    with pytest.raises(SystemExit):
        main(["runs", "show", "aaaa", "--db", str(tmp_path / "missing.db")])
    assert capsys.readouterr().err.startswith("error: no run store at ")
    (tmp_path / "notes.db").write_text("not a database")
    with pytest.raises(SystemExit):
        main(["runs", "list", "--db", str(tmp_path / "notes.db")])
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a SQLite database" in err and err.count("\n") == 1


def _finals(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["protocol", "selection", "threshold_policy", "split", "name", "value"])


def test_headline_prefers_paper_last_fixed_test():
    frame = _finals([
        ("standard", "last", "fixed", "test", "top1_cls", 0.1),
        ("paper", "top1_loc", "fixed", "test", "top1_cls", 0.2),
        ("paper", "last", "val", "test", "top1_cls", 0.3),
        ("paper", "last", "fixed", "val", "top1_cls", 0.4),
        ("paper", "last", "fixed", "test", "top1_loc", 0.5),
        ("paper", "last", "fixed", "test", "theta", 0.14),  # not a headline metric
    ])
    assert headline(frame) == ("paper/last/fixed/test", {"top1_loc": 0.5})
    # Without it: same protocol/selection/policy on val beats anything worse ranked earlier.
    assert headline(frame.iloc[:4]) == ("paper/last/fixed/val", {"top1_cls": 0.4})
    assert headline(frame.iloc[:1]) == ("standard/last/fixed/test", {"top1_cls": 0.1})
    assert headline(frame.iloc[5:]) == (None, {})
    nan = _finals([("paper", "last", "fixed", "test", "top1_loc", float("nan"))])
    assert headline(nan) == ("paper/last/fixed/test", {"top1_loc": None})  # JSON-safe


def test_running_runs_show_their_epochs_and_whether_their_process_is_gone(runner, db_url):
    import os
    import socket

    live, gone = "cccc777788889999", "dddd000011112222"
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    with open_store(db_url) as store:
        for run_id in (live, gone):
            store.get_or_create_run(run_id, config_hash="c" + run_id[:4], role="student", profile="smoke",
                                    variant="reference", dataset="synthetic", seed=0,
                                    config={"train": {"epochs": 12}})
        # the live run's holder is this test's parent process (alive, heartbeat fresh); the other one's is a
        # pid no process can have on this host (pid_max itself)
        store.claim_run(live, pid=os.getppid(), host=socket.gethostname())
        for epoch in range(3):
            store.add_epoch_metrics(live, epoch, "train", {"loss": 1.0})
        store.add_epoch_metrics(live, 3, "val", {"top1_cls": 0.5})  # a validation row is not a trained epoch
        store.claim_run(gone, pid=pid_max, host=socket.gethostname())
    result = runner.invoke(app, ["runs", "list", "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    progress = {r["id"]: r["progress"] for r in json.loads(result.output)}
    assert progress[live] == {"epochs_done": 3, "epochs": 12, "holder_gone": None}
    assert progress[gone]["epochs_done"] == 0 and f"process {pid_max} on this host" in progress[gone]["holder_gone"]
    table = runner.invoke(app, ["runs", "list", "--db", db_url]).output
    assert "running 3/12" in table and "stalled 0/12" in table and "stalled: running in the store" in table
    shown = runner.invoke(app, ["runs", "show", "dddd", "--db", db_url]).output
    assert "running, 0 of 12 epochs done, stalled" in shown and "resumes it from its last checkpoint" in shown


def _kd_store(db_url: str, tmp_path: Path) -> dict[str, Path]:
    """A finished teacher T, a finished student S distilled from it, and an unrelated finished run U, each
    with an artifact folder holding a checkpoint."""
    folders = {}
    with open_store(db_url) as store:
        for run_id, role, config in (("tttt000011112222", "loc_teacher", {}),
                                     ("ssss000011112222", "distilled", {"teachers": {"loc_run": "tttt000011112222"}}),
                                     ("uuuu000011112222", "student", {})):
            folder = tmp_path / "runs" / run_id
            folder.mkdir(parents=True)
            (folder / "last.pt").write_bytes(b"checkpoint")
            write_owner_file(folder, run_id, store.label)
            store.get_or_create_run(run_id, config_hash="c" + run_id[:4], role=role, profile="smoke",
                                    variant="reference", dataset="synthetic", seed=0, config=config,
                                    artifacts_dir=str(folder))
            store.claim_run(run_id, pid=1, host="elsewhere")
            store.add_epoch_metrics(run_id, 0, "train", {"loss": 1.0})
            store.set_final_metrics(run_id, "paper", "last", "fixed", "test", {"top1_cls": 0.5})
            store.finish_run(run_id, train_seconds=1.0, eval_seconds=1.0)
            folders[run_id[:4]] = folder
    return folders


def _ids(db_url: str) -> set[str]:
    with open_store(db_url) as store:
        return {r.id[:4] for r in store.list_runs()}


def test_delete_removes_runs_their_rows_and_folders_and_nothing_else(db_url, tmp_path, capsys):
    folders = _kd_store(db_url, tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["runs", "delete", "ssss", "--db", db_url, "--yes", "--json"])
    assert done.value.code in (0, None)
    assert json.loads(capsys.readouterr().out)["deleted"] == ["ssss000011112222"]
    assert _ids(db_url) == {"tttt", "uuuu"} and not folders["ssss"].exists()
    assert folders["tttt"].joinpath("last.pt").exists() and not list((tmp_path / "runs").glob(".deleting-*"))
    with open_store(db_url) as store:
        assert set(store.final_metrics()["run_id"]) == {"tttt000011112222", "uuuu000011112222"}
        assert store.epoch_metrics("ssss000011112222").empty
    # --keep-files leaves the folder
    with pytest.raises(SystemExit):
        main(["runs", "delete", "uuuu", "--db", db_url, "--yes", "--keep-files"])
    assert "deleted 1 run(s): uuuu00001111." in capsys.readouterr().out
    assert _ids(db_url) == {"tttt"} and folders["uuuu"].exists()


def test_delete_refuses_a_teacher_with_students_a_live_run_and_unknown_ids(db_url, tmp_path, capsys, monkeypatch):
    import io
    import os
    import socket

    folders = _kd_store(db_url, tmp_path)
    with pytest.raises(SystemExit) as refused:
        main(["runs", "delete", "tttt", "--db", db_url, "--yes"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.count("\n") == 1
    assert "is the teacher of 1 other run(s) (ssss00001111)" in err and "runs delete tttt00001111 ssss00001111" in err
    with pytest.raises(SystemExit) as unknown:
        main(["runs", "delete", "ssss", "zzzz", "--db", db_url, "--yes"])
    assert unknown.value.code == 2 and capsys.readouterr().err == "error: no run matches 'zzzz'\n"
    with open_store(db_url) as store:  # a run this test's parent process is training
        store.get_or_create_run("llll000011112222", config_hash="cllll", role="student", profile="smoke",
                                variant="reference", dataset="synthetic", seed=0, config={})
        store.claim_run("llll000011112222", pid=os.getppid(), host=socket.gethostname())
    with pytest.raises(SystemExit) as live:
        main(["runs", "delete", "llll", "--db", db_url, "--yes"])
    assert live.value.code == 2 and "is being trained by process" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))  # asked, and answered no
    with pytest.raises(SystemExit) as declined:
        main(["runs", "delete", "uuuu", "--db", db_url])
    assert declined.value.code == 2 and "nothing deleted" in capsys.readouterr().err
    assert _ids(db_url) == {"tttt", "ssss", "uuuu", "llll"} and all(f.joinpath("last.pt").exists()
                                                                   for f in folders.values())
    # the teacher together with its student: allowed
    with pytest.raises(SystemExit):
        main(["runs", "delete", "tttt", "ssss", "--db", db_url, "--yes"])
    assert _ids(db_url) == {"uuuu", "llll"}


def test_delete_keeps_a_foreign_folder_a_stranger_run_folder_and_the_original_of_a_copied_store(
        db_url, tmp_path, capsys):
    import shutil
    import sqlite3

    folders = _kd_store(db_url, tmp_path)
    # a copied project folder: deleting in the copy removes the copy's files, never the original's
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(tmp_path / "runs.db", copy / "runs.db")
    shutil.copytree(tmp_path / "runs", copy / "runs")
    copy_url = f"sqlite:///{copy / 'runs.db'}"
    with open_store(copy_url) as store:
        assert store.get_run("uuuu000011112222").artifacts_dir == str(copy / "runs" / "uuuu000011112222")
    with pytest.raises(SystemExit):
        main(["runs", "delete", "uuuu", "--db", copy_url, "--yes"])
    capsys.readouterr()
    assert not (copy / "runs" / "uuuu000011112222").exists() and folders["uuuu"].joinpath("last.pt").exists()
    # a damaged or hostile store naming a folder that is not the run's: the row goes, the folder stays
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    stranger = tmp_path / "elsewhere" / "tttt000011112222"  # named after the run, but not its folder
    stranger.mkdir(parents=True)
    (stranger / "data.bin").write_bytes(b"x")
    raw = sqlite3.connect(tmp_path / "runs.db")
    with raw:
        raw.execute("UPDATE runs SET artifacts_dir = ? WHERE id LIKE 'ssss%'", (str(foreign),))
        raw.execute("UPDATE runs SET artifacts_dir = ? WHERE id LIKE 'tttt%'", (str(stranger),))
    raw.close()
    with pytest.raises(SystemExit):
        main(["runs", "delete", "ssss", "tttt", "--db", db_url, "--yes", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["folders_removed"] == [] and len(report["folders_kept"]) == 2
    assert (foreign / "thesis.tex").exists() and (stranger / "data.bin").exists()
    assert _ids(db_url) == {"uuuu"}


def test_delete_shows_the_folders_it_will_remove_before_asking(db_url, tmp_path, capsys, monkeypatch):
    import io

    folders = _kd_store(db_url, tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    with pytest.raises(SystemExit):
        main(["runs", "delete", "uuuu", "--db", db_url])
    captured = capsys.readouterr()
    assert f"remove {folders['uuuu']}" in captured.err + captured.out


def test_delete_puts_the_folders_back_when_the_store_refuses(db_url, tmp_path, capsys, monkeypatch):
    from kdcicam.core.errors import StoreError
    from kdcicam.store import Store

    folders = _kd_store(db_url, tmp_path)

    def locked(self, run_ids):
        raise StoreError("run store: database is locked")

    monkeypatch.setattr(Store, "delete_runs", locked)
    with pytest.raises(SystemExit) as failed:
        main(["runs", "delete", "uuuu", "--db", db_url, "--yes"])
    assert failed.value.code == 2 and "database is locked" in capsys.readouterr().err
    assert folders["uuuu"].joinpath("last.pt").exists() and _ids(db_url) == {"tttt", "ssss", "uuuu"}


def test_no_help_text_uses_square_brackets_which_rich_would_swallow():
    # Typer renders help through rich markup: "[default: ...]" or "cell[@seed]" vanished from --help
    import typer

    def walk(cmd, path):
        yield path, cmd.help or ""
        for param in getattr(cmd, "params", []):
            yield f"{path} {param.name}", getattr(param, "help", None) or ""
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            yield from walk(sub, f"{path} {name}")

    offending = [(where, text) for where, text in walk(typer.main.get_command(app), "kdcicam") if "[" in text]
    assert offending == []


def test_list_filters_by_table_cell_and_seed(runner, db_url, tmp_path):
    _kd_store(db_url, tmp_path)
    with open_store(db_url) as store:
        store.add_labels("tttt000011112222", "table5", "loc_teacher_by_gt_known")
        store.add_labels("ssss000011112222", "table3", "conpool+kd")
        store.add_labels("uuuu000011112222", "table3", "base")

    def ids(*args):
        out = runner.invoke(app, ["runs", "list", "--db", db_url, "--json", *args])
        assert out.exit_code == 0, out.output
        return sorted(r["id"][:4] for r in json.loads(out.output))

    assert ids("--cell", "table3") == ["ssss", "uuuu"]
    assert ids("--cell", "table3/conpool+kd") == ["ssss"]
    assert ids("--cell", "table5", "--seed", "0") == ["tttt"] and ids("--seed", "1") == []
    assert runner.invoke(app, ["runs", "list", "--db", db_url, "--cell", "table4"]).output == "no runs match these filters\n"


def test_export_writes_tidy_csv_of_finals_epochs_and_records(runner, db_url, tmp_path, capsys):
    import io

    _kd_store(db_url, tmp_path)
    with open_store(db_url) as store:
        store.add_labels("uuuu000011112222", "table3", "base")
        store.add_image_records("uuuu000011112222", "paper", "last", "test", [
            {"image_id": f"im{i}", "label": 0, "top5": [0, 1, 2, 3, 4], "top5_scores": [0.6, 0.1, 0.1, 0.1, 0.1],
             "box": [0, 0, 1, 1], "iou": 0.5, "correct_top1_cls": True, "correct_top5_cls": True,
             "correct_top1_loc": i == 0, "correct_top5_loc": i == 0, "correct_gt_known": i == 0} for i in range(3)])
    final = pd.read_csv(io.StringIO(runner.invoke(app, ["runs", "export", "--db", db_url]).output))
    assert len(final) == 3 and set(final["name"]) == {"top1_cls"} and set(final["value"]) == {0.5}
    assert {"run_id", "role", "seed", "labels", "protocol", "selection", "threshold_policy", "split"} <= set(final)
    base = pd.read_csv(io.StringIO(runner.invoke(app, ["runs", "export", "--db", db_url, "--cell", "table3/base",
                                                       "--what", "records"]).output))
    assert list(base["image_id"]) == ["im0", "im1", "im2"] and list(base["correct_gt_known"]) == [True, False, False]
    assert set(base["labels"]) == {"table3/base"} and set(base["run_id"]) == {"uuuu000011112222"}
    out = tmp_path / "epochs.csv"
    done = runner.invoke(app, ["runs", "export", "--db", db_url, "--what", "epochs", "--out", str(out)])
    assert done.exit_code == 0 and done.output.startswith("wrote 3 row(s) of 3 run(s)")
    assert set(pd.read_csv(out)["name"]) == {"loss"}
    for args, message in ((["--what", "all"], "--what 'all': must be one of final, epochs, records"),
                          (["--out", str(tmp_path / "no" / "x.csv")], "does not exist")):
        with pytest.raises(SystemExit) as bad:
            main(["runs", "export", "--db", db_url, *args])
        err = capsys.readouterr().err
        assert bad.value.code == 2 and message in err and err.count("\n") == 1


def test_a_teacher_an_unfinished_ablate_plans_to_use_cannot_be_deleted(tmp_path, capsys, monkeypatch):
    """ablate records every planned run before any trains: its students name their teachers in the store."""
    from kdcicam.execution import runner

    monkeypatch.setenv("KDCICAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDCICAM_JOBS", "1")
    monkeypatch.delenv("KDCICAM_DB", raising=False)

    def stopped(runs, ctx, **kwargs):  # the ablate is stopped before its first run trains
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "execute_plan", stopped)
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    with pytest.raises(SystemExit):
        main(["ablate", "table3", "--profile", "smoke", "--db", db, "--artifacts", str(tmp_path / "runs"), "--quiet"])
    capsys.readouterr()
    with open_store(db) as store:
        runs = store.list_runs()
    teachers = {r.id for r in runs if r.role in ("cls_teacher", "loc_teacher")}
    assert teachers and {r.status for r in runs} == {"pending"}
    with pytest.raises(SystemExit) as refused:
        main(["runs", "delete", min(teachers), "--db", db, "--yes"])
    assert refused.value.code == 2 and "is the teacher of" in capsys.readouterr().err


def test_ablate_refuses_a_corrupt_checkpoint_of_a_teacher_trained_earlier(db_url, tmp_path):
    from types import SimpleNamespace

    from kdcicam.cli.run_setup import check_finished_teachers
    from kdcicam.core.config import TeacherRefs
    from kdcicam.core.errors import RunError

    folders = _kd_store(db_url, tmp_path)  # last.pt holds b"checkpoint": no loadable checkpoint
    student = SimpleNamespace(run_id="pppp000011112222",  # a planned student, not stored yet
                              cfg=SimpleNamespace(teachers=TeacherRefs(loc_run="tttt000011112222", loc_select="last")))
    unknown = SimpleNamespace(run_id="qqqq000011112222",
                              cfg=SimpleNamespace(teachers=TeacherRefs(cls_run="nnnn000011112222")))  # planned only
    with open_store(db_url) as store:
        check_finished_teachers([unknown], store)
        with pytest.raises(RunError, match="cannot load checkpoint"):
            check_finished_teachers([student, unknown], store)
        # a student already finished (ssss distils from tttt) reads no teacher again: not checked
        finished = SimpleNamespace(run_id="ssss000011112222", cfg=student.cfg)
        check_finished_teachers([finished, unknown], store)
    assert folders["tttt"].joinpath("last.pt").exists()
