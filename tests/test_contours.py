"""OpenCV's contours from labels: hand-worked masks, then real OpenCV on fuzzed masks and CAMs."""

import numpy as np
import pytest
from scipy import ndimage

from kdcicam.evaluation.contours import find_contours, largest_contour_box
from kdcicam.evaluation.metrics import MaxBoxAccV2Meter, cam_threshold_grid


def _listed(mask):
    found = find_contours(np.asarray(mask, dtype=bool))
    return [(b.astype(int).tolist(), float(a), bool(h)) for b, a, h in zip(found.boxes, found.areas, found.is_hole)]


def test_areas_are_polygons_through_pixel_centres():
    assert _listed([[1]]) == [([0, 0, 1, 1], 0.0, False)]  # one pixel: a point
    assert _listed([[1, 1, 1]]) == [([0, 0, 3, 1], 0.0, False)]  # a line: area 0
    assert _listed([[1, 1], [1, 1]]) == [([0, 0, 2, 2], 1.0, False)]  # centres span a unit square
    assert _listed([[1, 1], [1, 0]]) == [([0, 0, 2, 2], 0.5, False)]  # L: the triangle of 3 centres
    assert _listed(np.zeros((3, 3))) == []


def test_a_hole_gives_its_own_contour_grown_by_one_pixel():
    # 3x3 ring around one empty pixel: outer polygon = the 2x2 square of centres (area 4); the hole's
    # contour is the diamond through the 4 neighbours (area 2), box = the hole (1, 1, 2, 2) grown by 1.
    ring = np.ones((3, 3))
    ring[1, 1] = 0
    assert _listed(ring) == [([0, 0, 3, 3], 4.0, False), ([0, 0, 3, 3], 2.0, True)]


def test_diagonal_pixels_join_foreground_but_not_background():
    # 8-connected foreground: the diagonal pair is one component (area 0: a segment). The
    # background pixels (0, 1) and (1, 0) touch the border: no hole.
    assert _listed([[1, 0], [0, 1]]) == [([0, 0, 2, 2], 0.0, False)]
    # A diamond of 4 pixels around an empty centre: the centre is 4-connected to nothing else: a hole.
    diamond = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    assert [h for _, _, h in _listed(diamond)] == [False, True]


def test_order_is_opencvs_later_found_first_then_children():
    # Blobs found in raster order at (0,0), (5,0), (0,5), (5,5); OpenCV lists the last found first.
    m = np.zeros((9, 9))
    for y, x in ((0, 0), (0, 5), (5, 0), (5, 5)):
        m[y:y + 2, x:x + 2] = 1
    assert [b[:2] for b, _, _ in _listed(m)] == [[5, 5], [0, 5], [5, 0], [0, 0]]
    # A component with holes: itself, then its holes, the last found first.
    m = np.ones((7, 7))
    m[2, 2] = m[2, 5] = m[4, 4] = 0
    assert [b[:2] for b, _, _ in _listed(m)] == [[0, 0], [3, 3], [4, 1], [1, 1]]


def test_largest_contour_box_one_component_and_filled_holes():
    # one component (a ring at columns 1-4): its box, holes included
    ring = np.zeros((5, 6))
    ring[0:4, 1:5] = 1
    ring[1:3, 2:4] = 0
    assert largest_contour_box(ring).tolist() == [1, 0, 5, 4]
    # two components: the ring (12 pixels, filled polygon 3 x 3 = 9) beats a solid 2 x 5 bar
    # (10 pixels, polygon 1 x 4 = 4) because its hole counts towards its area
    two = np.zeros((5, 13))
    two[0:4, 1:5] = ring[0:4, 1:5]
    two[0:2, 7:12] = 1
    assert largest_contour_box(two).tolist() == [1, 0, 5, 4]
    assert largest_contour_box(np.zeros((2, 2))) is None


# --------------------------------------------------------------------------- against real OpenCV

def _cv2():
    return pytest.importorskip("cv2", reason="opencv-python-headless (the [test] extra) is the yardstick")


