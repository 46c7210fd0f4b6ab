"""torch-`nearest` resize done on COCO RLEs directly, never decoding a full-resolution mask.

A nearest resize only picks source rows and columns. In COCO's column-major RLE a run of ones
is a set of (column, row range) pieces; the output rows that sample a source row range form a
contiguous range too (the row map is monotonic), and a source column is copied to the output
columns that sample it. So a resize maps run pieces to run pieces: O(runs + output columns)
per mask instead of O(H * W) for decode + gather + encode. All masks of a batch are processed
as one stack of columns, in numpy, with no loop over objects or pixels.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from sa2va_shards.ops.masks import nearest_indices

__all__ = ["check_runs", "pool_rles", "pool_runs", "resize_rles", "resize_runs", "rle_to_runs",
           "runs_area"]


def rle_to_runs(rles: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Parse COCO compressed RLE strings (pycocotools' rleFrString), all masks at once.

    Returns:
        (runs int64 concatenated over masks, offsets (n + 1,) into runs per mask).
    """
    strings = [r["counts"].encode() if isinstance(r["counts"], str) else r["counts"]
               for r in rles]
    lengths = np.array([len(s) for s in strings], np.int64)
    c = np.frombuffer(b"".join(strings), np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64), np.zeros(len(rles) + 1, np.int64)
    last = (c & 0x20) == 0  # a value ends at a char without the continuation bit
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    pos = np.arange(c.size) - np.repeat(starts, ends - starts + 1)  # char index within value
    x = np.add.reduceat((c & 0x1F) << (5 * pos), starts)
    neg = (c[ends] & 0x10) != 0
    x[neg] -= np.left_shift(1, 5 * (ends[neg] - starts[neg] + 1))  # sign extension
    # values per mask: a mask's string ends exactly at a value end
    value_offsets = np.concatenate([[0], np.searchsorted(ends, np.cumsum(lengths) - 1) + 1])
    return _undelta(x, value_offsets), value_offsets


