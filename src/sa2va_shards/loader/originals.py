"""Loader side of `image.store`: a sample whose `jpg` is the source file as it was.

The worker decodes the source once and makes, each by ONE resample of the original as Sa2VA
does from the file: the S x S SAM2 input, the 448 thumbnail and, when tiling, the image at its
dynamic tile grid. They travel as the batch fields a resized build's sample has (`image`,
`thumb`, `tile_image`), so `batch.to_device` uses them as they are and never resamples them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from sa2va_shards import ops
from sa2va_shards.errors import SampleError
from sa2va_shards.ops.store import STORE_ORIGINAL

__all__ = ["decode_original", "is_original", "original_views"]


def is_original(meta: dict, kind: str) -> bool:
    """Whether the sample's `jpg` is a kept source (the json's `image_store`)."""
    return kind == "image" and meta.get("image_store") == STORE_ORIGINAL


def decode_original(data: bytes, meta: dict) -> np.ndarray:
    """(H, W, 3) uint8 of a kept source: it must be the height x width its json records
    (anything larger is refused from the header, before its pixels are decoded).

    Raises:
        SampleError: `corrupt_image` or `inconsistent`.
    """
    try:
        h, w = int(meta["height"]), int(meta["width"])
    except (KeyError, TypeError, ValueError) as e:
        raise SampleError("bad_json", f"a kept source needs height and width: {e}") from e
    try:
        a = ops.decode_image(data, max_pixels=max(h * w, 1), name="jpg")
    except SampleError as e:
        raise SampleError("corrupt_image", e.detail) from e
    if a.shape[:2] != (h, w):
        raise SampleError("inconsistent",
                          f"jpg is {a.shape[1]}x{a.shape[0]}, the json says {w}x{h}")
    return a


def _tensor(a: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # Pillow's read-only buffer; nothing writes to it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def original_views(full: np.ndarray, *, size: int, side: int, grid: tuple[int, int] | None,
                   backend: str) -> dict[str, Any]:
    """The model's images from the original, bicubic (antialiased) each: `image` (1, S, S, 3),
    `thumb` (side, side, 3) and `tile_image` (rows * side, cols * side, 3) for a grid of
    more than one tile, else None. uint8, HWC (what `collate` stacks)."""
    opts = {"interpolation": "bicubic", "backend": backend}
    views = {"image": _tensor(ops.resize_image(full, size=size, **opts)[None]),
             "thumb": _tensor(ops.resize_image(full, size=side, **opts)), "tile_image": None}
    if grid is not None and grid[0] * grid[1] > 1:
        cols, rows = grid
        views["tile_image"] = _tensor(ops.resize_image(full, size=(rows * side, cols * side),
                                                       **opts))
    return views
