"""The steps of :func:`kdcicam.evaluation.sweep.sweep_components`: entry levels, steepest-ascent
basins, basin merges per level, and the scratch buffers they share."""

from __future__ import annotations

import numpy as np

_BUCKET_BITS = 16  # the sweep's ascent orders pixels by value in 2^16 buckets of the value range
_TABLE_BITS = 12  # the sweep looks entry levels up per 2^12 coarser buckets


class SweepWorkspace:
    """Scratch buffers that :func:`sweep_components` reuses across calls on same-size maps.

    The sweep's passes over the image are cheap enough that fetching fresh memory for every
    temporary (the allocator hands large freed arrays back to the OS, and touching new pages
    faults) would cost as much as the arithmetic. Keep one workspace per evaluator; it is not
    thread-safe. Results never alias these buffers.
    """

    def __init__(self) -> None:
        self.shape: tuple[int, int] | None = None

    def prepare(self, height: int, width: int) -> SweepWorkspace:
        """(Re)allocate the buffers for an (H, W) map if the size changed; return self."""
        if self.shape != (height, width):
            size = height * width
            self.shape = (height, width)
            self.index = np.arange(size)  # (N,) raster index
            self.reverse = np.arange(size - 1, -1, -1)  # (N,) N - 1 - raster index
            self.column = np.tile(np.arange(width), height)  # (N,) column x
            self.row = np.repeat(np.arange(height), width)  # (N,) row y
            self.real = np.empty(size)  # (N,) float64 scratch
            self.ints = [np.empty(size, dtype=np.int64) for _ in range(4)]  # (N,) int64 scratch
        return self


def _entry_levels(v: np.ndarray, vmin: float, vmax: float, c: np.ndarray,
                  ws: SweepWorkspace) -> tuple[np.ndarray, np.ndarray]:
    """Exact entry levels e = #{i : c_i < v} and value buckets (step 1 of the sweep).

    ``bucket`` = trunc((v - min) * scale) is monotone in v, and so is its coarse bucket. A coarse
    bucket that holds no cutoff's own coarse bucket lies strictly between two cutoffs, so a
    table gives e for all its pixels; pixels of the (few) buckets that hold a cutoff are
    searched exactly.

    Args:
        v: (H, W) float map (float16/32/64), not constant.
        vmin: its minimum.
        vmax: its maximum (> vmin).
        c: (T,) ascending float64 cutoffs.
        ws: prepared workspace; the results live in ``ws.ints[3]`` and ``ws.ints[0]``.

    Returns:
        entry (N,) int64 in [0, T], bucket (N,) int64 in [0, 2^16).
    """
    bucket, tmp, _, entry = ws.ints
    scale = ((1 << _BUCKET_BITS) - 1) / (vmax - vmin)
    flat = v.ravel()
    np.subtract(flat, vmin, out=ws.real, dtype=np.float64)  # the same float64 arithmetic ...
    ws.real *= scale  # ... as for the cutoffs below, so one monotone map for both
    np.copyto(bucket, ws.real, casting="unsafe")  # (N,) trunc: monotone in v
    shift = _BUCKET_BITS - _TABLE_BITS
    coarse = 1 << _TABLE_BITS
    cut = np.clip((c - vmin) * scale, -1, 1 << _BUCKET_BITS).astype(np.int64) >> shift  # (T,)
    # table[k] = #{i : cut_i < k}: count the cutoffs by coarse bucket, then cumulate
    table = np.cumsum(np.bincount(np.clip(cut + 1, 0, coarse), minlength=coarse + 1)[:coarse])
    holds = np.zeros(coarse, dtype=bool)  # the bucket holds a cutoff: search its pixels exactly
    holds[cut[(cut >= 0) & (cut < coarse)]] = True
    np.right_shift(bucket, shift, out=tmp)
    np.take(table, tmp, out=entry, mode="clip")  # (N,)
    unsure = np.flatnonzero(holds[tmp])
    entry[unsure] = np.searchsorted(c, flat[unsure], side="left")
    return entry, bucket


