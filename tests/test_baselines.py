"""Trivial baselines on hand-made samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdcicam.core.config import EvalConfig, RunConfig
from kdcicam.data.base import Sample
from kdcicam.evaluation.baselines import trivial_baselines


def _s(i, box, size=(100, 100)):
    return Sample(image_id=f"im{i}", path=Path(f"/nowhere/im{i}.jpg"), label=0, boxes=(box,), size=size)


def _cfg(resize=100, crop=100):
    return RunConfig(eval=EvalConfig(test_resize=resize, test_crop=crop))


def test_whole_image_misses_a_quarter_sized_box_and_the_centred_box_finds_it():
    # GT (25,25,75,75) in a 100x100 image: the whole image has IoU 2500/10000 = 0.25 < 0.5;
    # a centred box of relative side 0.5 is (25,25,75,75): IoU 1.
    samples = [_s(i, (25.0, 25.0, 75.0, 75.0)) for i in range(4)]
    r = trivial_baselines(samples, samples, _cfg(), "standard")
    assert r.whole_image == 0.0
    assert r.centred == 1.0 and r.centred_size == pytest.approx(0.5) and r.centred_val == 1.0


def test_whole_image_hits_a_large_box():
    # GT (0,0,80,90): IoU with the whole image = 7200/10000 = 0.72 >= 0.5
    samples = [_s(0, (0.0, 0.0, 80.0, 90.0))]
    assert trivial_baselines(samples, samples, _cfg(), "standard").whole_image == 1.0


def test_centred_size_is_chosen_on_validation_not_test():
    # val objects are small and centred (best s = 0.3); test objects fill the image: the val-chosen box misses them
    val = [_s(i, (35.0, 35.0, 65.0, 65.0)) for i in range(3)]
    test = [_s(i, (2.0, 2.0, 98.0, 98.0)) for i in range(3)]
    r = trivial_baselines(val, test, _cfg(), "standard")
    assert r.centred_size == pytest.approx(0.3) and r.centred_val == 1.0
    assert r.centred == 0.0 and r.whole_image == 1.0


def test_paper_protocol_scores_in_the_crop_against_every_box():
    # 100x100 image, resize 100, crop 50 (offset 25): GT (25,25,75,75) becomes the whole crop (0,0,50,50),
    # so the whole-crop box is a perfect hit, whether that box comes first or second in the image's list
    # (the authors' test loop keeps the best IoU over the image's boxes).
    for boxes in (((25.0, 25.0, 75.0, 75.0), (0.0, 0.0, 5.0, 5.0)), ((0.0, 0.0, 5.0, 5.0), (25.0, 25.0, 75.0, 75.0))):
        s = Sample(image_id="a", path=Path("/nowhere/a.jpg"), label=0, boxes=boxes, size=(100, 100))
        r = trivial_baselines([s], [s], _cfg(100, 50), "paper")
        assert r.whole_image == 1.0, boxes
