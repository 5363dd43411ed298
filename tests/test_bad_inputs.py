"""The bad-input catalogue (docs/bad-inputs.md): every entry is one case here.

Each case runs the real command-line entry point (``kdcicam.cli.main``, the function behind the
``kdcicam`` script) in-process and checks the four promises: a clear message on ONE line, an exit
code != 0, no traceback, and nothing already stored changed (the run store's content is compared
before and after). The case ids are the catalogue's ids.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from _bad_cases_headers import HEADERS
from _bad_cases_more import MORE
from _cli import run_cli
from PIL import Image

from kdcicam.registry.ablations import DEFAULT_REGISTRY
from kdcicam.store import open_store

# ----------------------------------------------------------------------------- workspace


def write_cub(root: Path, classes: int = 2, per_class: int = 3) -> Path:
    """A tiny valid dataset in the CUB-200-2011 layout (2 classes x 3 images, 24x20 JPEGs)."""
    (root / "images").mkdir(parents=True)
    lines = {k: [] for k in ("images", "labels", "split", "boxes")}
    i = 0
    for c in range(classes):
        d = root / "images" / f"{c + 1:03d}.class{c}"
        d.mkdir()
        for j in range(per_class):
            i += 1
            Image.new("RGB", (24, 20), (40 * c, 90, 20 * j)).save(d / f"im{j}.jpg")
            lines["images"].append(f"{i} {d.name}/im{j}.jpg")
            lines["labels"].append(f"{i} {c + 1}")
            lines["split"].append(f"{i} {1 if j < per_class - 1 else 0}")
            lines["boxes"].append(f"{i} 2.0 3.0 10.0 8.0")
    (root / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (root / "bounding_boxes.txt").write_text("\n".join(lines["boxes"]) + "\n")
    (root / "classes.txt").write_text("".join(f"{c + 1} {c + 1:03d}.class{c}\n" for c in range(classes)))
    return root


def _fake_run(store, run_id: str, fingerprint: str, image_ids: list[str], labels: dict) -> None:
    store.ensure_dataset(fingerprint, "synthetic", "/nowhere", {})
    store.get_or_create_run(run_id, config_hash=run_id[:16], role="student", profile="smoke", variant="reference",
                            dataset="synthetic", seed=0, config={"variant": "reference"},
                            dataset_fingerprint=fingerprint)
    for table, cells in labels.items():
        for cell in cells:
            store.add_labels(run_id, table, cell)
    store.claim_run(run_id, pid=1, host="test")
    store.set_final_metrics(run_id, "paper", "last", "fixed", "test", {"top1_cls": 0.5, "top1_loc": 0.25})
    store.add_image_records(run_id, "paper", "last", "test", [
        {"image_id": im, "label": 0, "top5": [0, 1], "top5_scores": [0.6, 0.4], "box": [0, 0, 4, 4], "iou": 0.6,
         "correct_top1_cls": True, "correct_top5_cls": True, "correct_top1_loc": True, "correct_top5_loc": True,
         "correct_gt_known": True} for im in image_ids])
    store.finish_run(run_id, train_seconds=1.0, eval_seconds=1.0)


@pytest.fixture()
def ws(tmp_path, monkeypatch):
    """A workspace: a valid dataset, a store with three finished runs, a registry copy, a clean env."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDCICAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KDCICAM_DB", raising=False)
    data = write_cub(tmp_path / "cub")
    db = tmp_path / "runs.db"
    store = open_store(f"sqlite:///{db}")
    _fake_run(store, "abcd1111" + "0" * 8, "fp-one", ["a.jpg", "b.jpg"], {"table3": ["base"]})
    _fake_run(store, "abcd2222" + "0" * 8, "fp-one", ["a.jpg", "b.jpg"], {"table3": ["conpool"]})
    _fake_run(store, "ef990000" + "0" * 8, "fp-two", ["c.jpg", "d.jpg"], {"table4": ["student"]})
    store.close()
    reg = tmp_path / "ablations"
    shutil.copytree(DEFAULT_REGISTRY, reg)
    return {"root": tmp_path, "data": data, "db": db, "url": f"sqlite:///{db}", "reg": reg}


def snapshot(db: Path) -> str:
    """The store's content (runs, metrics, records, datasets) as canonical JSON."""
    if not db.exists():
        return "absent"
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table' order by name")]
        dump = {t: sorted(map(repr, con.execute(f'select * from "{t}"').fetchall())) for t in tables}
    except sqlite3.DatabaseError:  # a damaged store (S07): its bytes must not change
        import hashlib

        return hashlib.sha256(db.read_bytes()).hexdigest()
    finally:
        con.close()
    return json.dumps(dump, sort_keys=True)