def _entry_levels_uint8(q: np.ndarray, c: np.ndarray, ws: SweepWorkspace) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_entry_levels` of a uint8 map: e = #{i : c_i < v} and the bucket v - min by table look-up.

    The bucket keeps the order of the values (distinct values, distinct buckets), as the float path does.

    Args:
        q: (H, W) uint8 map, not constant.
        c: (T,) ascending float64 cutoffs.
        ws: prepared workspace; the results live in ``ws.ints[3]`` and ``ws.ints[0]``.

    Returns:
        entry (N,) int64 in [0, T], bucket (N,) int64 in [0, 256).
    """
    bucket, entry = ws.ints[0], ws.ints[3]
    flat = q.ravel()
    table = np.searchsorted(c, np.arange(256, dtype=np.float64), side="left")  # (256,) e of each value
    np.take(table, flat, out=entry)
    np.subtract(flat, int(flat.min()), out=bucket, dtype=np.int64)
    return entry, bucket


def _run_stats(key: np.ndarray, width: int, cells: int) -> tuple[np.ndarray, ...]:
    """First / last raster index, min / max column and pixel count of every key value (step 3).

    A key's first pixel starts a run (a row's maximal stretch of equal keys) and its last pixel
    ends one, so the reductions go over runs, far fewer than pixels on smooth maps.

    Args:
        key: (N,) int64 key per pixel of an image W pixels wide, in [0, cells).
        width: W.
        cells: number of key values.

    Returns:
        first, last, x0, x1, count: (cells,) int64 each; first = N, x0 = W, last = x1 = -1 and
        count = 0 for an absent key.
    """
    size = key.size
    start = np.empty(size, dtype=bool)  # (N,) a run starts here
    start[0] = True
    np.not_equal(key[1:], key[:-1], out=start[1:])
    start[::width] = True  # every row starts a run
    starts = np.flatnonzero(start)  # (R,)
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:] - 1
    ends[-1] = size - 1
    run_key = key[starts]
    first, x0 = np.full(cells, size), np.full(cells, width)
    last, x1 = np.full(cells, -1), np.full(cells, -1)
    np.minimum.at(first, run_key, starts)
    np.maximum.at(last, run_key, ends)
    np.minimum.at(x0, run_key, starts % width)
    np.maximum.at(x1, run_key, ends % width)
    count = np.bincount(run_key, weights=ends - starts + 1, minlength=cells).astype(np.int64)
    return first, last, x0, x1, count


def _ascent_roots(entry: np.ndarray, bucket: np.ndarray, ws: SweepWorkspace,
                  connectivity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Root of every pixel's steepest-ascent path (step 1 of the sweep).

    The order is the packed integer (e, value bucket, -raster index): it refines the entry level
    e (which alone decides correctness), the value makes paths climb towards real maxima (few
    basins), the index makes it strict (no cycles on plateaus). The max of the packed keys over
    a neighbourhood is at once the best neighbour's key and, in its low bits, its index.

    Args:
        entry: (N,) entry levels (``ws.ints[3]``, kept).
        bucket: (N,) value buckets in [0, 2^16) (``ws.ints[0]``, consumed).
        ws: prepared workspace.
        connectivity: 4 or 8.

    Returns:
        root (N,) int64 root index per pixel, and the two other free workspace buffers.
    """
    height, width = ws.shape
    size = entry.size
    index_bits = int(size).bit_length()
    entry_bits = int(entry.max()).bit_length()
    value_bits = max(0, min(_BUCKET_BITS, 62 - index_bits - entry_bits))
    along, best, packed = ws.ints[0], ws.ints[1], ws.ints[2]
    np.left_shift(entry, value_bits + index_bits, out=packed)  # (N,)
    bucket >>= _BUCKET_BITS - value_bits
    bucket <<= index_bits
    packed |= bucket
    packed |= ws.reverse  # lower raster index wins ties
    _neighbourhood_max(packed, best, along, height, width, connectivity)
    best &= (1 << index_bits) - 1
    root = np.subtract(size - 1, best, out=best)  # (N,) the best neighbour (or itself)
    spare = along
    rounds = 0
    while True:  # pointer jumping: after k rounds every path of length <= 2^k is done
        np.take(root, root, out=spare, mode="clip")
        rounds += 1
        done = rounds > 3 and np.array_equal(spare[::61], root[::61]) and np.array_equal(spare, root)  # sample first
        root, spare = spare, root
        if done:
            return root, spare, packed


def _basin_labels(basin: np.ndarray, entry: np.ndarray, column: np.ndarray, connectivity: int,
                  nb: int, num: int) -> np.ndarray:
    """Component label of every basin at every level (step 2 of the sweep).

    Args:
        basin: (N,) basin per pixel (nb for pixels of no foreground basin).
        entry: (N,) entry levels.
        column: (N,) column of each pixel.
        connectivity: 4 or 8.
        nb: number of basins.
        num: number of levels.

    Returns:
        (T, B) int64: basins with equal labels at level i form one component there.
    """
    size = len(basin)
    width = int(column[-1]) + 1
    # forward neighbour offsets, each with the column (0 or W-1) whose pairs wrap a row end
    steps = [(1, width - 1), (width, None)]
    if connectivity == 8:
        steps += [(width + 1, width - 1), (width - 1, 0)]
    found, offset = [], []
    for d, wrap in steps:
        if 0 < d < size:
            differ = basin[:size - d] != basin[d:]  # (N-d,) pairs (p, p+d) across basins
            if wrap is not None:
                differ[wrap::width] = False  # p in that column: p+d is not its neighbour
            found.append(np.flatnonzero(differ))
            offset.append(d)
    label = np.broadcast_to(np.arange(nb), (num, nb)).copy()  # (T, B) nothing merged
    if not found:  # a single pixel
        return label
    at = np.concatenate(found)  # (M,) first pixel of each candidate pair
    nxt = at + np.repeat(offset, [len(f) for f in found])  # (M,) its neighbour
    st = np.minimum(entry[at], entry[nxt])  # both foreground at levels 0 .. st-1
    a, b = basin[at], basin[nxt]
    pair = np.minimum(a, b) * nb + np.maximum(a, b)  # basin pair, lower id first
    if not st.all():
        pair, st = pair[st > 0], st[st > 0]
    if st.size == 0:
        return label
    if nb * nb <= 4 * size:  # strongest link per pair through a dense table
        table = np.zeros(nb * nb, dtype=np.int64)
        np.maximum.at(table, pair, st)
        pair = np.flatnonzero(table)
        st = table[pair]
    else:  # many basins (noise): sort instead
        order = np.lexsort((st, pair))
        pair, st = pair[order], st[order]
        last = np.ones(len(pair), dtype=bool)
        last[:-1] = pair[1:] != pair[:-1]
        pair, st = pair[last], st[last]
    order = np.argsort(-st, kind="stable")
    # Kruskal from the top level down (union by size): merging component cb into ca at
    # strength s means cb's basins carry ca's label at levels 0 .. s-1.
    owner = list(range(nb))  # find() with path halving
    weight = [1] * nb
    parent = np.arange(nb)  # merge tree: parent[cb] = ca ...
    joined = np.zeros(nb, dtype=np.int64)  # ... at levels below joined[cb]
    for p, s in zip(pair[order].tolist(), st[order].tolist()):
        ra, rb = p // nb, p % nb
        while owner[ra] != ra:
            owner[ra] = owner[owner[ra]]
            ra = owner[ra]
        while owner[rb] != rb:
            owner[rb] = owner[owner[rb]]
            rb = owner[rb]
        if ra == rb:
            continue
        if weight[ra] < weight[rb]:
            ra, rb = rb, ra
        owner[rb] = ra
        weight[ra] += weight[rb]
        parent[rb], joined[rb] = ra, s
    # Label at level i: climb the merge tree while the merge is in effect (joined > i). Merge
    # levels only fall going up, so the climb stops at the first merge not yet made.
    levels = np.arange(num)[:, None]  # (T, 1)
    step = np.where(joined[None, :] > levels, parent[None, :], np.arange(nb)[None, :])  # (T, B)
    step += levels * nb  # flat index into step.ravel()
    flat = step.ravel()
    label = flat
    while True:
        nxt_label = flat[label]  # (T*B,)
        if np.array_equal(nxt_label, label):
            return (label.reshape(num, nb) - levels * nb)
        label = nxt_label


def _neighbourhood_max(key: np.ndarray, out: np.ndarray, scratch: np.ndarray, height: int,
                       width: int, connectivity: int) -> None:
    """``out`` = max of ``key`` over each pixel and its 8 (or 4) neighbours, on flat buffers.

    Shifts of the flat array are contiguous (fast); a shift by one column wraps around row ends,
    so the first and last columns are redone on 2-D views.

    Args:
        key: (N,) int64 values.
        out: (N,) int64 result buffer.
        scratch: (N,) int64 buffer (overwritten).
        height: H.
        width: W.
        connectivity: 8 (the 3x3 square, separable) or 4 (the cross).
    """
    rows = scratch if connectivity == 8 else out  # max along the row: left, self, right
    np.copyto(rows, key)
    if width > 1:
        np.maximum(rows[1:], key[:-1], out=rows[1:])
        np.maximum(rows[:-1], key[1:], out=rows[:-1])
        k2, r2 = key.reshape(height, width), rows.reshape(height, width)
        np.maximum(k2[:, 0], k2[:, 1], out=r2[:, 0])  # undo the wrap-around
        np.maximum(k2[:, -1], k2[:, -2], out=r2[:, -1])
    src = rows if connectivity == 8 else key  # then along the column: up, self, down
    if connectivity == 8:
        np.copyto(out, rows)
    np.maximum(out[width:], src[:-width], out=out[width:])
    np.maximum(out[:-width], src[width:], out=out[:-width])
