"""Meters on hand-made inputs (answers worked by hand in the comments)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from kdcicam.evaluation.boxes import (
    EMPTY_BOX,
    box_from_heatmap,
    largest_per_level,
    sweep_components,
    to_wsolevaluation_boxes,
)
from kdcicam.evaluation.metrics import (
    LocalizationMeter,
    LocRecord,
    MaxBoxAccV2Meter,
    TopKAccuracy,
    cam_threshold_grid,
)

# --------------------------------------------------------------------------- TopKAccuracy


def test_topk_accuracy_by_hand():
    logits = np.array([[0.1, 2.0, 0.3],  # label 1 is the max: rank 0
                       [1.0, 1.0, 0.0],  # label 1 ties class 0, which comes first: rank 1
                       [0.5, 0.2, 0.9],  # label 0 below 0.9: rank 1
                       [3.0, 2.0, 1.0]])  # label 2 below 3 and 2: rank 2
    meter = TopKAccuracy(ks=(1, 2, 5))
    meter.update(logits[:2], [1, 1])
    meter.update(torch.tensor(logits[2:]), torch.tensor([0, 2]))
    # top-1: 1/4; top-2: 3/4; top-5 with 3 classes: every label -> 4/4
    assert meter.compute() == {"top1_cls": 25.0, "top2_cls": 75.0, "top5_cls": 100.0, "images": 4}
    meter.reset()
    with pytest.raises(ValueError, match="before any update"):
        meter.compute()


def test_topk_accuracy_rejects_bad_input():
    meter = TopKAccuracy()
    with pytest.raises(ValueError, match="finite"):
        meter.update(np.array([[np.nan, 1.0]]), [0])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        meter.update(np.zeros((1, 2)), [2])


# --------------------------------------------------------------------------- LocalizationMeter

GT = np.array([[10, 10, 20, 20]])  # one GT box, area 100
GOOD = np.array([10, 10, 20, 18])  # inside the GT: IoU 80/100 = 0.8
BAD = np.array([0, 0, 5, 5])  # disjoint: IoU 0


def test_perfect_predictions_score_100():
    meter = LocalizationMeter()
    for label in range(3):
        meter.update([label, 7, 8, 9, 6], label, GT[0], GT)
    assert meter.compute() == {"top1_cls": 100.0, "top5_cls": 100.0, "top1_loc": 100.0,
                               "top5_loc": 100.0, "gt_known_loc": 100.0, "images": 3}


def test_correct_with_the_second_gt_box_only():
    meter = LocalizationMeter()
    # pred (0,0,2,2), area 4; second GT (0,0,2,3), area 6: IoU 4/6 = 0.67 >= 0.5; first GT: 0
    rec = meter.update([1], 1, [0, 0, 2, 2], [[5, 5, 8, 8], [0, 0, 2, 3]])
    assert rec.top1_loc and rec.gt_known_loc and rec.iou_top1 == pytest.approx(4 / 6)
    rec = meter.update([1], 1, [0, 0, 2, 2], [[5, 5, 8, 8]])
    assert not rec.top1_loc and rec.iou_top1 == 0


def test_top5_loc_with_per_class_boxes():
    meter = LocalizationMeter()
    # label 3 is ranked second; its box (row 1) is good, the top-1 class's box (row 0) is bad
    boxes = np.stack([BAD, GOOD, BAD, BAD, BAD])
    rec = meter.update([7, 3, 9, 1, 0], 3, boxes, GT, gt_known_box=GOOD)
    assert rec == LocRecord(label=3, top1_cls=False, top5_cls=True, top1_loc=False, top5_loc=True,
                            gt_known_loc=True, iou_top1=0.0, iou_gt_known=pytest.approx(0.8))
    # same ranking, the label's own box bad: not Top-5 Loc
    boxes = np.stack([GOOD, BAD, GOOD, GOOD, GOOD])
    assert not meter.update([7, 3, 9, 1, 0], 3, boxes, GT, gt_known_box=BAD).top5_loc


def test_class_independent_box_and_protocols():
    meter = LocalizationMeter()
    # Authors' protocol: one box for every class; GT-known defaults to that same box.
    rec = meter.update([7, 3, 9, 1, 0], 3, GOOD, GT)
    assert (rec.top1_loc, rec.top5_loc, rec.gt_known_loc) == (False, True, True)
    # Standard protocol: the GT-known box comes from the GT class's map and may differ.
    rec = meter.update([3, 1, 2, 4, 5], 3, BAD, GT, gt_known_box=GOOD)
    assert (rec.top1_cls, rec.top1_loc, rec.gt_known_loc) == (True, False, True)
    # label ranked sixth: outside the top 5
    rec = meter.update([0, 1, 2, 4, 5, 3], 3, GOOD, GT)
    assert (rec.top5_cls, rec.top5_loc, rec.gt_known_loc) == (False, False, True)
    # the empty-mask fallback box never localizes
    rec = meter.update([3], 3, EMPTY_BOX, GT)
    assert (rec.top1_loc, rec.gt_known_loc, rec.iou_top1) == (False, False, 0.0)
    # 4 images: top1_cls 2/4, top5_cls 3/4, top1_loc 0/4, top5_loc 1/4, gt_known 3/4
    assert meter.compute() == {"top1_cls": 50.0, "top5_cls": 75.0, "top1_loc": 0.0,
                               "top5_loc": 25.0, "gt_known_loc": 75.0, "images": 4}
    assert [r.top5_cls for r in meter.records] == [True, True, False, True]


def test_iou_threshold_is_inclusive_and_records_optional():
    meter = LocalizationMeter(iou_threshold=0.8, keep_records=False)
    assert meter.update([0], 0, GOOD, GT, image_id="a").top1_loc  # IoU exactly 0.8
    assert meter.records == []


def test_localization_meter_rejects_misuse():
    meter = LocalizationMeter()
    with pytest.raises(ValueError, match="distinct"):
        meter.update([1, 1], 1, GOOD, GT)
    with pytest.raises(ValueError, match="rows for 3 topk"):
        meter.update([1, 2, 3], 1, np.stack([GOOD, GOOD]), GT, gt_known_box=GOOD)
    with pytest.raises(ValueError, match="gt_known_box is required"):
        meter.update([1, 2], 1, np.stack([GOOD, GOOD]), GT)


# --------------------------------------------------------------------------- MaxBoxAccV2

# Image 1: GT = the 2x2 block (1,1,3,3) of 0.6 / 1.0, with two 0.3 pixels around it.
CAM1 = np.array([[0.0, 0.0, 0.0, 0.0],
                 [0.0, 0.6, 0.6, 0.0],
                 [0.0, 0.6, 1.0, 0.3],
                 [0.0, 0.0, 0.3, 0.0]])
GT1 = [[1, 1, 3, 3]]
# Image 2: two GT boxes; blob A (row 0, x 0..1, value 1) half covers the first, blob B (the
# bottom-right 2x2 of 0.4) is exactly the second.
CAM2 = np.array([[1.0, 1.0, 0.0, 0.0],
                 [0.0, 0.0, 0.0, 0.0],
                 [0.0, 0.0, 0.4, 0.4],
                 [0.0, 0.0, 0.4, 0.4]])
GT2 = [[0, 0, 2, 2], [2, 2, 4, 4]]


def test_maxboxacc_v2_two_images_by_hand():
    meter = MaxBoxAccV2Meter(cam_thresholds=4)  # thresholds 0, .25, .5, .75
    # image 1: t=0, .25 -> box (1,1,4,4), IoU 4/9; t=.5 -> the block, IoU 1; t=.75 -> (2,2,3,3),
    # IoU 1/4
    np.testing.assert_allclose(meter.update(CAM1, GT1), [4 / 9, 4 / 9, 1, 0.25])
    # image 2: t=0, .25 -> A and B, B matches GT 2: 1; t=.5, .75 -> A only, 2/4 with GT 1: 0.5
    np.testing.assert_allclose(meter.update(CAM2, GT2), [1, 1, 0.5, 0.5])
    out = meter.compute()
    # IoU .3: [2, 2, 2, 1] of 2 -> max 100 at t=0 (first); .5: [1, 1, 2, 1] -> 100 at t=.5;
    # .7: [1, 1, 1, 0] -> 50 at t=0. MaxBoxAccV2 = (100 + 100 + 50) / 3.
    assert out["curve"] == [[100, 100, 100, 50], [50, 50, 100, 50], [50, 50, 50, 0]]
    assert (out["maxboxacc_iou30"], out["maxboxacc_iou50"],
            out["maxboxacc_iou70"]) == (100, 100, 50)
    assert (out["best_threshold_iou30"], out["best_threshold_iou50"],
            out["best_threshold_iou70"]) == (0.0, 0.5, 0.0)
    assert out["maxboxacc_v2"] == pytest.approx(250 / 3)
    assert out["images"] == 2 and out["thresholds"] == [0, 0.25, 0.5, 0.75]


def test_multi_contour_vs_largest_component():
    cam = np.zeros((4, 5))
    cam[0, :] = 0.5  # 5 pixels, far from the GT
    cam[2:4, 0:2] = 1.0  # 4 pixels: exactly the GT
    gt = [[0, 2, 2, 4]]
    single = MaxBoxAccV2Meter(cam_thresholds=2, iou_thresholds=(0.5,), multi_contour=False)
    multi = MaxBoxAccV2Meter(cam_thresholds=2, iou_thresholds=(0.5,))
    # t=0: both blobs; largest = the row (IoU 0), any contour -> 1. t=0.5: only the GT blob.
    np.testing.assert_allclose(single.update(cam, gt), [0, 1])
    np.testing.assert_allclose(multi.update(cam, gt), [1, 1])


def test_perfect_cams_give_100_and_zero_cams_0():
    rng = np.random.default_rng(0)
    perfect = MaxBoxAccV2Meter()
    zero = MaxBoxAccV2Meter()
    for _ in range(5):
        x0, y0 = rng.integers(0, 20, 2)
        x1, y1 = x0 + rng.integers(1, 12), y0 + rng.integers(1, 12)
        cam = np.zeros((32, 32))
        cam[y0:y1, x0:x1] = 1.0
        perfect.update(cam, [x0, y0, x1, y1])
        zero.update(np.zeros((32, 32)), [x0, y0, x1, y1])
    out = perfect.compute()
    assert out["maxboxacc_v2"] == 100 and all(acc == 100 for row in out["curve"] for acc in row)
    out = zero.compute()  # every threshold gives the fallback box, IoU 0
    assert out["maxboxacc_v2"] == 0 and out["best_threshold_iou50"] == 0.0


def test_wsolevaluation_mode_perfect_cam():
    # GT in wsolevaluation's convention: a box (x, y, x+w, y+h) not touching the right/bottom
    # edge equals the clipped component box it reports.
    meter = MaxBoxAccV2Meter(wsolevaluation=True)
    cam = np.zeros((16, 16))
    cam[3:9, 2:12] = 1.0
    meter.update(cam, [2, 3, 12, 9])
    assert meter.compute()["maxboxacc_v2"] == 100


def _wsolevaluation_boxes(scoremap, thresholds):
    """The single-contour boxes of the meter's wsolevaluation mode, per threshold."""
    meter = MaxBoxAccV2Meter(cam_thresholds=thresholds, wsolevaluation=True)
    values, cutoffs = meter.values_and_cutoffs(scoremap)
    sweep = sweep_components(values, cutoffs)
    boxes = to_wsolevaluation_boxes(sweep.boxes[largest_per_level(sweep)], scoremap.shape)
    return boxes.astype(int).tolist()


