"""The boxes-only sweep behind wsolevaluation's MaxBoxAccV2: hand-worked maps, then fuzzed maps against
labelling every threshold and against the straightforward per-threshold contours (and OpenCV)."""

import numpy as np
import pytest
from scipy import ndimage

from kdcicam.evaluation.boxes import iou_matrix
from kdcicam.evaluation.contours import largest_contour_box
from kdcicam.evaluation.level_boxes import RANK_LIMIT, level_boxes, tie_ranks
from kdcicam.evaluation.metrics import cam_threshold_grid
from kdcicam.evaluation.sweep import SweepWorkspace, sweep_reference
from kdcicam.evaluation.wsol_rule import (
    box_scores,
    contour_boxes,
    integer_cutoffs,
    largest_contour_boxes,
    quantize,
)


def _pairs(levels, boxes):
    """The (level, box) pairs as a sorted list (level_boxes leaves a level's components unordered)."""
    return sorted((int(lv), *(int(v) for v in b)) for lv, b in zip(levels, boxes))


def test_two_peaks_split_above_their_saddle():
    q = np.array([[9, 9, 1, 0, 0],
                  [9, 9, 4, 7, 0],
                  [0, 0, 0, 7, 0]], dtype=np.uint8)
    levels, boxes = level_boxes(q, np.array([0.0, 3.0, 5.0, 8.0, 9.0]), 8, SweepWorkspace())
    assert _pairs(levels, boxes) == [
        (0, 0, 0, 4, 3),  # q > 0: one 8-connected component over every nonzero pixel
        (1, 0, 0, 4, 3),  # q > 3: the 4 joins the 9s and the 7s
        (2, 0, 0, 2, 2), (2, 3, 1, 4, 3),  # q > 5: the two peaks apart
        (3, 0, 0, 2, 2),  # q > 8: the 9s only
    ]  # q > 9: nothing


def test_four_connected_background_and_constant_maps():
    q = np.array([[5, 0, 5],
                  [0, 5, 0]], dtype=np.uint8)  # diagonal zeros: apart under 4-connectivity
    levels, boxes = level_boxes(q, np.array([0.0]), 4, SweepWorkspace())
    assert _pairs(levels, boxes) == [(0, 0, 0, 1, 1), (0, 1, 1, 2, 2), (0, 2, 0, 3, 1)]
    const = level_boxes(np.full((2, 3), 7, dtype=np.uint8), np.array([3.0, 6.0, 7.0]), 8, SweepWorkspace())
    assert _pairs(*const) == [(0, 0, 0, 3, 2), (1, 0, 0, 3, 2)]


def test_tie_ranks_scale_the_order_map_to_the_rank_range():
    ranks = tie_ranks(np.array([[0.0, 0.5], [1.0, 0.25]]))
    assert ranks.tolist() == [0, RANK_LIMIT // 2, RANK_LIMIT, RANK_LIMIT // 4]  # 65535 * 0.5 = 32767.5
    assert tie_ranks(np.full((2, 2), 0.3)).tolist() == [0, 0, 0, 0]


def _fuzzed_map(rng, it):
    h, w = (int(v) for v in rng.integers(1, 40, size=2))
    kind = it % 4
    if kind == 0:  # smooth: few basins
        cam = ndimage.zoom(rng.random((4, 4)), (h / 4 + 1, w / 4 + 1), order=1)[:h, :w]
    elif kind == 1:  # noise: many basins, components and holes
        cam = rng.random((h, w))
    elif kind == 2:  # plateaus
        cam = np.round(ndimage.zoom(rng.random((5, 5)), (h / 5 + 1, w / 5 + 1), order=0)[:h, :w] * 4) / 4
    else:  # smooth plus noise
        cam = ndimage.zoom(rng.random((6, 6)), (h / 6 + 1, w / 6 + 1), order=3)[:h, :w] + 0.2 * rng.random((h, w))
    if cam.max() > cam.min():
        cam = (cam - cam.min()) / (cam.max() - cam.min())
    return np.clip(cam, 0, 1)


def test_level_boxes_equal_labelling_every_threshold_whatever_the_tie_ranks():
    rng = np.random.default_rng(3)
    grid = cam_threshold_grid(100)
    ws = SweepWorkspace()
    for it in range(160):
        cam = _fuzzed_map(rng, it)
        q = quantize(cam)
        cutoffs = integer_cutoffs(q, grid)
        q8 = q.astype(np.uint8)
        for connectivity, values, cuts, order in ((8, q8, cutoffs, cam), (4, 255 - q8, 254.0 - cutoffs[::-1], -cam)):
            want = sweep_reference(values, cuts, connectivity)
            for ranks in (None, tie_ranks(order), rng.integers(0, RANK_LIMIT + 1, q8.size)):
                got = level_boxes(values, cuts, connectivity, ws, ranks)
                assert _pairs(*got) == _pairs(want.levels, want.boxes), (it, connectivity)


def test_box_scores_equal_the_per_threshold_contours():
    rng = np.random.default_rng(4)
    grid = cam_threshold_grid(100)
    thetas = (0.2, 0.5, 0.333, 0.0, 0.999)  # on the grid and off it
    workspaces = (SweepWorkspace(), SweepWorkspace())
    for it in range(120):
        cam = _fuzzed_map(rng, it) if it % 20 else np.full((5, 7), 0.0 if it % 40 else 0.6)  # constants too
        h, w = cam.shape
        gt = np.array([[0, 0, w // 2, h // 2], [w // 3, h // 4, w - 1, h - 1]], dtype=np.float64)
        best, located = box_scores(cam, grid, gt, thetas, workspaces)
        q = quantize(cam)
        want = [iou_matrix(contour_boxes(q, c, False), gt, pixel_inclusive=True).max()
                for c in integer_cutoffs(q, grid).tolist()]  # every contour at every threshold
        np.testing.assert_array_equal(best, want)
        np.testing.assert_array_equal(located, largest_contour_boxes(cam, thetas))


def test_box_scores_equal_opencvs_on_fuzzed_224_cams():
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the [test] extra) is the yardstick")
    rng = np.random.default_rng(5)
    grid = cam_threshold_grid(100)
    workspaces = (SweepWorkspace(), SweepWorkspace())
    for _ in range(6):
        low = ndimage.gaussian_filter(rng.normal(size=(14, 14)), 1.0)
        cam = ndimage.zoom(low, 16, order=1)
        cam = ((cam - cam.min()) / (cam.max() - cam.min())).astype(np.float32)
        gt = np.array([[20, 30, 120, 200]], dtype=np.float64)
        best, located = box_scores(cam, grid, gt, (0.2,), workspaces)
        image = (cam * 255).astype(np.uint8)
        for t, got in zip(grid, best):
            _, mask = cv2.threshold(image, int(t * np.max(image)), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            rects = [cv2.boundingRect(c) for c in contours] or [(0, 0, 0, 0)]
            boxes = np.array([[x, y, min(x + bw, 223), min(y + bh, 223)] for x, y, bw, bh in rects], float)
            assert got == iou_matrix(boxes, gt, pixel_inclusive=True).max()
        mask = image > int(0.2 * np.max(image))
        x, y, bw, bh = cv2.boundingRect(max(cv2.findContours(mask.astype(np.uint8), cv2.RETR_TREE,
                                                             cv2.CHAIN_APPROX_SIMPLE)[0], key=cv2.contourArea))
        assert located[0].tolist() == [x, y, min(x + bw, 223), min(y + bh, 223)]
        assert largest_contour_box(mask).tolist() == [x, y, x + bw, y + bh]