def _rows_of(db: Path, run_ids: tuple[str, ...]) -> str:
    """The stored rows that belong to the given runs (runs, metrics, records, labels), canonical."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    marks = ",".join("?" * len(run_ids))
    try:
        dump = {
            "runs": sorted(map(repr, con.execute(f"select * from runs where id in ({marks})", run_ids))),
            "final": sorted(map(repr, con.execute(f"select * from final_metrics where run_id in ({marks})", run_ids))),
            "records": sorted(map(repr, con.execute(f"select * from image_records where run_id in ({marks})", run_ids))),
        }
    finally:
        con.close()
    return json.dumps(dump)


# ----------------------------------------------------------------------------- the catalogue

@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[dict], list[str]]
    expect: str  # a substring of the one-line message
    setup: Callable[[dict], None] | None = None
    code: int = 2


def _edit(rel: str, fn: Callable[[str], str]) -> Callable[[dict], None]:
    def go(w: dict) -> None:
        p = w["data"] / rel
        p.write_text(fn(p.read_text()))
    return go


def _train_on_data(w: dict) -> list[str]:
    return ["train", "--dataset", "cub", "--data", str(w["data"]), "--profile", "smoke", "--db", w["url"]]


def _check_data(w: dict) -> list[str]:
    return ["data", "check", str(w["data"])]


def _first_image(w: dict) -> Path:
    return w["data"] / "images" / "001.class0" / "im0.jpg"


def _write_weights(obj) -> Callable[[dict], None]:
    def go(w: dict) -> None:
        torch.save(obj() if callable(obj) else obj, w["root"] / "weights.pth")
    return go


def _vgg_state_without(prefix: str | None):
    def make():
        from torchvision.models import vgg16

        sd = {k: v for k, v in vgg16(weights=None).features.state_dict().items()}
        sd = {f"features.{k}": v for k, v in sd.items()}
        if prefix:
            sd = {k: v for k, v in sd.items() if not k.startswith(prefix)}
        return sd
    return make


def _inception_state():
    from torchvision.models import inception_v3

    return {k: v for k, v in inception_v3(weights=None, aux_logits=False, init_weights=False).state_dict().items()
            if k.startswith("Conv2d_1a")}


class _NotAStateDict:
    pass


def _write_pickle(w: dict) -> None:
    torch.save({"model": _NotAStateDict()}, w["root"] / "weights.pth")


def _newer_schema(w: dict) -> None:
    import sqlite3

    con = sqlite3.connect(w["db"])
    con.execute("update alembic_version set version_num = 'f999_from_the_future'")
    con.commit()
    con.close()


def _weights_train(w: dict) -> list[str]:
    return ["train", "--profile", "smoke", "--set", "model.width=1.0", "--set", "model.batch_norm=false",
            "--weights", str(w["root"] / "weights.pth"), "--db", w["url"]]


def _registry_edit(file: str, old: str, new: str) -> Callable[[dict], None]:
    def go(w: dict) -> None:
        p = w["reg"] / file
        p.write_text(p.read_text().replace(old, new, 1))
    return go


CASES = [
    # ---- datasets (D)
    Case("D01-corrupt-jpeg", _check_data, "unreadable image",
         setup=lambda w: _first_image(w).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")),
    Case("D02-truncated-jpeg", lambda w: _check_data(w) + ["--deep"], "im0.jpg",
         setup=lambda w: _first_image(w).write_bytes(_first_image(w).read_bytes()[:60])),
    Case("D03-empty-image-file", _check_data, "im0.jpg", setup=lambda w: _first_image(w).write_bytes(b"")),
    Case("D04-missing-column", _check_data, "images.txt:1", setup=_edit("images.txt", lambda t: t.replace("1 ", "", 1))),
    Case("D05-extra-column", _check_data, "image_class_labels.txt:1",
         setup=_edit("image_class_labels.txt", lambda t: t.replace("1 1\n", "1 1 7\n", 1))),
    Case("D06-ids-disagree", _check_data, "image_class_labels.txt",
         setup=_edit("image_class_labels.txt", lambda t: t.replace("1 1\n", "99 1\n", 1))),
    Case("D07-box-outside-image", _check_data, "bounding_boxes.txt:1",
         setup=_edit("bounding_boxes.txt", lambda t: t.replace("1 2.0 3.0 10.0 8.0", "1 2.0 3.0 100.0 8.0", 1))),
    Case("D08-degenerate-box", _check_data, "bounding_boxes.txt:1",
         setup=_edit("bounding_boxes.txt", lambda t: t.replace("1 2.0 3.0 10.0 8.0", "1 2.0 3.0 0.0 8.0", 1))),
    Case("D09-class-without-images", _check_data, "classes.txt",
         setup=_edit("classes.txt", lambda t: t + "3 003.class2\n")),
    Case("D10-path-traversal", _check_data, "images.txt:1",
         setup=_edit("images.txt", lambda t: t.replace("001.class0/im0.jpg", "../../etc/passwd", 1))),
    Case("D11-symlink-out-of-root", _check_data, "outside",
         setup=lambda w: (_first_image(w).unlink(), _first_image(w).symlink_to("/etc/hostname"))),
    Case("D12-missing-index-file", _check_data, "bounding_boxes.txt",
         setup=lambda w: (w["data"] / "bounding_boxes.txt").unlink()),
    Case("D13-non-numeric-box", _check_data, "bounding_boxes.txt:2",
         setup=_edit("bounding_boxes.txt", lambda t: t.replace("2 2.0", "2 two", 1))),
    Case("D14-train-on-broken-dataset", _train_on_data, "bounding_boxes.txt:1",
         setup=_edit("bounding_boxes.txt", lambda t: t.replace("1 2.0 3.0 10.0 8.0", "1 2.0 3.0 0.0 8.0", 1))),
    Case("D15-data-folder-missing", lambda w: ["train", "--dataset", "cub", "--data", str(w["root"] / "nope"),
                                               "--profile", "smoke", "--db", w["url"]], "no such folder"),
    Case("D16-real-dataset-without-path", lambda w: ["train", "--dataset", "cub", "--db", w["url"]], "--data PATH"),
    # ---- configs (C)
    Case("C01-toml-syntax-error", lambda w: ["train", "--profile", "smoke", "--config", str(w["root"] / "c.toml"),
                                             "--db", w["url"]], "TOML syntax error",
         setup=lambda w: (w["root"] / "c.toml").write_text("[train\nlr = 1")),
    Case("C02-unknown-key", lambda w: ["train", "--profile", "smoke", "--set", "train.lrr=0.1", "--db", w["url"]],
         "unknown key 'train.lrr'"),
    Case("C03-wrong-type", lambda w: ["train", "--profile", "smoke", "--set", "train.epochs=1.5", "--db", w["url"]],
         "train.epochs = 1.5: expected an integer"),
    Case("C04-theta-above-one", lambda w: ["train", "--profile", "smoke", "--set", "eval.theta=1.5", "--db", w["url"]],
         "eval.theta = 1.5: must be in [0, 1]"),
    Case("C05-negative-lambda", lambda w: ["train", "--profile", "smoke", "--set", "model.update_rate=-0.01",
                                           "--db", w["url"]], "model.update_rate = -0.01"),
    Case("C06-set-without-equals", lambda w: ["train", "--profile", "smoke", "--set", "train.lr", "--db", w["url"]],
         "expected key=value"),
    Case("C07-unknown-table", lambda w: ["ablate", "table9", "--profile", "smoke", "--db", w["url"]],
         "unknown table 'table9'"),
    Case("C08-unknown-profile", lambda w: ["ablate", "table3", "--profile", "fast", "--db", w["url"]],
         "unknown profile 'fast'"),
    Case("C09-registry-typo", lambda w: ["ablate", "table3", "--profile", "smoke", "--registry", str(w["reg"]),
                                         "--db", w["url"]], "table3.toml: cell 'base': unknown key 'contxt_pool'",
         setup=_registry_edit("table3.toml", "context_pool = false", "contxt_pool = false")),
    Case("C10-registry-missing-teacher", lambda w: ["ablate", "table3", "--profile", "smoke", "--registry",
                                                    str(w["reg"]), "--db", w["url"]], "teachers.loc = 'nobody'",
         setup=_registry_edit("table3.toml", 'loc = "loc_teacher"', 'loc = "nobody"')),
    Case("C11-config-file-missing", lambda w: ["train", "--profile", "smoke", "--config", str(w["root"] / "x.toml"),
                                               "--db", w["url"]], "config file not found"),
    Case("C12-paper-profile-without-requirements", lambda w: ["ablate", "table3", "--profile", "paper",
                                                             "--db", w["url"]], "profile 'paper' needs"),
    Case("C13-weights-with-reduced-width", lambda w: ["train", "--profile", "smoke", "--weights", "/nonexistent.pth",
                                                      "--db", w["url"]], "model.width"),
    Case("C14-resize-audit-below-the-crop", lambda w: ["train", "--profile", "smoke", "--set", "eval.test_crop=36",
                                                       "--db", w["url"]],
         "eval.resize_grid[0] = 32: must be >= eval.test_crop (36): give larger sizes, or --set eval.resize_grid=[]"),
    Case("C15-jobs-not-a-number", lambda w: ["ablate", "table3", "--profile", "smoke", "--jobs", "0", "--db", w["url"]],
         "--jobs '0': expected a whole number >= 1, or auto"),
    Case("C16-inceptionv3-impossible-stride", lambda w: ["ablate", "table3", "--profile", "smoke", "--backbone",
                                                         "inceptionv3", "--set", "model.output_stride=8",
                                                         "--db", w["url"]],
         "model.output_stride = 8: inceptionv3 supports only 16"),
    # ---- runs (R)
    Case("R01-unknown-run", lambda w: ["runs", "show", "zzzz9999", "--db", w["url"]], "no run matches 'zzzz9999'"),
    Case("R02-ambiguous-prefix", lambda w: ["runs", "show", "abcd", "--db", w["url"]], "abcd"),
    Case("R03-compare-different-test-sets", lambda w: ["compare", "abcd1111", "ef99", "--db", w["url"]],
         "different"),
    Case("R04-evaluate-unknown-run", lambda w: ["evaluate", "ffff0000", "--db", w["url"]], "no run matches"),
    Case("R05-unknown-selection", lambda w: ["evaluate", "abcd1111", "--selection", "best", "--db", w["url"]],
         "--selection 'best'"),
    Case("R06-distilled-without-teachers", lambda w: ["train", "--role", "distilled", "--profile", "smoke",
                                                      "--db", w["url"]], "--teacher-cls"),
    # ---- weights (W)
    Case("W01-wrong-architecture", _weights_train, "weights.pth", setup=_write_weights(_inception_state)),
    Case("W02-missing-keys", _weights_train, "features.28",
         setup=_write_weights(_vgg_state_without("features.28"))),
    Case("W03-pickle-not-state-dict", _weights_train, "weights.pth", setup=_write_pickle),
    Case("W04-weights-file-missing", _weights_train, "no such file"),
    # ---- store (S)
    Case("S01-newer-schema", lambda w: ["runs", "list", "--db", w["url"]], "newer kdcicam", setup=_newer_schema),
    Case("S02-not-a-database", lambda w: ["runs", "list", "--db", str(w["root"] / "notes.txt")], "notes.txt",
         setup=lambda w: (w["root"] / "notes.txt").write_text("these are my notes\n" * 50)),
    Case("S03-db-folder-missing", lambda w: ["train", "--profile", "smoke", "--db", str(w["root"] / "no" / "runs.db")],
         "does not exist"),
]


CASES += [Case(case_id, argv, expect, setup, code) for case_id, argv, expect, setup, code in MORE]
CASES += [Case(case_id, argv, expect, setup, code) for case_id, argv, expect, setup, code in HEADERS]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_nonzero_exit_and_changes_nothing(case: Case, ws, capsys, monkeypatch):
    ws["monkeypatch"] = monkeypatch  # for cases that set an environment variable
    if case.setup is not None:
        case.setup(ws)
    before = snapshot(ws["db"])
    code, out, err = run_cli(case.argv(ws), capsys)
    after = snapshot(ws["db"])
    message = err.strip()
    assert code == case.code, f"exit {code}; stderr: {err!r}; stdout: {out[-300:]!r}"
    assert "Traceback" not in err and "Traceback" not in out
    assert case.expect in message, message
    assert message.count("\n") == 0 or case.id.startswith("D"), f"more than one line: {message!r}"
    assert after == before, "the run store changed"


def test_catalogue_lists_every_case_and_each_entry_has_a_test():
    root = Path(__file__).resolve().parents[1]
    rows = [line.split("|") for line in (root / "docs" / "bad-inputs.md").read_text().splitlines()
            if line.startswith("| `")]
    listed = {r[1].strip().strip("`"): r[-2].strip().strip("`") for r in rows}
    ours = {c.id for c in CASES}
    assert ours <= set(listed), f"cases missing from docs/bad-inputs.md: {sorted(ours - set(listed))}"
    for case_id, test in listed.items():
        if case_id in ours:
            continue
        file, _, name = test.partition("::")
        assert name, f"{case_id}: name the test as file::function"
        assert f"def {name}(" in (root / file).read_text(), f"{case_id}: {test} does not exist"
    assert len(listed) >= 30


@pytest.mark.slow
def test_disk_full_while_storing_is_one_line_and_keeps_the_store(ws, tmp_path):
    """S05: the disk fills up (simulated with RLIMIT_FSIZE: writes past the limit fail with EFBIG)."""
    code = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
size = {ws['db'].stat().st_size}
resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
from kdcicam.cli import main
sys.argv = ["kdcicam", "train", "--profile", "smoke", "--db", "{ws['url']}", "--quiet"]
main()
"""
    before_ids = ("abcd111100000000", "abcd222200000000", "ef99000000000000")
    before = _rows_of(ws["db"], before_ids)
    env = {**os.environ, "KDCICAM_CACHE": str(tmp_path / "cache2")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and ("full" in last or "large" in last or "space" in last), last
    # what was stored before is intact and the database is sound (a new run row may have been added)
    assert _rows_of(ws["db"], before_ids) == before
    import sqlite3

    con = sqlite3.connect(ws["db"])
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    con.close()
