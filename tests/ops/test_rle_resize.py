"""The RLE-domain nearest resize against torch's own F.interpolate on the decoded masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from sa2va_shards import ops
from tests.ops.test_masks import SHAPES


def _masks(rng: np.random.Generator, h: int, w: int, kind: int) -> np.ndarray:
    """Pixel noise, boxes (long runs across columns), full and empty masks."""
    n = 3
    if kind == 0:
        return (rng.random((n, h, w)) < 0.5).astype(np.uint8)
    m = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        m[i, y0:y0 + rng.integers(1, h + 1), x0:x0 + rng.integers(1, w + 1)] = 1
    m[-1] = kind % 2  # a full or an empty mask in every batch
    return m


def _torch(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(m)[None].float()
    return F.interpolate(t, size=size, mode="nearest")[0].numpy().astype(np.uint8)


@pytest.mark.parametrize("chunk", range(4))
def test_resize_rles_matches_torch_nearest_and_pycocotools_encoding(chunk):
    rng = np.random.default_rng(chunk)
    shapes = [s for s in SHAPES if s[0] * s[1] <= 600_000][chunk::4]
    assert len(shapes) > 60
    for j, (h, w) in enumerate(shapes):
        m = _masks(rng, h, w, kind=j % 3)
        rles = ops.rle_encode(m)
        for size in [(16, 16), (1024, 1024), (14, 14), (224, 224), (int(rng.integers(1, 700)),
                                                                    int(rng.integers(1, 700)))]:
            expected = _torch(m, size)
            got = ops.resize_rles(rles, height=h, width=w, size=size)
            decoded = mask_utils.decode(got).transpose(2, 0, 1)
            np.testing.assert_array_equal(decoded, expected, err_msg=f"{h}x{w} -> {size}")
            # canonical: the same string pycocotools writes for that mask
            assert got == ops.rle_encode(expected), f"{h}x{w} -> {size}"
        np.testing.assert_array_equal(ops.pool_rles(rles, height=h, width=w, grid=16),
                                      _torch(m, (16, 16)) != 0)


def test_rle_to_runs_parses_several_masks_at_once():
    rng = np.random.default_rng(9)
    m = (rng.random((4, 23, 17)) < 0.3).astype(np.uint8)
    runs, offsets = ops.rle_to_runs(ops.rle_encode(m))
    for i in range(4):
        flat = m[i].reshape(-1, order="F")
        edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
        expected = ([0] if flat[0] else []) + np.diff(edges).tolist()
        assert runs[offsets[i]:offsets[i + 1]].tolist() == expected


def test_empty_batch():
    assert ops.resize_rles([], height=5, width=5, size=16) == []
    assert ops.pool_rles([], height=5, width=5, grid=16).shape == (0, 16, 16)
