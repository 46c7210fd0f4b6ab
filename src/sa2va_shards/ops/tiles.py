"""InternVL's dynamic tiling geometry (pure): which grid of 448 tiles an image gets."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["dynamic_grid", "tile_count"]


def _target_ratios(min_num: int, max_num: int) -> list[tuple[int, int]]:
    # Built exactly as Sa2VA's utils.py does (a set, then a stable sort by area): equal-area
    # ratios keep the set's iteration order, which decides exact aspect-ratio ties.
    ratios = {(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1)
              for j in range(1, n + 1) if min_num <= i * j <= max_num}
    return sorted(ratios, key=lambda x: x[0] * x[1])


def dynamic_grid(width: int, height: int, *, max_num: int, min_num: int = 1,
                 image_size: int = 448) -> tuple[int, int]:
    """(columns, rows) of InternVL's `dynamic_preprocess` for an original width x height image.

    Same rule as Sa2VA `projects/llava_sam2/datasets/utils.py`: among grids with
    min_num <= i*j <= max_num sorted by area, take the one whose i/j is closest to w/h; on an
    exact tie a later (larger) grid wins if w*h > 0.5 * image_size^2 * i*j.
    """
    if width < 1 or height < 1 or max_num < min_num or min_num < 1:
        raise ValueError(f"bad tiling input: {width}x{height}, min {min_num}, max {max_num}")
    aspect, area = width / height, width * height
    best_diff, best = float("inf"), (1, 1)
    for ratio in _target_ratios(min_num, max_num):
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff, best = diff, ratio
        elif diff == best_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def tile_count(grid: Sequence[int]) -> int:
    """Tiles InternVL feeds for a (columns, rows) grid: the crops, plus a thumbnail if > 1."""
    blocks = int(grid[0]) * int(grid[1])
    return blocks + 1 if blocks > 1 else 1
