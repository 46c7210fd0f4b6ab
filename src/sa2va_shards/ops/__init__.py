"""Pure kernels: no I/O, no config objects, no logging; arrays in, new arrays out."""

from sa2va_shards.ops.image import decode_image, encode_jpeg, encode_png, resize_image, to_rgb
from sa2va_shards.ops.masks import (
    cell_coverage,
    count_k,
    fallback_any,
    nearest_indices,
    pool_masks,
    resize_masks,
    select_masks,
)
from sa2va_shards.ops.rle import (
    decode_segmentations,
    rle_decode,
    rle_encode,
    segmentation_to_rle,
    segmentations_to_rles,
    strict_dim,
)
from sa2va_shards.ops.rle_resize import (
    check_runs,
    pool_rles,
    pool_runs,
    resize_rles,
    resize_runs,
    rle_to_runs,
    runs_area,
)
from sa2va_shards.ops.tiles import dynamic_grid, tile_count

__all__ = [
    "cell_coverage",
    "check_runs",
    "count_k",
    "decode_image",
    "decode_segmentations",
    "dynamic_grid",
    "encode_jpeg",
    "encode_png",
    "fallback_any",
    "nearest_indices",
    "pool_masks",
    "pool_rles",
    "pool_runs",
    "resize_image",
    "resize_masks",
    "resize_rles",
    "resize_runs",
    "rle_decode",
    "select_masks",
    "rle_encode",
    "rle_to_runs",
    "runs_area",
    "segmentation_to_rle",
    "segmentations_to_rles",
    "strict_dim",
    "tile_count",
    "to_rgb",
]
