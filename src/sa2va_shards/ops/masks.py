"""Mask kernels with PyTorch's legacy `nearest` rule, batched over objects (and frames).

`F.interpolate(mode='nearest')` maps output index i to source index
`min(floor(float32(i) * float32(in / out)), in - 1)` (special cases: out == in is the identity,
out == 2 * in is i >> 1). The float32 arithmetic matters: the exact integer form `(i * in) // out`
agrees for power-of-two outputs (16, 1024) but not for e.g. 14 or 224. Pillow NEAREST and
torch 'nearest-exact' sample cell centres instead and give other masks and other K.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "cell_coverage",
    "check_masks",
    "count_k",
    "fallback_any",
    "nearest_indices",
    "pool_masks",
    "resize_masks",
    "select_masks",
]


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index for each of `n_out` outputs under torch's legacy `nearest` rule.

    Returns:
        (n_out,) int64 indices in [0, n_in).
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be >= 1, got n_in={n_in}, n_out={n_out}")
    out = np.arange(n_out, dtype=np.int64)
    if n_out == n_in:
        return out
    if n_out == 2 * n_in:
        return out >> 1
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.floor(out.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(src, n_in - 1)


def check_masks(masks: np.ndarray) -> tuple[int, int, int]:
    """Check `masks` is (n, H, W) uint8 or bool and return (n, H, W)."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be (n, H, W), got shape {masks.shape}")
    if masks.dtype not in (np.uint8, np.bool_):
        raise ValueError(f"masks must be uint8 or bool, got {masks.dtype}")
    n, h, w = masks.shape
    if h < 1 or w < 1:
        raise ValueError(f"masks must have H, W >= 1, got {masks.shape}")
    return n, h, w


def _is_column_major(masks: np.ndarray) -> bool:
    # pycocotools decodes to (H, W, n) Fortran order; its (n, H, W) view has stride(H) < stride(W).
    return masks.shape[1] > 1 and masks.shape[2] > 1 and masks.strides[1] < masks.strides[2]


def resize_masks(masks: np.ndarray, *, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-resize (n, H, W) masks to (n, size_h, size_w), bit-identical to torch 'nearest'.

    Two `np.take` gathers (rows, then columns) in the input's own memory order: a per-mask
    column-major input (pycocotools' layout) gives a column-major output, which pycocotools can
    re-encode without a copy. Does not modify `masks`.

    Returns:
        (n, size_h, size_w) array of the input dtype.
    """
    _, h, w = check_masks(masks)
    out_h, out_w = (size, size) if isinstance(size, int) else size
    rows, cols = nearest_indices(h, out_h), nearest_indices(w, out_w)
    if _is_column_major(masks):
        t = masks.transpose(0, 2, 1)  # (n, W, H), C-contiguous for pycocotools output
        return np.take(np.take(t, cols, axis=1), rows, axis=2).transpose(0, 2, 1)
    return np.take(np.take(masks, rows, axis=1), cols, axis=2)


def select_masks(masks: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Masks `index` of (n, H, W), keeping the input's memory order (no-op when all are kept)."""
    index = np.asarray(index, dtype=np.int64)
    if len(index) == len(masks) and (index == np.arange(len(masks))).all():
        return masks
    if _is_column_major(masks):
        return np.take(masks.transpose(0, 2, 1), index, axis=0).transpose(0, 2, 1)
    return np.take(masks, index, axis=0)


def pool_masks(masks: np.ndarray, *, grid: int) -> np.ndarray:
    """Sample (n, H, W) masks onto the (n, grid, grid) vision-token grid (torch 'nearest').

    Equal to `F.interpolate(m[None].float(), size=(grid, grid), mode='nearest')[0] != 0`.
    Pooling the original and pooling its 1024 resize give the same grid for power-of-two sizes.

    Returns:
        (n, grid, grid) bool, C-contiguous.
    """
    _, h, w = check_masks(masks)
    rows, cols = nearest_indices(h, grid), nearest_indices(w, grid)
    return np.ascontiguousarray(masks[:, rows[:, None], cols[None, :]] != 0)


def count_k(prompt_masks: np.ndarray) -> np.ndarray:
    """K per object: the number of set grid cells of each (…, grid, grid) prompt mask.

    Returns:
        int64 array of the leading shape (e.g. (n,) or (frames, n)).
    """
    if prompt_masks.ndim < 2:
        raise ValueError(f"prompt masks must be (..., grid, grid), got {prompt_masks.shape}")
    lead = prompt_masks.shape[:-2]
    flat = prompt_masks.reshape(*lead, -1)
    return np.count_nonzero(flat, axis=-1).astype(np.int64)


def cell_coverage(masks: np.ndarray, *, grid: int) -> np.ndarray:
    """Pixels of each mask inside each grid cell, with cells bounded by the `nearest` sample rows.

    Cell (i, j) spans source rows [rows[i], rows[i+1]) and columns [cols[j], cols[j+1]), so
    every pixel belongs to exactly one cell and the cell's sample point is its top-left pixel.

    Returns:
        (n, grid, grid) int64 pixel counts.
    """
    _, h, w = check_masks(masks)
    rows, cols = nearest_indices(h, grid), nearest_indices(w, grid)
    # reduceat needs strictly usable starts; when H < grid some rows repeat (zero-width cells).
    per_row = _sum_segments(masks.astype(np.int64, copy=False), rows, axis=1)
    return _sum_segments(per_row, cols, axis=2)


def _sum_segments(a: np.ndarray, starts: np.ndarray, *, axis: int) -> np.ndarray:
    """Sum of a[starts[i]:starts[i+1]] along `axis` (last segment runs to the end); repeated
    starts give empty segments (0), unlike bare np.add.reduceat."""
    csum = np.cumsum(a, axis=axis)
    zero_shape = list(csum.shape)
    zero_shape[axis] = 1
    csum = np.concatenate([np.zeros(zero_shape, csum.dtype), csum], axis=axis)
    ends = np.append(starts[1:], a.shape[axis])
    return np.take(csum, ends, axis=axis) - np.take(csum, starts, axis=axis)


def fallback_any(masks: np.ndarray, prompt_masks: np.ndarray, *, grid: int) -> np.ndarray:
    """For objects with K = 0 but a non-empty mask, set the cell(s) the object covers most.

    A documented deviation from pure `nearest` (config `k_zero: fallback_any`). Objects with
    K > 0 and empty masks are returned unchanged. Does not modify its inputs.

    Returns:
        (n, grid, grid) bool.
    """
    out = prompt_masks.copy()
    zero = np.flatnonzero(count_k(prompt_masks) == 0)
    if zero.size == 0:
        return out
    cover = cell_coverage(masks[zero], grid=grid)
    best = cover.reshape(len(zero), -1).max(axis=1)
    hit = (cover == best[:, None, None]) & (best[:, None, None] > 0)
    out[zero] = hit
    return out