def runs_area(runs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Pixels set per mask (int64), from `rle_to_runs` output: the sum of its odd runs.
    (pycocotools' `area` overflows a uint8 with 256 or more masks in one call.)"""
    n = len(offsets) - 1
    idx = np.arange(runs.size) - np.repeat(offsets[:-1], np.diff(offsets))
    owner = np.repeat(np.arange(n), np.diff(offsets))
    ones = (idx % 2) == 1
    return np.bincount(owner[ones], weights=runs[ones], minlength=n).astype(np.int64)


def check_runs(rles: list[dict], *, n_pixels: int) -> list[str | None]:
    """Why each RLE string is unusable, or None: pycocotools decodes without bounds checks, so a
    bad character, a value cut off at the end, a negative run or runs not summing to H*W must
    be caught before it decodes.

    Returns:
        one entry per RLE: None when well-formed and covering exactly `n_pixels`.
    """
    strings = [r["counts"].encode() if isinstance(r["counts"], str) else r["counts"]
               for r in rles]
    lengths = np.array([len(s) for s in strings], np.int64)
    c = np.frombuffer(b"".join(strings), np.uint8).astype(np.int64) - 48
    owner = np.repeat(np.arange(len(strings)), lengths)
    bad_char = np.bincount(owner[(c < 0) | (c >= 64)], minlength=len(strings)) > 0
    last = c[np.maximum(np.cumsum(lengths) - 1, 0)] if c.size else np.zeros(len(strings), int)
    cut = (lengths > 0) & ((last & 0x20) != 0)
    malformed = "compressed RLE string is malformed"
    errors: list[str | None] = [malformed if b or t else None
                                for b, t in zip(bad_char, cut, strict=True)]
    good = [i for i, e in enumerate(errors) if e is None]
    runs, offsets = rle_to_runs([{"counts": strings[i]} for i in good])
    run_owner = np.repeat(np.arange(len(good)), np.diff(offsets))
    negative = np.bincount(run_owner[runs < 0], minlength=len(good)) > 0
    totals = np.bincount(run_owner, weights=runs, minlength=len(good)).astype(np.int64)
    for j, i in enumerate(good):
        if negative[j]:
            errors[i] = "compressed RLE string is malformed"
        elif totals[j] != n_pixels:
            errors[i] = f"RLE runs cover {totals[j]} pixels, not H*W={n_pixels}"
    return errors


def _undelta(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """cnts[m] = x[m] + cnts[m - 2] for m > 2, restarting per mask."""
    idx = np.arange(x.size) - np.repeat(offsets[:-1], np.diff(offsets))
    out = x.copy()
    for parity in (0, 1):  # two interleaved chains per mask, each a segmented cumsum
        sel = np.flatnonzero((idx >= 3) & (idx % 2 == parity) | (idx == 2 - parity))
        if sel.size == 0:
            continue
        seg_start = idx[sel] == 2 - parity
        csum = np.cumsum(x[sel])
        base = np.maximum.accumulate(np.where(seg_start, np.arange(sel.size), 0))
        out[sel] = csum - csum[base] + x[sel][base]
    return out


def _one_intervals(runs: np.ndarray, offsets: np.ndarray,
                   n_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of every run of ones, in the linear index of the stacked masks."""
    per_mask = np.diff(offsets)
    mask_id = np.repeat(np.arange(len(per_mask)), per_mask)
    local = np.arange(runs.size) - np.repeat(offsets[:-1], per_mask)
    csum = np.cumsum(runs)
    before = np.concatenate([[0], csum])[offsets[:-1]]  # pixels before each mask's first run
    ends = csum - np.repeat(before, per_mask) + mask_id * n_pixels
    ones = (local % 2 == 1) & (runs > 0)  # runs alternate 0s, 1s, 0s, ... per mask
    return (ends - runs)[ones], ends[ones]


def resize_rles(rles: list[dict], *, height: int, width: int,
                size: int | tuple[int, int]) -> list[dict]:
    """Nearest-resize (H, W) masks given as COCO RLEs to (out_h, out_w) RLEs.

    Bit-identical to `resize_masks` (torch legacy 'nearest') on the decoded masks. The output
    RLEs are canonical (what `pycocotools.mask.encode` gives for the same mask).

    Returns:
        compressed RLE dicts with str counts, one per input.
    """
    return resize_runs(*rle_to_runs(rles), height=height, width=width, size=size)


def resize_runs(runs: np.ndarray, offsets: np.ndarray, *, height: int, width: int,
                size: int | tuple[int, int]) -> list[dict]:
    """`resize_rles` on already parsed runs (`rle_to_runs`), to parse a sample's RLEs once."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    n, hw = len(offsets) - 1, height * width
    if n == 0:
        return []
    s, e = _one_intervals(runs, offsets, hw)
    # split each interval into per-column pieces (column index over the whole stack)
    c0, c1 = s // height, (e - 1) // height
    reps = c1 - c0 + 1
    col = np.repeat(c0, reps) + _ranges(reps)
    r0 = np.where(col == np.repeat(c0, reps), np.repeat(s, reps) - col * height, 0)
    r1 = np.where(col == np.repeat(c1, reps), np.repeat(e, reps) - col * height, height)
    # source rows [r0, r1) -> output rows [row_map[r0], row_map[r1])
    row_map = np.searchsorted(nearest_indices(height, out_h), np.arange(height + 1), "left")
    o0, o1 = row_map[r0], row_map[r1]
    keep = o1 > o0
    col, o0, o1 = col[keep], o0[keep], o1[keep]
    # source column c of mask k -> output columns [col_map[c], col_map[c + 1]) of mask k
    col_map = np.searchsorted(nearest_indices(width, out_w), np.arange(width + 1), "left")
    mask_id, c = col // width, col % width
    j0, j1 = col_map[c], col_map[c + 1]
    reps = j1 - j0
    j = np.repeat(j0, reps) + _ranges(reps)
    k = np.repeat(mask_id, reps)
    start = k * (out_h * out_w) + j * out_h + np.repeat(o0, reps)
    end = start + np.repeat(o1 - o0, reps)
    return _encode_intervals(start, end, k, n, out_h, out_w)


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges: [0..l0), [0..l1), ..."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    base = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total) - base


def _encode_intervals(start: np.ndarray, end: np.ndarray, mask_id: np.ndarray, n: int,
                      out_h: int, out_w: int) -> list[dict]:
    """Disjoint [start, end) runs of ones (stack index) -> canonical compressed RLEs."""
    order = np.argsort(start, kind="stable")  # duplicated columns interleave pieces
    start, end, mask_id = start[order], end[order], mask_id[order]
    # merge touching intervals (a run continuing into the next column): canonical runs
    new_run = (start[1:] != end[:-1]) | (mask_id[1:] != mask_id[:-1])
    first = np.flatnonzero(np.concatenate([[start.size > 0], new_run]))
    last = np.append(first[1:], start.size)[: first.size] - 1
    m_id = mask_id[first]
    base = m_id * (out_h * out_w)
    m_start, m_end = start[first] - base, end[last] - base
    bounds = np.searchsorted(m_id, np.arange(n + 1), "left")
    out = []
    for i in range(n):  # packaging only: pycocotools takes one dict per mask
        a, b = bounds[i], bounds[i + 1]
        edges = np.empty(2 * (b - a) + 2, np.int64)
        edges[0], edges[-1] = 0, out_h * out_w
        edges[1:-1:2], edges[2:-1:2] = m_start[a:b], m_end[a:b]
        counts = np.diff(edges)
        if counts.size > 1 and counts[-1] == 0:  # ends with ones: no trailing empty run
            counts = counts[:-1]
        out.append({"size": [out_h, out_w], "counts": counts.tolist()})
    rles = mask_utils.frPyObjects(out, out_h, out_w)
    return [{"size": [out_h, out_w], "counts": r["counts"].decode("ascii")} for r in rles]


def pool_rles(rles: list[dict], *, height: int, width: int, grid: int) -> np.ndarray:
    """(n, grid, grid) bool prompt masks straight from RLEs (torch legacy 'nearest')."""
    return pool_runs(*rle_to_runs(rles), height=height, width=width, grid=grid)


def pool_runs(runs: np.ndarray, offsets: np.ndarray, *, height: int, width: int,
              grid: int) -> np.ndarray:
    """`pool_rles` on already parsed runs."""
    if len(offsets) == 1:
        return np.zeros((0, grid, grid), bool)
    small = resize_runs(runs, offsets, height=height, width=width, size=grid)
    return np.ascontiguousarray(mask_utils.decode(small).transpose(2, 0, 1) != 0)