def test_contours_equal_opencvs_on_fuzzed_masks():
    cv2 = _cv2()
    rng = np.random.default_rng(0)
    for it in range(1500):
        h, w = (int(v) for v in rng.integers(1, 14, size=2))
        if it % 2:
            m = rng.random((h, w)) < rng.random()
        else:
            m = ndimage.zoom(rng.random((3, 3)), (h / 3 + 1, w / 3 + 1), order=1)[:h, :w] > rng.random()
        contours = cv2.findContours(m.astype(np.uint8) * 255, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        want = [(*cv2.boundingRect(c), cv2.contourArea(c)) for c in contours]
        got = find_contours(m)
        assert want == [(int(b[0]), int(b[1]), int(b[2] - b[0]), int(b[3] - b[1]), float(a))
                        for b, a in zip(got.boxes, got.areas)], m.astype(int)
        largest = largest_contour_box(m)  # the legacy pick, without tracing every contour
        if contours:
            x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
            assert largest.tolist() == [x, y, x + w, y + h], m.astype(int)
        else:
            assert largest is None


def _opencv_best_ious(cv2, cam, thresholds, gt, multi_contour):
    """wsolevaluation's compute_bboxes_from_scoremaps + calculate_multiple_iou, written from its rules."""
    height, width = cam.shape
    image = (cam * 255).astype(np.uint8)
    gt = np.asarray(gt, dtype=np.float64)
    out = []
    for t in thresholds:
        _, mask = cv2.threshold(image, int(t * np.max(image)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        if not contours:
            boxes = np.zeros((1, 4))
        else:
            if not multi_contour:
                contours = [max(contours, key=cv2.contourArea)]
            rects = _bounding_rects(contours)
            assert tuple(rects[0]) == cv2.boundingRect(contours[0])  # the same rule as OpenCV's
            x, y, w, h = rects.T
            boxes = np.stack([x, y, np.minimum(x + w, width - 1), np.minimum(y + h, height - 1)], 1).astype(float)
        iw = np.maximum(0, np.minimum(boxes[:, None, 2], gt[None, :, 2]) - np.maximum(boxes[:, None, 0], gt[None, :, 0]) + 1)
        ih = np.maximum(0, np.minimum(boxes[:, None, 3], gt[None, :, 3]) - np.maximum(boxes[:, None, 1], gt[None, :, 1]) + 1)
        inter = iw * ih
        area_a = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
        area_b = (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
        union = area_a[:, None] + area_b[None, :] - inter
        out.append(np.where(union > 0, inter / np.where(union > 0, union, 1), 0).max())
    return np.array(out)


def _bounding_rects(contours):
    """``cv2.boundingRect`` of every contour, (x, y, w, h) rows: the extent of its integer points.

    One numpy pass instead of a call per contour: a noise CAM has ~4,000 contours per threshold.
    """
    points = np.concatenate(contours)[:, 0, :]
    starts = np.cumsum([0] + [len(c) for c in contours[:-1]])
    low = np.minimum.reduceat(points, starts, axis=0)
    high = np.maximum.reduceat(points, starts, axis=0)
    return np.concatenate([low, high - low + 1], 1)


def _fuzzed_cam(rng, it, side):
    kind = it % 5
    if kind == 0:
        cam = ndimage.zoom(rng.random((4, 4)), side / 4, order=1)[:side, :side]
    elif kind == 1:
        cam = rng.random((side, side))  # noise: many components and holes
    elif kind == 2:
        cam = np.round(ndimage.zoom(rng.random((6, 6)), side / 6, order=0)[:side, :side] * 4) / 4  # plateaus
    elif kind == 3:
        cam = np.full((side, side), rng.random()) if it % 2 else np.zeros((side, side))  # constant
    else:
        cam = ndimage.zoom(rng.random((8, 8)), side / 8, order=3)[:side, :side] + 0.3 * rng.random((side, side))
    if cam.max() > cam.min():
        cam = (cam - cam.min()) / (cam.max() - cam.min())
    return np.clip(cam, 0, 1).astype(rng.choice([np.float32, np.float64]))


def _fuzzed_gt(rng, side):
    g = int(rng.integers(1, 4))  # several boxes, some zero-size, some outside the map
    x0, y0 = rng.integers(-3, side, g), rng.integers(-3, side, g)
    return np.stack([x0, y0, x0 + rng.integers(0, side // 2 + 1, g), y0 + rng.integers(0, side // 2 + 1, g)], 1)


def test_box_accuracy_equals_wsolevaluations_on_fuzzed_cams():
    cv2 = _cv2()
    rng = np.random.default_rng(1)
    thresholds = cam_threshold_grid(100)
    for it in range(60):
        side = int(rng.choice([7, 16, 33]))
        cam, gt = _fuzzed_cam(rng, it, side), _fuzzed_gt(rng, side)
        for multi in (True, False):
            got = MaxBoxAccV2Meter(cam_thresholds=100, multi_contour=multi).best_ious(cam, gt)
            np.testing.assert_array_equal(got, _opencv_best_ious(cv2, cam, thresholds, gt, multi))


@pytest.mark.slow
def test_box_accuracy_equals_wsolevaluations_on_fuzzed_224_cams():
    cv2 = _cv2()
    rng = np.random.default_rng(2)
    thresholds = cam_threshold_grid(100)
    mine = {m: MaxBoxAccV2Meter(cam_thresholds=100, multi_contour=m) for m in (True, False)}
    theirs = {m: np.zeros((3, 100)) for m in (True, False)}
    count = {True: 0, False: 0}
    for it in range(150):
        cam, gt = _fuzzed_cam(rng, it, 224), _fuzzed_gt(rng, 224)
        for multi in (True, False) if it % 3 == 0 else (True,):  # the legacy rule on every third
            best = _opencv_best_ious(cv2, cam, thresholds, gt, multi)
            theirs[multi] += best[None, :] >= np.array([0.3, 0.5, 0.7])[:, None]
            count[multi] += 1
            np.testing.assert_array_equal(mine[multi].update(cam, gt), best)
    for multi in (True, False):
        assert mine[multi].compute()["curve"] == (theirs[multi] * 100.0 / count[multi]).tolist()
