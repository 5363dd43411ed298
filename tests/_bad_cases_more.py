"""More bad-input cases for tests/test_bad_inputs.py (docs/bad-inputs.md, from D17, C16, S07, R10, E01, G01 on).

Each entry is (id, argv(w), expected substring, setup(w) or None, exit code), run by test_bad_inputs.py's
``Case`` machinery against its workspace ``w`` (a valid CUB folder, a store with three finished runs, a
registry copy, KDCICAM_CACHE in the test's folder).
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import zlib
from pathlib import Path
from typing import Any

from PIL import Image


def _check(w: dict) -> list[str]:
    return ["data", "check", str(w["data"])]


def _train(w: dict, *extra: str) -> list[str]:
    return ["train", "--profile", "smoke", "--db", w["url"], "--artifacts", str(w["root"] / "runs"), *extra]


def _train_cub(w: dict, *extra: str) -> list[str]:
    return _train(w, "--dataset", "cub", "--data", str(w["data"]), *extra)


def _ablate(w: dict, *extra: str) -> list[str]:
    return ["ablate", "table3", "--profile", "smoke", "--registry", str(w["reg"]), "--db", w["url"], *extra]


def _image(w: dict) -> Path:
    return w["data"] / "images" / "001.class0" / "im0.jpg"


def _edit(rel: str, old: str, new: str, where: str = "data"):
    def go(w: dict) -> None:
        path = w[where] / rel
        text = path.read_text()
        assert old in text, (rel, old)
        path.write_text(text.replace(old, new, 1))
    return go


def _write(rel: str, content: str | bytes, where: str = "root"):
    def go(w: dict) -> None:
        path = w[where] / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return go


def _env(name: str, value: str):
    def go(w: dict) -> None:
        w["monkeypatch"].setenv(name, value)
    return go


def _split_all(flag: str):
    def go(w: dict) -> None:
        path = w["data"] / "train_test_split.txt"
        path.write_text("".join(f"{line.split()[0]} {flag}\n" for line in path.read_text().splitlines()))
    return go


def _fifo(w: dict) -> None:
    _image(w).unlink()
    os.mkfifo(_image(w))


def _cut_end(w: dict) -> None:
    _image(w).write_bytes(_image(w).read_bytes()[:-2])  # the header intact, the end marker gone


def _folder_image(w: dict) -> None:
    _image(w).unlink()
    _image(w).mkdir()


def _huge_header(w: dict) -> None:
    """A PNG whose header declares 12000 x 12000 over the data of a 16 x 16 image."""
    path = w["data"] / "images" / "001.class0" / "im0.png"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", 12000, 12000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    _edit("images.txt", "im0.jpg", "im0.png")(w)


def _damage_store(w: dict) -> None:
    db: Path = w["db"]
    size = db.stat().st_size
    with db.open("r+b") as fh:
        for offset in range(4096, size, 4096):
            fh.seek(offset)
            fh.write(b"\xa5" * 4096)


def _sql(statement: str):
    def go(w: dict) -> None:
        con = sqlite3.connect(w["db"])
        with con:
            con.execute(statement)
        con.close()
    return go


def _foreign_db(w: dict) -> None:
    con = sqlite3.connect(w["root"] / "other.db")
    with con:
        con.execute("create table customers (id integer)")
    con.close()


def _spec(**fields: Any):
    def go(w: dict) -> None:
        spec = {"version": 1, "run_id": "abc", "config": {}, "dataset_fingerprint": "fp", "data_cache": "/c",
                "labels": [], "deps": [], **fields}
        (w["root"] / "spec.json").write_text(json.dumps(spec))
    return go


def _spec_argv(w: dict) -> list[str]:
    return ["train", "--run-spec", str(w["root"] / "spec.json"), "--db", w["url"]]


def _cams(w: dict, *extra: str) -> list[str]:
    return ["eval-cams", str(w["root"] / "cams"), "--metadata", str(w["root"] / "meta"), *extra]


MORE: list[tuple] = [
    # ---------------------------------------------------------------- datasets
    ("D17-no-test-images", _check, "the test split has no images", _split_all("1"), 2),
    ("D18-no-train-images", _check, "the train split has no images", _split_all("0"), 2),
    ("D19-fifo-image", _check, "not a regular file (a FIFO)", _fifo, 2),
    ("D20-declared-huge-image", _check, "image declares 12000x12000", _huge_header, 2),
    ("D21-image-is-a-folder", _check, "not a regular file (a folder)", _folder_image, 2),
    ("D22-index-not-utf8", _check, "images.txt: not UTF-8 text",
     _write("images.txt", b"\xff\xfe\x00garbage\n", where="data"), 2),
    ("D23-split-flag-two", _check, "train_test_split.txt:1", _edit("train_test_split.txt", "1 1", "1 2"), 2),
    ("D24-duplicate-image-id", _check, "duplicate", _edit("images.txt", "2 ", "1 "), 2),
    ("D25-nan-box", _check, "bounding_boxes.txt:1", _edit("bounding_boxes.txt", "2.0", "nan"), 2),
    ("D26-classes-file-missing", _check, "classes.txt: missing file",
     lambda w: (w["data"] / "classes.txt").unlink(), 2),
    ("D27-check-a-file", lambda w: ["data", "check", str(w["data"] / "images.txt")], "not a folder", None, 2),
    ("D28-train-without-test-images", _train_cub, "the test split has no images", _split_all("1"), 2),
    ("D29-train-on-fifo-image", _train_cub, "not a regular file (a FIFO)", _fifo, 2),
    ("D30-pixel-limit-not-a-number", _check, "KDCICAM_MAX_IMAGE_PIXELS='lots'",
     _env("KDCICAM_MAX_IMAGE_PIXELS", "lots"), 2),
    ("D31-pixel-limit-lowered", _check, "above the limit of 100", _env("KDCICAM_MAX_IMAGE_PIXELS", "100"), 2),
    ("D32-truncated-jpeg-header-check", _check, "truncated image file (no JPEG end-of-image marker", _cut_end, 2),
    ("D33-train-on-truncated-jpeg", _train_cub, "truncated image file (no JPEG end-of-image marker", _cut_end, 2),
    # ---------------------------------------------------------------- configuration
    ("C16-binary-config-file", lambda w: _train(w, "--config", str(w["root"] / "c.toml")), "c.toml: not a TOML file",
     _write("c.toml", bytes(range(256))), 2),
    ("C17-config-file-unknown-key", lambda w: _train(w, "--config", str(w["root"] / "c.toml")),
     "c.toml: unknown key 'train.lrr'", _write("c.toml", "[train]\nlrr = 0.1\n"), 2),
    ("C18-set-section-as-value", lambda w: _train(w, "--set", "train=5"), "'train' is a section, not a value",
     None, 2),
    ("C19-epochs-above-limit", lambda w: _train(w, "--set", "train.epochs=100000000000000000000"),
     "above the limit of 10000 training epochs", None, 2),
    ("C20-epoch-limit-invalid", lambda w: _train(w), "KDCICAM_MAX_EPOCHS='0'", _env("KDCICAM_MAX_EPOCHS", "0"), 2),
    ("C21-crop-too-small", lambda w: _train(w, "--set", "data.crop=3"), "data.crop = 3: too small for vgg16",
     None, 2),
    ("C22-test-crop-zero", lambda w: _train(w, "--set", "eval.test_crop=0", "--set", "eval.resize_grid=[]"),
     "eval.test_crop = 0: too small", None, 2),
    ("C23-synth-size-above-limit", lambda w: _train(w, "--set", "data.synth.size=100000"),
     "data.synth.size = 100000: above the limit", None, 2),
    ("C24-config-is-a-folder", lambda w: _train(w, "--config", str(w["root"])), "cannot read the config file",
     None, 2),
    ("C25-nan-learning-rate", lambda w: _train(w, "--set", "train.lr=nan"), "expected a finite number", None, 2),
    ("C26-zero-epochs", lambda w: _train(w, "--set", "train.epochs=0"), "train.epochs = 0: must be >= 1", None, 2),
    ("C27-val-fraction-one", lambda w: _train(w, "--set", "data.val_fraction=1.0"), "data.val_fraction = 1.0",
     None, 2),
    ("C28-registry-title-not-text", _ablate, "table3.toml: title: expected a string",
     _edit("table3.toml", 'title = "Table 3: importance of each component (Base, +ConPool, +KD)"', "title = 5",
           where="reg"), 2),
    ("C29-registry-cell-key-slash", _ablate, "key 'con/pool': must be non-empty, without blanks, '/' or '@'",
     _edit("table3.toml", 'key = "conpool"', 'key = "con/pool"', where="reg"), 2),
    ("C30-registry-cell-key-at", _ablate, "key 'base@1'",
     _edit("table3.toml", 'key = "base"', 'key = "base@1"', where="reg"), 2),
    ("C31-registry-metrics-not-a-list", _ablate, "table3.toml: metrics: expected a list of metric names",
     _edit("table3.toml", 'metrics = ["top1_cls", "top5_cls", "top1_loc", "top5_loc", "gt_known_loc"]',
           "metrics = 5", where="reg"), 2),
    ("C32-registry-teacher-not-text", _ablate, "teacher: expected a string",
     _edit("table5.toml", 'teacher = "loc_teacher"', 'teacher = ["loc_teacher"]', where="reg"), 2),
    ("C33-registry-teachers-not-a-table", _ablate, "teachers.toml", _write("teachers.toml", "teachers = 5\n",
                                                                            where="reg"), 2),
    ("C34-profile-synth-not-a-table", _ablate, "profiles.toml", _write("profiles.toml", "[smoke]\n"
     'description = "x"\nreduced = true\nsynth = 5\n', where="reg"), 2),
    ("C35-run-spec-bad-labels", _spec_argv, "labels[0]", _spec(labels=[["table3", "base", "zero", "-"]]), 2),
    ("C36-run-spec-config-not-a-table", _spec_argv, "config = ", _spec(config=[1, 2]), 2),
    ("C37-run-spec-not-json", _spec_argv, "invalid JSON", _write("spec.json", "{not json"), 2),
    # ---------------------------------------------------------------- run store
    ("S07-damaged-store", lambda w: ["runs", "list", "--db", w["url"]], ".recover` may save it", _damage_store, 2),
    ("S08-artifacts-is-a-file", lambda w: _train(w)[:-2] + ["--artifacts", str(w["root"] / "notes.txt")],
     "notes.txt is a file, not a folder", _write("notes.txt", "x"), 2),
    ("S09-downgraded-schema", lambda w: ["runs", "list", "--db", w["url"]], "records an older schema revision",
     _sql("update alembic_version set version_num = '0001'"), 2),
    ("S10-db-is-a-folder", lambda w: ["runs", "list", "--db", str(w["root"] / "cub")], "is a folder", None, 2),
    ("S11-foreign-sqlite-db", lambda w: ["runs", "list", "--db", str(w["root"] / "other.db")],
     "not a kdcicam run store", _foreign_db, 2),
    # ---------------------------------------------------------------- runs and comparisons
    ("R10-resamples-above-limit", lambda w: ["compare", "abcd1111", "abcd2222", "--resamples", "2000000000",
                                             "--db", w["url"]], "above the limit of 1000000 bootstrap", None, 2),
    ("R11-prefix-too-short", lambda w: ["runs", "show", "abc", "--db", w["url"]],
     "a prefix needs at least 4 characters", None, 2),
    ("R12-teacher-without-files", lambda w: _train(w, "--role", "distilled", "--teacher-loc", "ef99"),
     "has no artifact folder", None, 2),
    ("R13-delete-unknown-run", lambda w: ["runs", "delete", "zzzz0000", "--yes", "--db", w["url"]],
     "no run matches 'zzzz0000'", None, 2),
    ("R14-show-on-missing-store", lambda w: ["runs", "show", "abcd1111", "--db", str(w["root"] / "none.db")],
     "no run store at", None, 2),
    # ---------------------------------------------------------------- saved CAMs
    ("E01-cam-size-above-limit", lambda w: _cams(w, "--size", "100000"), "--size = 100000: above the limit",
     None, 2),
    ("E02-cam-metadata-missing", lambda w: _cams(w), "meta", None, 2),
    # ---------------------------------------------------------------- synthetic generator
    ("G01-synth-size-above-limit", lambda w: ["data", "synth", str(w["root"] / "s"), "--size", "100000"],
     "data.synth.size = 100000: above the limit", None, 2),
    ("G02-synth-too-many-images", lambda w: ["data", "synth", str(w["root"] / "s"), "--classes", "100000",
                                             "--per-class", "1000"], "above the limit of 10000000 images", None, 2),
    ("G03-synth-into-a-file", lambda w: ["data", "synth", str(w["root"] / "notes.txt")], "not a folder",
     _write("notes.txt", "x"), 2),
    ("G04-synth-into-a-full-folder", lambda w: ["data", "synth", str(w["root"] / "cub")], "folder is not empty",
     None, 2),
    ("G05-synth-one-class", lambda w: ["data", "synth", str(w["root"] / "s"), "--classes", "1"],
     "data.synth.classes = 1: must be >= 2", None, 2),
]
