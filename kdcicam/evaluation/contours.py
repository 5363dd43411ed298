"""The contours OpenCV finds in a binary mask, their bounding boxes and areas, without OpenCV.

wsolevaluation turns a thresholded CAM into boxes with ``cv2.findContours(mask, RETR_TREE,
CHAIN_APPROX_SIMPLE)`` and ``cv2.boundingRect``; its legacy MaxBoxAcc keeps the contour of the
largest ``cv2.contourArea``. That tracer (Suzuki & Abe 1985) treats foreground as 8-connected and
background as 4-connected, with the image surrounded by background. What it returns follows from
the connected components:

- one *outer* contour per 8-connected foreground component; its bounding rectangle is the
  component's bounding box;
- one *hole* contour per 4-connected background region that does not touch the image border; the
  contour runs through the foreground pixels 4-adjacent to the hole, so its bounding rectangle is
  the hole's bounding box grown by one pixel on every side;
- ``contourArea`` is the area of the polygon through the contour's pixel centres. On the grid of
  2x2 windows of pixel centres (the image padded with one pixel of background) that polygon
  splits every window: foreground gets 1 for a window of four foreground pixels and 1/2 for three
  (the triangle of their centres); background gets the rest (a lone background pixel 1/2, two
  diagonal ones 1/2 each, two adjacent or more 1). A contour's area is the share of its own
  region plus the areas of every region it encloses;
- the order is OpenCV's: regions found in raster order (an outer contour at its component's first
  pixel, a hole at the foreground pixel left of its first pixel), returned depth first with the
  children of each contour in reverse order of discovery.

Boxes here are continuous xyxy (:mod:`kdcicam.evaluation.boxes`): columns x0 .. x1 - 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_EIGHT = ndimage.generate_binary_structure(2, 2)  # foreground: 8-connected
_FOUR = ndimage.generate_binary_structure(2, 1)  # background: 4-connected
_TWICE_AREA = np.array([0, 0, 0, 1, 2], dtype=np.int8)  # by foreground corners of a 2x2 window


@dataclass(frozen=True)
class Contours:
    """The contours of one mask, in OpenCV's order."""

    boxes: np.ndarray  # (K, 4) float64 continuous xyxy bounding rectangle of each contour
    areas: np.ndarray  # (K,) float64 cv2.contourArea of each contour
    is_hole: np.ndarray  # (K,) bool


def find_contours(mask: np.ndarray) -> Contours:
    """The contours ``cv2.findContours(mask, RETR_TREE, CHAIN_APPROX_SIMPLE)`` returns.

    Args:
        mask: (H, W) bool foreground.

    Returns:
        Their bounding rectangles, polygon areas and kinds, in OpenCV's order; K = 0 when the
        mask is empty.
    """
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)  # (H+2, W+2) the frame of background OpenCV assumes
    fg, nf = ndimage.label(padded, structure=_EIGHT)  # labels 1..nf
    if nf == 0:
        return Contours(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=bool))
    bg, nb = ndimage.label(~padded, structure=_FOUR)  # labels 1..nb; bg[0, 0] is the outside
    outside = bg[0, 0]
    # regions: fg component i -> i - 1; bg region j -> nf + j - 1 (the outside is dropped later)
    n = nf + nb
    share = _window_shares(padded, fg, bg, nf)  # (n,) each region's part of the 2x2 windows
    first = np.full(n, padded.size)  # raster index of each region's first pixel
    region = np.where(padded, fg - 1, nf + bg - 1).ravel()  # (P,) region of every pixel
    np.minimum.at(first, region, np.arange(padded.size))
    # parent: the region holding the pixel left of the first pixel (a component's surrounding
    # background, a hole's enclosing component)
    parent = region[first - 1]
    # discovery: a component at its first pixel, a hole at the foreground pixel to its left
    found = first.copy()
    found[nf:] -= 1
    hole = np.arange(n) >= nf
    keep = np.ones(n, dtype=bool)
    keep[nf + outside - 1] = False
    parent[parent == nf + outside - 1] = -1  # top level
    # areas: each region's share plus its descendants', children after parents in raster order
    area = share.copy()
    for r in np.argsort(found)[::-1].tolist():
        if keep[r] and parent[r] >= 0:
            area[parent[r]] += area[r]
    slices = ndimage.find_objects(fg)
    boxes = np.zeros((n, 4))
    boxes[:nf] = [(sx.start - 1, sy.start - 1, sx.stop - 1, sy.stop - 1) for sy, sx in slices]
    for j, s in enumerate(ndimage.find_objects(bg)):
        if s is not None and j + 1 != outside:
            sy, sx = s  # padded coordinates = hole box grown by one pixel
            boxes[nf + j] = (sx.start - 2, sy.start - 2, sx.stop, sy.stop)
    order = _opencv_order(np.flatnonzero(keep), parent, found)
    return Contours(boxes[order], area[order], hole[order])


