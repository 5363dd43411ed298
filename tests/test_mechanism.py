"""Mechanism measures: CAM mass on part / body / background, the context mass, and context reliance on
the context-swapped copy; the generator's region masks and copies; their storage. Numbers by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from kdcicam.core.config import SynthConfig
from kdcicam.core.errors import DataError
from kdcicam.data import source
from kdcicam.data.cub import load_cub
from kdcicam.data.mechanism_files import (
    BACKGROUND,
    BODY,
    MECHANISM_FILE,
    PART,
    context_swapped,
    mechanism_entries,
    read_regions,
    region_labels,
)
from kdcicam.data.synthetic import GENERATOR_VERSION, generate
from kdcicam.data.synthetic_latents import sample_latents, split_sizes
from kdcicam.data.synthetic_mechanism import swap_context, with_context
from kdcicam.data.synthetic_render import render
from kdcicam.evaluation.context_swap import with_context_swap
from kdcicam.evaluation.evaluator import evaluate
from kdcicam.evaluation.mechanism import (
    MECHANISM_RECORD_FIELDS,
    context_mass,
    mass_metrics,
    region_masses,
    reliance_metrics,
)
from kdcicam.store.rows import MECHANISM_RECORD_FIELDS as STORED_FIELDS
from tests.test_evaluate import CPU, RANKED, TableModel, block, cfg, entry, write_one_test_image_cub

TINY = SynthConfig(classes=4, per_class=8, size=32)

# --------------------------------------------------------------------------- the measures


def test_region_masses_of_a_4x4_map():
    # mass 4.5 in all; part (rows 0-1, cols 2-3): 1 + 1 = 2; body (rows 0-1, cols 0-1, and row 2):
    # 0.5 + 0.5 + 0.25 + 0.25 = 1.5; background (row 3): 1.
    cam = np.array([[0, .5, 1, 0], [0, .5, 1, 0], [.25, .25, 0, 0], [0, 0, 0, 1]])
    regions = np.array([[BODY, BODY, PART, PART], [BODY, BODY, PART, PART], [BODY] * 4, [BACKGROUND] * 4])
    got = region_masses(cam, regions)
    assert got["cam_mass_part"] == pytest.approx(4 / 9)
    assert got["cam_mass_body"] == pytest.approx(1 / 3)
    assert got["cam_mass_background"] == pytest.approx(2 / 9)


def test_a_map_without_mass_has_no_shares_and_shapes_must_agree():
    assert all(math.isnan(v) for v in region_masses(np.zeros((4, 4)), np.zeros((4, 4), np.uint8)).values())
    with pytest.raises(ValueError, match="differ in shape"):
        region_masses(np.ones((4, 4)), np.zeros((4, 3), np.uint8))


def test_context_mass_is_preferred_minus_other_background_share():
    # preferred: 0.6, 0.4 -> 0.5; others: 0.2, NaN (skipped), 0.1 -> 0.15; difference 0.35
    assert context_mass([0.6, 0.2, 0.4, math.nan, 0.1], [True, False, True, False, False]) == pytest.approx(0.35)
    assert math.isnan(context_mass([0.6, 0.4], [True, True]))  # no image of the other group


def test_mass_metrics_average_the_records():
    records = [{"cam_mass_part": .5, "cam_mass_body": .3, "cam_mass_background": .2, "context_preferred": True},
               {"cam_mass_part": .1, "cam_mass_body": .3, "cam_mass_background": .6, "context_preferred": False},
               {"cam_mass_part": math.nan, "cam_mass_body": math.nan, "cam_mass_background": math.nan,
                "context_preferred": False}]
    got = mass_metrics(records)
    assert got["cam_mass_part"] == pytest.approx(0.3) and got["cam_mass_body"] == pytest.approx(0.3)
    assert got["cam_mass_background"] == pytest.approx(0.4)
    assert got["cam_mass_context"] == pytest.approx(0.2 - 0.6)


def test_reliance_is_the_top1_drop_as_a_fraction():
    got = reliance_metrics([True, True, True, False], [True, False, False, False])
    assert got == {"top1_cls_context_swapped": 0.25, "context_reliance": 0.5}
    with pytest.raises(ValueError):
        reliance_metrics([True], [True, False])


def test_the_store_and_the_evaluator_name_the_same_fields():
    assert STORED_FIELDS == MECHANISM_RECORD_FIELDS


# --------------------------------------------------------------------------- the files


def test_region_mask_round_trip_and_nearest_resize(tmp_path):
    body = np.zeros((4, 6), bool)
    body[1:4, 1:5] = True
    part = np.zeros((4, 6), bool)
    part[1:3, 3:5] = True
    written = region_labels(body, part)
    assert written[0, 0] == 0 and written[3, 1] == 128 and written[1, 3] == 255
    Image.fromarray(written).save(tmp_path / "r.png")
    same = read_regions(tmp_path / "r.png", (6, 4))
    assert np.array_equal(same == PART, part) and np.array_equal(same == BODY, body & ~part)
    # (W, H) = (3, 2): OpenCV's nearest reads source row 2i, column 2j
    assert np.array_equal(read_regions(tmp_path / "r.png", (3, 2)), same[::2, ::2])
    with pytest.raises(DataError, match="no such region mask"):
        read_regions(tmp_path / "missing.png", (3, 2))


def test_swap_context_is_another_class_context_and_fixed_by_the_seed():
    cfg5 = SynthConfig(classes=5, per_class=8, size=32).validate()
    for label in range(5):
        for index in range(8):
            own = sample_latents(cfg5, label, index).context
            c = swap_context(cfg5, label, index, own)
            assert c not in (label, own) and c == swap_context(cfg5, label, index, own)
    seeds = {swap_context(SynthConfig(classes=5, seed=s).validate(), 0, 0, 1) for s in range(20)}
    assert len(seeds) > 1  # the seed moves the draw
    two = SynthConfig(classes=2, per_class=8, size=32).validate()
    assert swap_context(two, 0, 0, 1) == 1  # no third context: the copy keeps its own


def test_swapped_copy_keeps_every_object_pixel():
    cfg4 = TINY.validate()
    lat = sample_latents(cfg4, 2, 7)
    other = swap_context(cfg4, 2, 7, lat.context)
    a, b = render(cfg4, lat), render(cfg4, with_context(cfg4, lat, other))
    obj = a.object
    assert np.array_equal(a.body, b.body) and np.array_equal(a.part, b.part)
    assert np.array_equal(a.pixels[obj], b.pixels[obj]) and not np.array_equal(a.pixels[~obj], b.pixels[~obj])


def test_generator_writes_regions_and_swapped_copies_of_test_images_only(tmp_path):
    root = tmp_path / "bench"
    generate(root, TINY)
    index = load_cub(root)
    assert json.loads((root / "generator.json").read_text())["version"] == GENERATOR_VERSION
    found = mechanism_entries(index.test)
    assert found is not None
    _, entries = found
    for sample in index.test[:3]:
        mask = np.asarray(Image.open(root / "masks" / (sample.image_id[:-4] + ".png")))
        regions = read_regions(root / entries[sample.image_id].regions, sample.size)
        assert np.array_equal(regions != BACKGROUND, mask > 0)  # part ∪ body = the object mask
        assert (regions == PART).any() and (regions == BODY).any()
    copies = context_swapped(index.test)
    assert copies is not None and len(copies) == split_sizes(TINY)[1] * TINY.classes
    assert all(c.path.is_file() and c.image_id == s.image_id and c.label == s.label
               for c, s in zip(copies, index.test, strict=True))
    assert all("context_swap" not in str(s.path) for s in (*index.train, *index.test))  # never in a split
    assert context_swapped(index.train) is None  # train images have no copy
    lines = (root / MECHANISM_FILE).read_text().splitlines()
    assert len(lines) == TINY.classes * TINY.per_class


def test_cache_of_an_older_generator_version_is_generated_again(tmp_path):
    root = source.ensure_synthetic(tmp_path, TINY)
    meta = root / "generator.json"
    first = meta.read_text()
    old = json.loads(first)
    old["version"] = "1.1"
    meta.write_text(json.dumps(old))
    (root / MECHANISM_FILE).unlink()  # as a 1.1 folder: no mechanism files
    again = source.ensure_synthetic(tmp_path, TINY)
    assert again == root and meta.read_text() == first and (root / MECHANISM_FILE).is_file()


def test_a_malformed_mechanism_line_is_named(tmp_path):
    generate(tmp_path / "b", TINY)
    index = load_cub(tmp_path / "b")
    (tmp_path / "b" / MECHANISM_FILE).write_text("x.jpg,regions/x.png,2,,\n")
    with pytest.raises(DataError, match=rf"{MECHANISM_FILE}:1: expected"):
        mechanism_entries(index.test)


# --------------------------------------------------------------------------- the evaluator


def _bench(tmp_path):
    """One 48 x 48 test image (label 0) whose region mask has the part on original pixels 12..23 and the
    body on the rest of 12..47 (each axis); its copy is colour key 1, which the model ranks class 5 first."""
    write_one_test_image_cub(tmp_path, "12 12 36 36")
    return load_cub(tmp_path)


def _add_mechanism_files(tmp_path):
    body = np.zeros((48, 48), bool)
    body[12:, 12:] = True
    part = np.zeros((48, 48), bool)
    part[12:24, 12:24] = True
    (tmp_path / "regions").mkdir()
    Image.fromarray(region_labels(body, part)).save(tmp_path / "regions" / "i0.png")
    (tmp_path / "swap").mkdir()
    Image.new("RGB", (48, 48), (15, 100, 100)).save(tmp_path / "swap" / "i0.png")
    (tmp_path / MECHANISM_FILE).write_text("i0.png,regions/i0.png,1,swap/i0.png,3\n")


def test_evaluator_measures_the_gt_class_map_on_the_regions(tmp_path):
    # Frame 16: OpenCV's nearest reads original pixel 3i, so frame 4..7 is part, 8..15 body, 0..3
    # background on each axis. The GT class's (class 0) map is block(0, 0, 8, 8), 64 pixels of mass 1:
    # part = frame 4..7 x 4..7 = 16 -> 0.25; body 0; background 48 -> 0.75.
    index = _bench(tmp_path)
    model = TableModel({0: entry(RANKED, {0: block(0, 0, 8, 8)}),
                        1: entry(RANKED[::-1], {0: block(0, 0, 8, 8)})})
    plain = evaluate(model, index.test, cfg(), "standard", CPU)
    assert "cam_mass_part" not in plain.metrics and "cam_mass_part" not in plain.records[0]  # no mechanism.txt
    assert with_context_swap(plain, model, index.test, cfg(), CPU) is plain
    _add_mechanism_files(tmp_path)
    res = evaluate(model, index.test, cfg(), "standard", CPU)
    rec = res.records[0]
    assert (rec["cam_mass_part"], rec["cam_mass_body"], rec["cam_mass_background"]) == (0.25, 0.0, 0.75)
    assert rec["context_preferred"] is True and res.metrics["cam_mass_background"] == 0.75
    assert math.isnan(res.metrics["cam_mass_context"])  # no image in another context
    swapped = with_context_swap(res, model, index.test, cfg(), CPU)
    assert swapped.records[0]["correct_top1_cls_context_swapped"] is False  # the copy reads as class 5
    assert swapped.metrics["top1_cls"] == 1.0 and swapped.metrics["top1_cls_context_swapped"] == 0.0
    assert swapped.metrics["context_reliance"] == 1.0
    paper = evaluate(model, index.test, cfg(), "paper", CPU)
    assert "cam_mass_part" not in paper.metrics
    assert with_context_swap(paper, model, index.test, cfg(), CPU) is paper  # standard protocol only


def test_records_with_mechanism_fields_round_trip_through_the_store(tmp_path):
    from kdcicam.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    store.get_or_create_run("r1", config_hash="h", role="student", profile="smoke", variant="reference",
                            dataset="synthetic", seed=0, config={})
    base = {"image_id": "a.jpg", "label": 0, "top5": [0, 1, 2, 3, 4], "top5_scores": [.5, .2, .1, .1, .1],
            "box": [0, 0, 1, 1], "iou": 0.5, "correct_top1_cls": True, "correct_top5_cls": True,
            "correct_top1_loc": True, "correct_top5_loc": True, "correct_gt_known": True}
    mech = {"cam_mass_part": 0.25, "cam_mass_body": 0.5, "cam_mass_background": 0.25, "context_preferred": False,
            "correct_top1_cls_context_swapped": True}
    store.add_image_records("r1", "standard", "last", "test", [{**base, **mech}])
    store.add_image_records("r1", "paper", "last", "test", [base])
    frame = store.get_image_records("r1", "standard", "last", "test")
    assert {k: frame.iloc[0][k] for k in mech} == mech
    assert not set(MECHANISM_RECORD_FIELDS) & set(store.get_image_records("r1", "paper", "last", "test").columns)
    with pytest.raises(ValueError, match="unknown"):
        store.add_image_records("r1", "standard", "last", "test", [{**base, "cam_mass_elsewhere": 1.0}])


# --------------------------------------------------------------------------- end to end


def test_smoke_run_stores_exports_compares_and_reports_the_measures(tmp_path, monkeypatch, capsys):
    from kdcicam.store import open_store
    from tests._cli import run_cli

    monkeypatch.setenv("KDCICAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDCICAM_JOBS", "1")
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, out, err = run_cli(["train", "--profile", "smoke", "--db", db, "--artifacts", str(tmp_path / "runs"),
                              "--quiet", "--json"], capsys)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    code, out, _ = run_cli(["runs", "export", "--what", "final", "--db", db, "-o", "-"], capsys)
    assert code == 0
    rows = [line.split(",") for line in out.splitlines()[1:]]
    names = {"cam_mass_part", "cam_mass_body", "cam_mass_background", "cam_mass_context", "pxap",
             "top1_cls_context_swapped", "context_reliance"}
    fixed = {r[13]: float(r[14]) for r in rows if r[9:13] == ["standard", "last", "fixed", "test"]}
    assert names <= fixed.keys()
    assert fixed["cam_mass_part"] + fixed["cam_mass_body"] + fixed["cam_mass_background"] == pytest.approx(1.0)
    assert fixed["context_reliance"] == pytest.approx(fixed["top1_cls"] - fixed["top1_cls_context_swapped"])
    assert not any(r[13] in names - {"pxap"} for r in rows if r[9] == "paper")  # standard protocol only
    code, out, _ = run_cli(["runs", "export", "--what", "records", "--db", db, "-o", "-"], capsys)
    assert set(MECHANISM_RECORD_FIELDS) <= set(out.splitlines()[0].split(","))
    code, out, _ = run_cli(["compare", run_id, run_id, "--db", db], capsys)
    assert code == 0 and "mechanism measures" in out and "context_reliance" in out
    with open_store(db) as store:
        store.add_labels(run_id, "table3", "base")
    code, out, err = run_cli(["report", "--db", db, "--format", "md", "--out", str(tmp_path / "rep")], capsys)
    assert code == 0, err
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "### Mechanism measures (standard protocol)" in text and "| table3 · Base | 1 |" in text
    code, out, err = run_cli(["report", "--db", db, "--format", "html", "--out", str(tmp_path / "html")], capsys)
    assert code == 0 and "Mechanism measures" in (tmp_path / "html" / "report.html").read_text()
    code, out, _ = run_cli(["report", "--db", db, "--json"], capsys)
    (mechanism,) = [s["mechanism"] for s in json.loads(out)["scopes"]]
    assert mechanism["rows"][0]["values"]["context_reliance"] == pytest.approx(100 * fixed["context_reliance"])


def test_revision_0004_adds_null_mechanism_columns_to_stored_records(tmp_path):
    import sqlite3

    from kdcicam.store import open_store

    path = tmp_path / "runs.db"
    with open_store(f"sqlite:///{path}") as store:
        store.get_or_create_run("r1", config_hash="h", role="student", profile="smoke", variant="reference",
                                dataset="synthetic", seed=0, config={})
    raw = sqlite3.connect(path)
    with raw:  # the store as revision 0003 left it, with one record
        for column in MECHANISM_RECORD_FIELDS:
            raw.execute(f"ALTER TABLE image_records DROP COLUMN {column}")
        raw.execute("UPDATE alembic_version SET version_num = '0003'")
        raw.execute("INSERT INTO image_records (run_id, protocol, selection, split, threshold_policy, image_id, "
                    "label, top5, top5_scores, box, iou, correct_top1_cls, correct_top5_cls, correct_top1_loc, "
                    "correct_top5_loc, correct_gt_known) VALUES ('r1', 'standard', 'last', 'test', 'fixed', "
                    "'img0', 0, '[0]', '[1.0]', NULL, 0.7, 1, 1, 1, 1, 1)")
    raw.close()
    with open_store(f"sqlite:///{path}") as store:
        frame = store.get_image_records("r1", "standard", "last", "test")
    assert list(frame["image_id"]) == ["img0"] and not set(MECHANISM_RECORD_FIELDS) & set(frame.columns)
    raw = sqlite3.connect(path)
    columns = {row[1] for row in raw.execute("PRAGMA table_info(image_records)")}
    assert set(MECHANISM_RECORD_FIELDS) <= columns
    assert raw.execute("SELECT cam_mass_part FROM image_records").fetchall() == [(None,)]
    raw.close()


def test_report_table_averages_each_cell_runs_under_the_standard_protocol():
    from types import SimpleNamespace

    import pandas as pd

    from kdcicam.registry.ablations import load_registry
    from kdcicam.report.mechanism import mechanism_table

    reg = load_registry(None)
    runs = [SimpleNamespace(id="a", labels={"table3": ["base"]}), SimpleNamespace(id="b", labels={"table3": ["base"]}),
            SimpleNamespace(id="c", labels={"table3": ["conpool"]})]

    def row(run, name, value, protocol="standard", policy="fixed", selection="last"):
        return (run, protocol, selection, policy, "test", name, value)

    finals = pd.DataFrame([row("a", "cam_mass_part", 0.2), row("b", "cam_mass_part", 0.4), row("a", "pxap", 0.5),
                           row("b", "context_reliance", math.nan), row("a", "cam_mass_part", 0.9, "paper"),
                           row("b", "cam_mass_part", 0.9, policy="val"), row("c", "pxap", 0.7)],
                          columns=["run_id", "protocol", "selection", "threshold_policy", "split", "name", "value"])
    table = mechanism_table(reg, runs, finals, "fixed")
    assert [(r.table, r.cell, r.n) for r in table.rows] == [("table3", "base", 2)]  # conpool: PxAP only
    assert table.rows[0].values == pytest.approx({"cam_mass_part": 30.0, "pxap": 50.0})  # NaN left out
    assert mechanism_table(reg, runs, finals[finals["name"] == "pxap"], "fixed") is None