def test_wsolevaluation_unimodal_example():
    # evaluation_test.py's unimodal map and expected boxes at thresholds 0, .2, .4, .6, .8:
    # uint8 quantisation makes 0.4 -> 102 = int(0.4 * 255), so it drops out at t = .4.
    scoremap = np.array([[0.0, 0.0, 0.0, 0.0, 0.0],
                         [0.0, 0.4, 0.4, 0.4, 0.6],
                         [0.0, 0.4, 1.0, 0.8, 0.6],
                         [0.0, 0.4, 0.4, 0.4, 0.6]])
    assert _wsolevaluation_boxes(scoremap, np.arange(0, 1, 0.2)) == [
        [1, 1, 4, 3], [1, 1, 4, 3], [2, 1, 4, 3], [2, 2, 4, 3], [2, 2, 3, 3]]


def test_wsolevaluation_multimodal_example_and_the_known_differences():
    scoremap = np.array([[0.4, 0.0, 0.2, 0.2, 0.2],
                         [0.4, 0.4, 0.0, 0.4, 0.0],
                         [0.0, 0.0, 0.0, 0.4, 0.0],
                         [1.0, 0.6, 0.8, 0.2, 0.2]])
    ours = _wsolevaluation_boxes(scoremap, np.arange(0, 1, 0.2))
    theirs = [[0, 0, 4, 3], [0, 0, 2, 2], [0, 3, 3, 3], [2, 3, 3, 3], [0, 3, 1, 3]]
    assert [ours[i] for i in (0, 2, 4)] == [theirs[i] for i in (0, 2, 4)]
    # t=.2: the L of 3 pixels at the top left has the larger contour *polygon* area (0.5) than the
    # 5-pixel chain (area 0), so cv2 picks it; we pick the most pixels: the chain (0,1)-(4,4).
    assert ours[1] == [0, 1, 4, 3]
    # t=.6: two single pixels tie; OpenCV's contour order picks x=2, ours the raster-first x=0.
    assert ours[3] == [0, 3, 1, 3]


