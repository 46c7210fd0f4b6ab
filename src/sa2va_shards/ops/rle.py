"""COCO segmentations <-> masks, thin wrappers over pycocotools.

Masks stay in the layout pycocotools returns ((H, W, n) Fortran order, seen as (n, H, W) with
column-major planes): a C-to-Fortran copy of full-resolution masks costs more than the decode.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sa2va_shards.errors import Reason, SampleError
from sa2va_shards.ops.rle_resize import check_runs

__all__ = [
    "MAX_MASK_PIXELS",
    "decode_segmentations",
    "polygon_problem",
    "rle_decode",
    "rle_encode",
    "segmentation_to_rle",
    "segmentations_to_rles",
    "strict_dim",
]

#: pycocotools counts runs in uint32: a mask must have fewer pixels than this.
MAX_MASK_PIXELS = 2**32 - 1
#: a polygon vertex may lie this many image sides outside the image (annotators overshoot
#: edges; far beyond is garbage that makes pycocotools allocate per pixel of edge, or crash).
POLYGON_MARGIN = 1.0
#: an object's polygons may be this many times the image's half-perimeter long in total.
POLYGON_LENGTH_FACTOR = 64


def strict_dim(value: Any) -> int:
    """A height or width from an annotation: a positive integer, or a float that is one
    exactly (JSON writers emit 480.0). Anything else (480.5, "480", null, True) is refused
    instead of being truncated or coerced.

    Raises:
        ValueError: not a positive whole number.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, float) and not (np.isfinite(value) and value.is_integer()):
        raise ValueError(f"{value!r} is not a whole number")
    if value < 1:
        raise ValueError(f"{value!r} is not positive")
    return int(value)


def _bad(detail: str) -> SampleError:
    return SampleError(Reason.BAD_SEGMENTATION, detail, stage="decode")


def polygon_problem(polys: list, height: int, width: int) -> str | None:
    """Why pycocotools must not rasterise these polygons, or None.

    pycocotools allocates per pixel of polygon edge and has no bounds checks: a vertex at
    1e12 crashes the process, one at 1e6 costs gigabytes. So vertices must lie within
    `POLYGON_MARGIN` image sides of the image, and the total edge length is bounded.
    """
    if not polys:
        return "polygon list is empty"
    length = 0.0
    for p in polys:
        if not isinstance(p, list) or len(p) < 6 or len(p) % 2:
            n = len(p) if isinstance(p, list) else type(p).__name__
            return f"polygon needs >= 3 (x, y) points as a flat even list, got {n}"
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in p):
            return "polygon has a non-numeric coordinate"
        xy = np.asarray(p, np.float64).reshape(-1, 2)
        if not np.isfinite(xy).all():
            return "polygon has a non-finite coordinate"
        lo = -POLYGON_MARGIN * np.array([width, height])
        hi = (1 + POLYGON_MARGIN) * np.array([width, height])
        if (xy < lo).any() or (xy > hi).any():
            return (f"polygon vertex far outside the {width}x{height} image "
                    f"(x range {xy[:, 0].min():g}..{xy[:, 0].max():g}, "
                    f"y range {xy[:, 1].min():g}..{xy[:, 1].max():g})")
        length += np.abs(np.diff(xy, axis=0, append=xy[:1])).max(axis=1).sum()
    if length > POLYGON_LENGTH_FACTOR * (height + width):
        return (f"polygon edges are {length:.0f} px long, over the budget for a "
                f"{width}x{height} image")
    return None


def _polygon_rle(polys: list, height: int, width: int) -> dict:
    problem = polygon_problem(polys, height, width)
    if problem:
        raise _bad(problem)
    return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))


def _rle_size(size: Any) -> tuple[int, int]:
    if not (isinstance(size, list | tuple) and len(size) == 2):
        raise _bad(f"RLE size must be [H, W], got {size!r}")
    try:
        return strict_dim(size[0]), strict_dim(size[1])
    except ValueError as e:
        raise _bad(f"RLE size {list(size)!r}: {e}") from e