def _window_shares(padded: np.ndarray, fg: np.ndarray, bg: np.ndarray, nf: int) -> np.ndarray:
    """Each region's share of the polygon areas over all 2x2 windows of pixel centres."""
    corners = [(slice(None, -1), slice(None, -1)), (slice(None, -1), slice(1, None)),
               (slice(1, None), slice(1, None)), (slice(1, None), slice(None, -1))]  # clockwise
    on = [padded[c] for c in corners]  # 4 x (H+1, W+1)
    count = sum(o.astype(np.int64) for o in on)  # foreground corners per window
    n = nf + int(bg.max())
    share = np.zeros(n)
    # foreground: 1 for four corners, 1/2 for three; any foreground corner names the component
    lab = np.maximum.reduce([fg[c] for c in corners])  # (H+1, W+1) a foreground label or 0
    w = np.where(count == 4, 1.0, np.where(count == 3, 0.5, 0.0))
    share[:nf] += np.bincount(lab.ravel(), weights=w.ravel(), minlength=nf + 1)[1:]
    # background: the lone / diagonal corners get 1/2 each, else the window's background is one
    # 4-connected piece and gets 1 (for 1 or 2-adjacent foreground corners)
    diagonal = (count == 2) & (on[0] == on[2])
    for c, o in zip(corners, on):
        half = ~o & ((count == 3) | diagonal)
        b = bg[c][half]
        share[nf:] += 0.5 * np.bincount(b, minlength=n - nf + 1)[1:]
    whole = (count <= 2) & ~diagonal
    blab = np.maximum.reduce([bg[c] for c in corners])[whole]  # any background corner's region
    share[nf:] += np.bincount(blab, minlength=n - nf + 1)[1:]
    return share


def _opencv_order(alive: np.ndarray, parent: np.ndarray, found: np.ndarray) -> list[int]:
    """Depth-first order of the kept regions, children in reverse order of discovery."""
    children: dict[int, list[int]] = {}
    for r in alive.tolist():
        children.setdefault(int(parent[r]), []).append(r)
    out: list[int] = []
    stack = sorted(children.get(-1, []), key=lambda r: found[r])  # pop() takes the last found
    while stack:
        r = stack.pop()
        out.append(r)
        stack.extend(sorted(children.get(r, []), key=lambda c: found[c]))
    return out


def largest_contour_box(mask: np.ndarray) -> np.ndarray | None:
    """The bounding rectangle of ``max(contours, key=cv2.contourArea)``, without tracing every contour.

    A contour encloses all of its descendants, and comes before them in OpenCV's order, so the first
    contour of largest area is always a top-level outer contour: a component of the mask with its
    holes filled, whose area is its share of the 2x2 windows (1 for four foreground corners, 1/2
    for three). Ties go to the component found last (OpenCV lists top-level contours that way).
    A mask of one 8-connected component has one top-level contour: its box, with no area computed.

    Args:
        mask: (H, W) bool foreground.

    Returns:
        (4,) float64 continuous xyxy box, or None when the mask is empty.
    """
    mask = np.asarray(mask, dtype=bool)
    fg, num_fg = ndimage.label(mask, structure=_EIGHT)
    if num_fg == 0:
        return None
    if num_fg == 1:  # one component: the only top-level contour, its holes inside its box
        sy, sx = ndimage.find_objects(fg)[0]
        return np.array([sx.start, sy.start, sx.stop, sy.stop], dtype=np.float64)
    padded = np.pad(mask, 1)  # (H+2, W+2)
    bg, _ = ndimage.label(~padded, structure=_FOUR)
    filled = bg != bg[0, 0]  # the foreground and its holes
    comp, n = ndimage.label(filled, structure=_EIGHT)
    if n == 0:
        return None
    on = filled.astype(np.int8)
    count = on[:-1, :-1] + on[:-1, 1:] + on[1:, :-1] + on[1:, 1:]  # (H+1, W+1) foreground corners
    lab = np.maximum(np.maximum(comp[:-1, :-1], comp[:-1, 1:]), np.maximum(comp[1:, :-1], comp[1:, 1:]))
    weight = _TWICE_AREA[count]  # (H+1, W+1) twice the window's foreground area: exact integers
    area = np.bincount(lab.ravel(), weights=weight.ravel(), minlength=n + 1)[1:]  # (n,)
    best = np.flatnonzero(area == area.max()) + 1  # candidate labels
    if len(best) > 1:  # the last found: the largest raster index of the first pixel
        firsts = []
        for label in best.tolist():
            rows = np.flatnonzero((comp == label).any(axis=1))
            top = int(rows[0])
            firsts.append(top * comp.shape[1] + int(np.argmax(comp[top] == label)))
        best = best[[int(np.argmax(firsts))]]
    sy, sx = ndimage.find_objects(comp, max_label=int(best[0]))[-1]  # padded coordinates
    return np.array([sx.start - 1, sy.start - 1, sx.stop - 1, sy.stop - 1], dtype=np.float64)