def test_single_contour_box_is_the_standard_policy_box():
    # The meter's default reading (cam > t, 8-connected, most pixels) is box_from_heatmap's
    # "standard" policy, threshold by threshold.
    rng = np.random.default_rng(5)
    cam = ndimage.zoom(rng.random((5, 5)), 6, order=1)  # 30 x 30
    cam = (cam - cam.min()) / (cam.max() - cam.min())
    thresholds = cam_threshold_grid(20)
    sweep = sweep_components(cam, thresholds)
    boxes = sweep.boxes[largest_per_level(sweep)]
    expected = [box_from_heatmap(cam, t, "standard") for t in thresholds[: len(boxes)]]
    np.testing.assert_array_equal(boxes, expected)


def test_fast_and_reference_meters_agree():
    rng = np.random.default_rng(3)
    metas = [dict(), dict(multi_contour=False), dict(wsolevaluation=True, connectivity=4)]
    for kwargs in metas:
        fast = MaxBoxAccV2Meter(cam_thresholds=50, **kwargs)
        slow = MaxBoxAccV2Meter(cam_thresholds=50, fast=False, **kwargs)
        for _ in range(4):
            cam = ndimage.zoom(rng.normal(size=(8, 8)), 6, order=1)  # 48 x 48, smooth
            cam = (cam - cam.min()) / (cam.max() - cam.min())
            gt = [[5, 5, 30, 40], [20, 0, 48, 20]]
            np.testing.assert_array_equal(fast.update(cam, gt), slow.update(cam, gt))
        assert fast.compute() == slow.compute()


def test_threshold_grid_and_validation():
    np.testing.assert_array_equal(cam_threshold_grid(100), np.arange(0, 1, 0.01))
    assert len(cam_threshold_grid(1000)) == 1000
    with pytest.raises(ValueError, match="ascending"):
        MaxBoxAccV2Meter(cam_thresholds=[0.5, 0.2])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        MaxBoxAccV2Meter(iou_thresholds=(0.0,))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MaxBoxAccV2Meter().update(np.full((3, 3), 2.0), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="before any update"):
        MaxBoxAccV2Meter().compute()
