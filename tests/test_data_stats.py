"""``kdcicam data stats``: box geometry worked out by hand, and the command on a tiny synthetic set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kdcicam.cli import main
from kdcicam.data.base import DatasetIndex, Sample
from kdcicam.data.stats import box_geometry, dataset_stats, distribution


def test_box_geometry_by_hand():
    # a 50x50 box in the top-left quarter of a 100x100 image: a quarter of it, centre (25, 25)
    share, dx, dy, dist = box_geometry((0.0, 0.0, 50.0, 50.0), (100, 100))
    assert (share, dx, dy) == (0.25, 0.25, 0.25)
    assert dist == pytest.approx(math.sqrt(0.125))
    # a centred box in a 200x100 image: 80x20 of 200x100 = 0.08, no offset
    assert box_geometry((60.0, 40.0, 140.0, 60.0), (200, 100)) == (0.08, 0.0, 0.0, 0.0)


def test_distribution_by_hand():
    d = distribution([0.0, 1.0, 2.0, 3.0, 4.0])
    assert d == {"mean": 2.0, "p05": 0.2, "p25": 1.0, "p50": 2.0, "p75": 3.0, "p95": 3.8}
    assert distribution([]) is None


def test_dataset_stats_counts_per_class_and_split():
    def sample(i, label, boxes, size=(100, 100)):
        return Sample(f"{i}.jpg", Path(f"/{i}.jpg"), label, boxes, size)

    index = DatasetIndex(
        name="hand", root=Path("/"), classes=("a", "b"),
        train=(sample(0, 0, ((0.0, 0.0, 50.0, 50.0),)), sample(1, 0, ((0.0, 0.0, 10.0, 10.0), (0, 0, 100, 100))),
               sample(2, 1, ((25.0, 25.0, 75.0, 75.0),), None)),
        test=(sample(3, 1, ((0.0, 0.0, 100.0, 100.0),)),))
    stats = dataset_stats(index)
    assert stats["train"]["images_per_class"] == {"min": 1, "median": 1.5, "max": 2}
    assert stats["train"]["boxes_per_class"] == {"min": 1, "median": 2.0, "max": 3}
    assert stats["train"]["sizes_known"] == 2  # the third image's size is unknown: its box is not measured
    assert stats["train"]["box_area_share"]["p50"] == 0.25  # shares 0.25, 0.01, 1.0
    assert stats["test"]["centre_distance"]["mean"] == 0.0
    assert stats["all"]["images"] == 4 and "val" not in stats


def test_command_on_a_synthetic_set(tmp_path, capsys):
    def run(argv):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
        return code, *capsys.readouterr()

    code, _, err = run(["data", "synth", str(tmp_path / "s"), "--classes", "3", "--per-class", "8", "--size", "48"])
    assert code == 0, err
    code, out, err = run(["data", "stats", str(tmp_path / "s"), "--json"])
    assert code == 0, err
    stats = json.loads(out)
    assert stats["all"]["images"] == 24 and stats["classes"] == 3
    assert 0 < stats["all"]["box_area_share"]["p50"] < 1
    code, out, _ = run(["data", "stats", str(tmp_path / "s")])
    assert code == 0 and "box_area_share" in out
    code, _, err = run(["data", "stats", str(tmp_path / "missing")])
    assert code == 2 and err.strip().count("\n") == 0
