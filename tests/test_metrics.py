"""The box-accuracy meter on hand-made inputs (answers worked by hand in the comments)."""

import numpy as np
import pytest
from scipy import ndimage

from kdcicam.evaluation.boxes import box_from_heatmap
from kdcicam.evaluation.metrics import MaxBoxAccV2Meter, cam_threshold_grid
from kdcicam.evaluation.sweep import largest_per_level, sweep_components

CONTINUOUS = {"box_rule": "continuous"}


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
    meter = MaxBoxAccV2Meter(cam_thresholds=4, **CONTINUOUS)  # thresholds 0, .25, .5, .75
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
    single = MaxBoxAccV2Meter(cam_thresholds=2, iou_thresholds=(0.5,), multi_contour=False, **CONTINUOUS)
    multi = MaxBoxAccV2Meter(cam_thresholds=2, iou_thresholds=(0.5,), **CONTINUOUS)
    # t=0: both blobs; largest = the row (IoU 0), any contour -> 1. t=0.5: only the GT blob.
    np.testing.assert_allclose(single.update(cam, gt), [0, 1])
    np.testing.assert_allclose(multi.update(cam, gt), [1, 1])


def test_perfect_cams_give_100_and_zero_cams_0():
    rng = np.random.default_rng(0)
    perfect = MaxBoxAccV2Meter(**CONTINUOUS)
    zero = MaxBoxAccV2Meter(**CONTINUOUS)
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


def _legacy_boxes(scoremap, thresholds):
    """wsolevaluation's single-contour boxes per threshold, read back from the meter's rule."""
    from kdcicam.evaluation.wsol_rule import largest_contour_boxes

    return largest_contour_boxes(scoremap, thresholds).astype(int).tolist()


def test_wsolevaluation_unimodal_example():
    # evaluation_test.py's unimodal map and expected boxes at thresholds 0, .2, .4, .6, .8:
    # uint8 quantisation makes 0.4 -> 102 = int(0.4 * 255), so it drops out at t = .4.
    scoremap = np.array([[0.0, 0.0, 0.0, 0.0, 0.0],
                         [0.0, 0.4, 0.4, 0.4, 0.6],
                         [0.0, 0.4, 1.0, 0.8, 0.6],
                         [0.0, 0.4, 0.4, 0.4, 0.6]])
    assert _legacy_boxes(scoremap, np.arange(0, 1, 0.2)) == [
        [1, 1, 4, 3], [1, 1, 4, 3], [2, 1, 4, 3], [2, 2, 4, 3], [2, 2, 3, 3]]


def test_wsolevaluation_multimodal_example():
    # evaluation_test.py's multimodal map. t=.2: the L of 3 pixels at the top left has polygon area
    # 0.5, the 5-pixel chain 0 -> the L, (0, 0, 2, 2). t=.6: two single pixels tie at area 0;
    # OpenCV lists the later-found (x=2) first -> (2, 3, 3, 3).
    scoremap = np.array([[0.4, 0.0, 0.2, 0.2, 0.2],
                         [0.4, 0.4, 0.0, 0.4, 0.0],
                         [0.0, 0.0, 0.0, 0.4, 0.0],
                         [1.0, 0.6, 0.8, 0.2, 0.2]])
    assert _legacy_boxes(scoremap, np.arange(0, 1, 0.2)) == [
        [0, 0, 4, 3], [0, 0, 2, 2], [0, 3, 3, 3], [2, 3, 3, 3], [0, 3, 1, 3]]


def test_wsolevaluation_hole_contour_competes_in_maxboxacc_v2():
    # A thick ring (rows/cols 1..7 of a 9x9 map, the centre 3..5 empty). Outer contour: boundingRect
    # (1, 1, 7, 7) -> box (1, 1, 8, 8). Hole contour: through the ring pixels 4-adjacent to the hole,
    # columns/rows 2..6 -> (2, 2, 5, 5) -> box (2, 2, 7, 7). GT (2, 2, 7, 7): the hole's box IoU 1;
    # the outer box "+1" 36 / 64. Legacy keeps the larger-area contour: the outer one.
    cam = np.zeros((9, 9))
    cam[1:8, 1:8] = 1.0
    cam[3:6, 3:6] = 0.0
    multi = MaxBoxAccV2Meter(cam_thresholds=1, iou_thresholds=(0.9,))
    legacy = MaxBoxAccV2Meter(cam_thresholds=1, iou_thresholds=(0.9,), multi_contour=False)
    assert multi.update(cam, [2, 2, 7, 7])[0] == 1.0
    assert legacy.update(cam, [2, 2, 7, 7])[0] == pytest.approx(36 / 64)


def test_wsolevaluation_rule_edges_and_empty_maps():
    # Touching the right/bottom edge: columns 2..3, rows 1..2 of a 3x4 map -> boundingRect
    # (2, 1, 2, 2) -> (2, 1, min(4, 3), min(3, 2)) = (2, 1, 3, 2): IoU 1 with that GT box.
    cam = np.zeros((3, 4))
    cam[1:3, 2:4] = 1.0
    meter = MaxBoxAccV2Meter(cam_thresholds=2)
    np.testing.assert_array_equal(meter.update(cam, [2, 1, 3, 2]), [1.0, 1.0])
    # Nothing above the cutoff (all-zero map): the box (0, 0, 0, 0) = the pixel (0, 0) under "+1":
    # IoU 1 with a zero-size GT box at (0, 0), 1/4 with (0, 0, 1, 1).
    np.testing.assert_array_equal(meter.update(np.zeros((3, 4)), [0, 0, 0, 0]), [1.0, 1.0])
    np.testing.assert_allclose(meter.update(np.zeros((3, 4)), [0, 0, 1, 1]), [0.25, 0.25])
    # A constant map c > 0: q = int(255 c) > int(t q) for every t < 1 -> the whole image,
    # (0, 0, W - 1, H - 1) = (0, 0, 3, 2).
    np.testing.assert_array_equal(meter.update(np.full((3, 4), 0.3), [0, 0, 3, 2]), [1.0, 1.0])


def test_wsolevaluation_cutoff_is_relative_to_the_quantised_max():
    # max 0.5 -> q max = int(127.5) = 127; t = 0.5 -> cutoff int(0.5 * 127) = 63. 0.2515 -> q = 64 > 63:
    # foreground; 0.25 -> int(63.75) = 63: not. Two single pixels tie at area 0 and OpenCV lists the
    # later-found one (x = 2) first: box (2, 0, min(3, 2), min(1, 0)) = (2, 0, 2, 0).
    legacy = MaxBoxAccV2Meter(cam_thresholds=[0.5], multi_contour=False)
    assert legacy.update(np.array([[0.5, 0.0, 0.2515]]), [2, 0, 2, 0])[0] == 1.0
    assert legacy.update(np.array([[0.5, 0.0, 0.25]]), [2, 0, 2, 0])[0] == 0.0


def test_wsolevaluation_rejects_nan_and_out_of_range():
    with pytest.raises(ValueError, match="finite"):
        MaxBoxAccV2Meter().update(np.array([[0.5, np.nan]]), [0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MaxBoxAccV2Meter().update(np.array([[0.5, 1.5]]), [0, 0, 1, 1])


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
    metas = [dict(CONTINUOUS), {"multi_contour": False, **CONTINUOUS}, {}]
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
        MaxBoxAccV2Meter(**CONTINUOUS).update(np.full((3, 3), 2.0), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="box_rule"):
        MaxBoxAccV2Meter(box_rule="opencv")
    with pytest.raises(ValueError, match="before any update"):
        MaxBoxAccV2Meter().compute()