def segmentation_to_rle(seg: Any, height: int, width: int) -> dict:
    """One COCO segmentation (polygon list, uncompressed or compressed RLE) -> compressed RLE.

    A compressed string is passed through unchecked: use `segmentations_to_rles`, which
    checks every string before anything can decode it.

    Polygons are rasterised at (height, width) and merged (union, so overlapping polygons of one
    object stay binary). An RLE's own `size` must equal (height, width).

    Raises:
        SampleError: `bad_segmentation` for malformed input, `mask_size_mismatch` when an
            RLE's size is not (height, width).
    """
    if isinstance(seg, list):
        return _polygon_rle(seg, height, width)
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise _bad(f"segmentation must be a polygon list or an RLE dict, got {type(seg).__name__}")
    size = _rle_size(seg["size"])
    if size != (height, width):
        raise SampleError(
            Reason.MASK_SIZE_MISMATCH,
            f"RLE size {list(size)} != image size [{height}, {width}]",
            stage="decode",
        )
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise _bad("uncompressed RLE counts must be non-negative integers")
        if sum(counts) != height * width:
            raise _bad(f"uncompressed RLE counts sum to {sum(counts)}, not H*W={height * width}")
        return mask_utils.frPyObjects(seg, height, width)
    if isinstance(counts, bytes | str):  # checked in batch by segmentations_to_rles
        if isinstance(counts, str) and not counts.isascii():
            # never replaced: '?' is itself a valid RLE character, so a replaced string
            # would decode to a different mask
            raise _bad("compressed RLE string has non-ASCII characters")
        c = counts.encode("ascii") if isinstance(counts, str) else counts
        return {"size": [height, width], "counts": c}
    raise _bad(f"RLE counts must be a list or a string, got {type(counts).__name__}")


def rle_decode(rles: list[dict], *, height: int, width: int) -> np.ndarray:
    """Decode compressed RLEs to (n, H, W) uint8 {0,1} (column-major planes, no copy).

    Raises:
        SampleError: `bad_segmentation` when a compressed string does not decode to H*W pixels.
    """
    if not rles:
        return np.zeros((0, height, width), np.uint8)
    try:
        with warnings.catch_warnings():
            # pycocotools' Cython decode hands NumPy 2 an object whose __array__ predates the
            # `copy` keyword: NumPy warns on every call, then falls back (same array)
            warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy",
                                    DeprecationWarning)
            decoded = mask_utils.decode(rles)  # (H, W, n) Fortran
    except Exception as e:  # pycocotools raises bare Exceptions on garbage strings
        raise _bad(f"RLE decode failed: {type(e).__name__}: {e}") from e
    return decoded.transpose(2, 0, 1)


def segmentations_to_rles(segs: list[Any], *, height: int, width: int) -> list[dict]:
    """COCO segmentations of one image -> compressed RLEs, all checked, nothing decoded.

    Raises:
        SampleError: `bad_segmentation`, `mask_size_mismatch` (see `segmentation_to_rle`), or
            `bad_segmentation` for a compressed string that is malformed or does not cover H*W.
    """
    if height * width > MAX_MASK_PIXELS:
        raise _bad(f"{width}x{height} is over the {MAX_MASK_PIXELS} pixels a COCO mask can hold")
    rles = [segmentation_to_rle(s, height, width) for s in segs]
    for i, err in enumerate(check_runs(rles, n_pixels=height * width)):
        if err:
            raise _bad(f"object {i}: {err}")
    return rles


def decode_segmentations(segs: list[Any], *, height: int,
                         width: int) -> tuple[np.ndarray, list[dict]]:
    """Decode COCO segmentations of one image in one pycocotools call.

    Returns:
        (masks (n, H, W) uint8 {0,1} column-major planes, the compressed RLEs).
    """
    rles = segmentations_to_rles(segs, height=height, width=width)
    return rle_decode(rles, height=height, width=width), rles


def rle_encode(masks: np.ndarray) -> list[dict]:
    """Encode (n, H, W) {0,1} masks as COCO compressed RLE dicts with str counts (JSON-ready).

    Column-major planes (pycocotools' own layout, and what `resize_masks` keeps) encode without
    a copy; other layouts are copied once.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (n, H, W), got {masks.shape}")
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8, copy=False))
    rles = mask_utils.encode(fortran)
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}
            for r in rles]
