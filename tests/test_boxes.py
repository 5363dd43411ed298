"""Boxes from heatmaps, IoU and the threshold sweep on hand-made arrays (answers worked by hand)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from kdcicam.evaluation.boxes import (
    EMPTY_BOX,
    REFERENCE,
    STANDARD,
    BoxPolicy,
    all_component_boxes,
    box_from_heatmap,
    check_boxes,
    check_heatmap,
    foreground_mask,
    iou_matrix,
)
from kdcicam.evaluation.sweep import (
    SweepWorkspace,
    largest_per_level,
    sweep_best_iou,
    sweep_components,
    sweep_reference,
)
from kdcicam.evaluation.sweep_steps import _run_stats

# Two blobs on a 4x5 map (rows = y, columns = x):
#   A: rows 0-1, columns 0-2, value 0.9: 6 pixels, box (0, 0, 3, 2), area 3*2 = 6
#   B: column 4 rows 0-3 plus (x=3, y=3), value 0.6: 5 pixels, box (3, 0, 5, 4), area 2*4 = 8
# A has more pixels, B the larger box; column 3 (rows 0-2) and row 2 (columns 0-3) keep them apart.
TWO_BLOBS = np.array([[0.9, 0.9, 0.9, 0.0, 0.6],
                      [0.9, 0.9, 0.9, 0.0, 0.6],
                      [0.0, 0.0, 0.0, 0.0, 0.6],
                      [0.0, 0.0, 0.0, 0.6, 0.6]])


# --------------------------------------------------------------------------- IoU

def test_iou_identity_boxes_give_eye():
    boxes = np.array([[1, 1, 3, 3], [4, 4, 5, 5]])
    assert (iou_matrix(boxes, boxes) == np.eye(2)).all()
    assert (iou_matrix(boxes, boxes, pixel_inclusive=True) == np.eye(2)).all()


def test_iou_realistic_case_8_over_27_with_plus_one():
    # wsolevaluation's case: +1 areas 5*5 = 25 and 2*5 = 10, intersection x 3..4, y 2..5 = 2*4 = 8
    # -> 8 / (25 + 10 - 8) = 8/27.
    a, b = np.array([[1, 2, 5, 6]]), np.array([[3, 1, 4, 5]])
    assert iou_matrix(a, b, pixel_inclusive=True)[0, 0] == pytest.approx(8 / 27)
    # Continuous: areas 4*4 = 16 and 1*4 = 4, intersection [3,4] x [2,5] = 1*3 = 3 -> 3/17.
    assert iou_matrix(a, b)[0, 0] == pytest.approx(3 / 17)


def test_iou_zero_area_boxes():
    zeros_a, zeros_b = np.zeros((3, 4)), np.zeros((5, 4))
    ious = iou_matrix(zeros_a, zeros_b)
    assert ious.shape == (3, 5) and ious.dtype == np.float64
    assert (ious == 0).all()  # continuous: empty union -> 0
    # "+1": (0,0,0,0) is the pixel (0,0), identical to itself -> 1, as wsolevaluation's test says.
    assert (iou_matrix(zeros_a, zeros_b, pixel_inclusive=True) == 1).all()
    # A zero-area box inside a real one: intersection 0 -> IoU 0.
    assert iou_matrix(EMPTY_BOX, [0, 0, 4, 4])[0, 0] == 0


def test_iou_containment_and_disjoint():
    assert iou_matrix([0, 0, 4, 4], [1, 1, 3, 3])[0, 0] == pytest.approx(4 / 16)
    assert iou_matrix([0, 0, 1, 1], [5, 5, 6, 6])[0, 0] == 0


def test_iou_touching_boxes_differ_by_convention():
    a, b = [0, 0, 2, 2], [2, 0, 4, 2]
    assert iou_matrix(a, b)[0, 0] == 0  # they share an edge only
    # "+1": both 3x3 = 9 pixels, sharing column x=2 (1 x 3 = 3 pixels) -> 3 / (9 + 9 - 3) = 1/5.
    assert iou_matrix(a, b, pixel_inclusive=True)[0, 0] == pytest.approx(0.2)


def test_pixel_inclusive_equals_continuous_iou_of_boxes_one_pixel_larger():
    rng = np.random.default_rng(0)
    lo = rng.integers(0, 10, (20, 2))
    a = np.concatenate([lo, lo + rng.integers(0, 6, (20, 2))], axis=1)
    lo = rng.integers(0, 10, (7, 2))
    b = np.concatenate([lo, lo + rng.integers(0, 6, (7, 2))], axis=1)
    grow = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(iou_matrix(a, b, pixel_inclusive=True),
                               iou_matrix(a + grow, b + grow))


def test_iou_accepts_torch_and_rejects_bad_boxes():
    assert iou_matrix(torch.tensor([0.0, 0.0, 2.0, 2.0]), np.array([[0, 0, 2, 2]]))[0, 0] == 1
    with pytest.raises(ValueError, match="x1 >= x0"):
        iou_matrix([[2, 0, 1, 1]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"shape \(4,\) or \(N, 4\)"):
        check_boxes(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        check_boxes([0, 0, np.nan, 1])


# --------------------------------------------------------------------------- heatmap checks

@pytest.mark.parametrize("bad, message", [
    (np.zeros((1, 3, 3)), "2-D array"),
    (np.zeros(5), "2-D array"),
    (np.zeros((0, 4)), "must not be empty"),
    (np.zeros((2, 2), dtype=bool), "real numeric dtype"),
])
def test_check_heatmap_rejects_shape_and_dtype(bad, message):
    with pytest.raises(ValueError, match=message):
        check_heatmap(bad)


def test_check_heatmap_names_the_first_bad_value():
    h = np.zeros((3, 3))
    h[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN at row 1, column 2"):
        check_heatmap(h)
    h[1, 2] = np.inf
    with pytest.raises(ValueError, match="inf at row 1, column 2"):
        check_heatmap(h)


def test_check_heatmap_unit_range_and_torch():
    with pytest.raises(ValueError, match=r"in \[0, 1\].*max=1.5"):
        check_heatmap(np.array([[0.0, 1.5]]), unit_range=True)
    out = check_heatmap(torch.ones(2, 3))
    assert isinstance(out, np.ndarray) and out.shape == (2, 3) and out.dtype == np.float32
    assert check_heatmap(np.ones((2, 2), dtype=np.int64)).dtype == np.float64


# --------------------------------------------------------------------------- one box per map

def test_two_blobs_most_pixels_vs_largest_box():
    # standard, θ = 0.5: foreground = both blobs; A has the most pixels (6 > 5).
    np.testing.assert_array_equal(box_from_heatmap(TWO_BLOBS, 0.5, "standard"), [0, 0, 3, 2])
    # reference, θ = 0.5: keep > 0.45 (both blobs); kept mean = (6*0.9 + 5*0.6) / 20 = 0.42, so
    # the mask is both blobs again; B has the larger box (8 > 6).
    np.testing.assert_array_equal(box_from_heatmap(TWO_BLOBS, 0.5, "reference"), [3, 0, 5, 4])
    # every component, raster order of the first pixel: A starts at (0,0), B at (4,0)
    np.testing.assert_array_equal(all_component_boxes(TWO_BLOBS, 0.5), [[0, 0, 3, 2], [3, 0, 5, 4]])
    # B touches the right and bottom edges: x1 = W = 5, y1 = H = 4.


def test_standard_threshold_is_strict():
    # θ = 0.6: B's 0.6 is not > 0.6, only A remains; θ = 0.9: nothing -> fallback.
    np.testing.assert_array_equal(all_component_boxes(TWO_BLOBS, 0.6), [[0, 0, 3, 2]])
    np.testing.assert_array_equal(box_from_heatmap(TWO_BLOBS, 0.9), EMPTY_BOX)


def test_reference_mask_is_above_the_mean_of_the_kept_map():
    h = np.array([[0.2, 0.4, 1.0, 0.4, 0.2]])
    # θ = 0.3: keep > 0.3 -> [0, .4, 1, .4, 0], mean 1.8/5 = 0.36 -> mask x = 1..3 -> (1, 0, 4, 1)
    np.testing.assert_array_equal(box_from_heatmap(h, 0.3, "reference"), [1, 0, 4, 1])
    # θ = 0.5: keep > 0.5 -> [0, 0, 1, 0, 0], mean 0.2 -> mask x = 2 -> (2, 0, 3, 1)
    np.testing.assert_array_equal(box_from_heatmap(h, 0.5, "reference"), [2, 0, 3, 1])
    # The reference map is min-subtracted, not max-normalised: values above 1 are fine.
    np.testing.assert_array_equal(box_from_heatmap(h * 7, 0.5, "reference"), [2, 0, 3, 1])


def test_connectivity_of_each_policy():
    diagonal = np.array([[1.0, 0.0], [0.0, 1.0]])
    # 8-connected (standard): one component, box (0,0,2,2); 4-connected (reference): two single
    # pixels of equal box area, the raster-first one wins.
    np.testing.assert_array_equal(box_from_heatmap(diagonal, 0.5, STANDARD), [0, 0, 2, 2])
    np.testing.assert_array_equal(box_from_heatmap(diagonal, 0.5, REFERENCE), [0, 0, 1, 1])
    custom = BoxPolicy(mask="absolute", select="pixels", connectivity=4)
    np.testing.assert_array_equal(all_component_boxes(diagonal, 0.5, custom),
                                  [[0, 0, 1, 1], [1, 1, 2, 2]])


@pytest.mark.parametrize("policy", ["standard", "reference"])
def test_empty_and_constant_maps_give_the_fallback(policy):
    np.testing.assert_array_equal(box_from_heatmap(np.zeros((4, 5)), 0.0, policy), EMPTY_BOX)
    # constant 0.5: reference keeps 0.5 everywhere, mean 0.5, nothing is > mean
    if policy == "reference":
        np.testing.assert_array_equal(box_from_heatmap(np.full((4, 5), 0.5), 0.2, policy),
                                      EMPTY_BOX)


def test_constant_map_under_the_standard_rule():
    # every pixel is 0.5 > 0.2: the whole image; at θ = 0.5 nothing (strict >)
    np.testing.assert_array_equal(box_from_heatmap(np.full((4, 5), 0.5), 0.2), [0, 0, 5, 4])
    np.testing.assert_array_equal(box_from_heatmap(np.full((4, 5), 0.5), 0.5), EMPTY_BOX)


def test_blob_at_the_corner():
    h = np.zeros((3, 4))
    h[1:, 2:] = 1.0  # rows 1-2, columns 2-3: the bottom-right corner
    np.testing.assert_array_equal(box_from_heatmap(h, 0.5), [2, 1, 4, 3])
    np.testing.assert_array_equal(foreground_mask(h, 0.5), h > 0.5)


def test_unknown_policy_and_unit_range():
    with pytest.raises(ValueError, match="unknown box policy 'cam'"):
        box_from_heatmap(TWO_BLOBS, 0.5, "cam")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        box_from_heatmap(TWO_BLOBS * 2, 0.5, "standard")


# --------------------------------------------------------------------------- threshold sweep

def _assert_same_sweep(a, b):
    np.testing.assert_array_equal(a.levels, b.levels)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert (a.num_levels, a.shape) == (b.num_levels, b.shape)


def test_sweep_by_hand():
    # cutoffs 0, 0.5, 0.75: level 0 -> A and B; level 1 -> B's 0.6 > 0.5 too; level 2 -> A only
    for sweep in (sweep_reference(TWO_BLOBS, [0, 0.5, 0.75]),
                  sweep_components(TWO_BLOBS, [0, 0.5, 0.75])):
        np.testing.assert_array_equal(sweep.levels, [0, 0, 1, 1, 2])
        np.testing.assert_array_equal(sweep.boxes,
                                      [[0, 0, 3, 2], [3, 0, 5, 4]] * 2 + [[0, 0, 3, 2]])
        np.testing.assert_array_equal(sweep.pixels, [6, 5, 6, 5, 6])
        np.testing.assert_array_equal(largest_per_level(sweep), [0, 2, 4])


def test_sweep_merging_blobs():
    # Two peaks joined by a saddle of 0.5: separate above 0.5, one component at cutoff 0.4.
    h = np.array([[0.9, 0.5, 0.8]])
    fast = sweep_components(h, [0.4, 0.5, 0.85])
    _assert_same_sweep(fast, sweep_reference(h, [0.4, 0.5, 0.85]))
    np.testing.assert_array_equal(fast.levels, [0, 1, 1, 2])
    np.testing.assert_array_equal(fast.boxes,
                                  [[0, 0, 3, 1], [0, 0, 1, 1], [2, 0, 3, 1], [0, 0, 1, 1]])


@pytest.mark.parametrize("connectivity", [4, 8])
def test_fast_sweep_equals_reference_on_random_maps(connectivity):
    rng = np.random.default_rng(connectivity)
    ws = SweepWorkspace()
    for trial in range(120):
        height, width = (int(s) for s in rng.integers(1, 24, 2))
        kind = trial % 6
        if kind == 0:  # noise: many basins
            h = rng.random((height, width)).astype(np.float32)
        elif kind == 1:  # few levels: plateaus and exact ties with the cutoffs
            h = (rng.integers(0, 5, (height, width)) / 4).astype(np.float16)
        elif kind == 2:  # smooth
            h = ndimage.gaussian_filter(rng.random((height, width)), 2.0)
        elif kind == 3:  # integers, as the quantised wsolevaluation map
            h = np.floor(ndimage.gaussian_filter(rng.random((height, width)), 1.5) * 765)
        elif kind == 4:  # tiny span around a large offset
            h = 5 + 1e-6 * rng.normal(size=(height, width))
        else:  # a perfect 0/1 map
            h = np.zeros((height, width))
            h[rng.integers(0, height):, rng.integers(0, width):] = 1.0
        n = int(rng.integers(1, 60))
        lo, hi = float(h.min()), float(h.max())
        choice = trial % 3
        if choice == 0:
            cutoffs = np.sort(rng.uniform(lo - 0.1, hi + 0.1, n))
        elif choice == 1:  # cutoffs equal to map values, with repeats
            cutoffs = np.sort(rng.choice(h.astype(np.float64).ravel(), n))
        else:
            cutoffs = lo + (hi - lo) * np.arange(0, 1, 1 / n)
        fast = sweep_components(h, cutoffs, connectivity, ws if trial % 2 else None)
        _assert_same_sweep(fast, sweep_reference(h, cutoffs, connectivity))


@pytest.mark.parametrize("connectivity", [4, 8])
def test_uint8_sweep_looks_levels_up_and_equals_the_float_sweep(connectivity):
    # uint8 maps take the table look-up path; the float64 copy takes the bucket path and the
    # reference labels each cutoff: all three must agree (integer cutoffs hit map values exactly)
    rng = np.random.default_rng(10 + connectivity)
    ws = SweepWorkspace()
    for trial in range(60):
        height, width = (int(s) for s in rng.integers(1, 30, 2))
        if trial % 3 == 0:
            q = rng.integers(0, 256, (height, width)).astype(np.uint8)  # noise
        elif trial % 3 == 1:
            q = rng.integers(0, 4, (height, width)).astype(np.uint8) * 85  # plateaus
        else:
            q = (ndimage.gaussian_filter(rng.random((height, width)), 1.5) * 255).astype(np.uint8)
        cutoffs = np.sort(rng.integers(-1, 256, int(rng.integers(1, 40)))).astype(np.float64)
        fast = sweep_components(q, cutoffs, connectivity, ws if trial % 2 else None)
        _assert_same_sweep(fast, sweep_reference(q.astype(np.float64), cutoffs, connectivity))
        _assert_same_sweep(fast, sweep_components(q.astype(np.float64), cutoffs, connectivity))


def test_run_stats_by_hand():
    # keys of a 2 x 3 image: [[1, 1, 0], [0, 1, 1]]; runs (1: 0-1), (0: 2), (0: 3), (1: 4-5)
    key = np.array([1, 1, 0, 0, 1, 1])
    first, last, x0, x1, count = _run_stats(key, 3, 3)
    np.testing.assert_array_equal(first, [2, 0, 6])  # key 2 absent: first = N
    np.testing.assert_array_equal(last, [3, 5, -1])
    np.testing.assert_array_equal(x0, [0, 0, 3])  # key 0 at columns 2 and 0
    np.testing.assert_array_equal(x1, [2, 2, -1])
    np.testing.assert_array_equal(count, [2, 4, 0])


def test_fast_sweep_equals_reference_on_smooth_cam():
    rng = np.random.default_rng(7)
    low = ndimage.gaussian_filter(rng.normal(size=(14, 14)), 1.0)
    cam = ndimage.zoom(low, 8, order=1)  # 112 x 112, like an upsampled CAM
    cam = ((cam - cam.min()) / (cam.max() - cam.min())).astype(np.float32)
    cutoffs = np.arange(0, 1, 0.01)
    for connectivity in (4, 8):
        _assert_same_sweep(sweep_components(cam, cutoffs, connectivity),
                           sweep_reference(cam, cutoffs, connectivity))


def test_sweep_degenerate_maps():
    cutoffs = [0.0, 0.5]
    for h in (np.zeros((3, 3)), np.full((2, 4), 0.7), np.array([[1.0]]), np.zeros((1, 6))):
        _assert_same_sweep(sweep_components(h, cutoffs), sweep_reference(h, cutoffs))
    const = sweep_components(np.full((2, 4), 0.7), cutoffs)  # 0.7 > 0 and > 0.5: whole image twice
    np.testing.assert_array_equal(const.boxes, [[0, 0, 4, 2], [0, 0, 4, 2]])
    assert len(sweep_components(np.zeros((3, 3)), cutoffs).levels) == 0
    with pytest.raises(ValueError, match="ascending"):
        sweep_components(np.zeros((2, 2)), [0.5, 0.1])


def test_best_iou_multi_contour_vs_largest():
    # At cutoff 0.5 A (6 px) and B (5 px); GT = B's box. Every contour: IoU 1; largest (A): 0.
    sweep = sweep_components(TWO_BLOBS, [0.5])
    assert sweep_best_iou(sweep, [3, 0, 5, 4], multi_contour=True)[0] == 1
    assert sweep_best_iou(sweep, [3, 0, 5, 4], multi_contour=False)[0] == 0
    # an empty level scores the fallback box: continuous IoU 0
    empty = sweep_components(np.zeros((3, 3)), [0.5])
    assert sweep_best_iou(empty, [0, 0, 1, 1])[0] == 0
