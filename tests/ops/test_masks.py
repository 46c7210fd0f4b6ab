"""Mask kernels against torch's own F.interpolate(mode='nearest'): the oracle, not a copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sa2va_shards import ops

GRIDS = (16, 14, 224)


def _shapes(n: int, seed: int) -> list[tuple[int, int]]:
    """Log-uniform random sides in [1, 4000] plus edge cases: 1x1, primes, tall, wide, 4000^2."""
    rng = np.random.default_rng(seed)
    sides = np.exp(rng.uniform(0, np.log(4000), size=(n, 2))).astype(int).clip(1, 4000)
    fixed = [(1, 1), (1, 4000), (4000, 1), (4000, 4000), (3989, 3967), (2, 3), (15, 17),
             (17, 15), (16, 16), (32, 8), (1023, 1025), (427, 640), (3842, 7), (3776, 101)]
    return fixed + [tuple(map(int, s)) for s in sides]


def _random_mask(rng: np.random.Generator, h: int, w: int, n: int = 2) -> np.ndarray:
    return (rng.random((n, h, w)) < rng.uniform(0.2, 0.8)).astype(np.uint8)


def _torch_nearest(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(masks))[None].float()
    return F.interpolate(t, size=size, mode="nearest")[0].numpy().astype(np.uint8)


SHAPES = _shapes(500, seed=1)


def test_shape_grid_covers_the_contract():
    assert len(SHAPES) >= 500
    assert min(min(s) for s in SHAPES) == 1 and max(max(s) for s in SHAPES) == 4000
    assert any(h > 4 * w for h, w in SHAPES) and any(w > 4 * h for h, w in SHAPES)


@pytest.mark.parametrize("chunk", range(5))
def test_pool_masks_matches_torch_nearest_on_random_shapes(chunk):
    rng = np.random.default_rng(chunk)
    for h, w in SHAPES[chunk::5]:
        m = _random_mask(rng, h, w)
        for grid in GRIDS:
            expected = _torch_nearest(m, (grid, grid)) != 0
            got = ops.pool_masks(m, grid=grid)
            assert got.dtype == np.bool_ and got.shape == (2, grid, grid)
            np.testing.assert_array_equal(got, expected, err_msg=f"{h}x{w} -> {grid}")
            np.testing.assert_array_equal(ops.count_k(got), expected.reshape(2, -1).sum(1))


@pytest.mark.parametrize("chunk", range(5))
def test_resize_masks_matches_torch_nearest_at_1024(chunk):
    rng = np.random.default_rng(100 + chunk)
    for h, w in SHAPES[chunk::5]:
        m = _random_mask(rng, h, w)
        expected = _torch_nearest(m, (1024, 1024))
        np.testing.assert_array_equal(ops.resize_masks(m, size=1024), expected,
                                      err_msg=f"{h}x{w}")


def test_resize_masks_matches_torch_at_sizes_where_integer_formula_fails():
    # (i * in) // out disagrees with torch's float32 rule at these sizes (reference/env.md)
    rng = np.random.default_rng(7)
    for (h, w), out in [((3842, 20), 14), ((3776, 30), 100), ((152, 9), 224), ((144, 5), 1000)]:
        m = _random_mask(rng, h, w, n=1)
        got = ops.resize_masks(m, size=(out, w))
        np.testing.assert_array_equal(got, _torch_nearest(m, (out, w)), err_msg=f"{h}->{out}")
        integer = (np.arange(out) * h) // out
        assert not np.array_equal(integer, ops.nearest_indices(h, out))


def test_pooling_the_1024_mask_equals_pooling_the_original():
    rng = np.random.default_rng(3)
    for h, w in SHAPES[::4]:
        m = _random_mask(rng, h, w)
        np.testing.assert_array_equal(ops.pool_masks(ops.resize_masks(m, size=1024), grid=16),
                                      ops.pool_masks(m, grid=16), err_msg=f"{h}x{w}")


def test_column_major_masks_give_the_same_values_and_stay_column_major():
    rng = np.random.default_rng(4)
    fortran = np.asfortranarray((rng.random((333, 500, 3)) < 0.5).astype(np.uint8))
    masks = fortran.transpose(2, 0, 1)  # the layout pycocotools.decode gives
    c_order = np.ascontiguousarray(masks)
    out = ops.resize_masks(masks, size=1024)
    np.testing.assert_array_equal(out, ops.resize_masks(c_order, size=1024))
    assert out.transpose(1, 2, 0).flags.f_contiguous
    np.testing.assert_array_equal(ops.pool_masks(masks, grid=16), ops.pool_masks(c_order, grid=16))
    np.testing.assert_array_equal(ops.select_masks(masks, np.array([2, 0])), c_order[[2, 0]])


def test_nearest_indices_matches_torch_on_one_axis():
    for n_in in [1, 2, 3, 15, 16, 17, 333, 427, 1023, 1024, 1025, 3842, 3776, 8191, 16384]:
        for n_out in [1, 7, 14, 16, 32, 100, 224, 1000, 1024, 2 * n_in]:
            coded = torch.arange(n_in, dtype=torch.float32)[None, None, :]
            expected = F.interpolate(coded, size=n_out, mode="nearest")[0, 0].long().numpy()
            np.testing.assert_array_equal(ops.nearest_indices(n_in, n_out), expected,
                                          err_msg=f"{n_in}->{n_out}")


@pytest.mark.parametrize("fn", [
    lambda m: ops.pool_masks(m, grid=16),
    lambda m: ops.resize_masks(m, size=64),
    lambda m: ops.cell_coverage(m, grid=16),
])
def test_kernels_do_not_mutate_batch_equal_per_item_and_handle_empty(fn):
    rng = np.random.default_rng(5)
    m = _random_mask(rng, 37, 53, n=4)
    m.flags.writeable = False  # any write raises
    batched = fn(m)
    for i in range(4):
        np.testing.assert_array_equal(batched[i], fn(m[i:i + 1])[0])
    assert fn(np.zeros((0, 37, 53), np.uint8)).shape[0] == 0


def test_kernels_reject_bad_shapes_and_dtypes():
    with pytest.raises(ValueError):
        ops.pool_masks(np.zeros((4, 4), np.uint8), grid=16)
    with pytest.raises(ValueError):
        ops.resize_masks(np.zeros((1, 4, 4), np.float32), size=8)
    with pytest.raises(ValueError):
        ops.nearest_indices(0, 16)


def test_cell_coverage_partitions_every_pixel_into_the_nearest_cells():
    rng = np.random.default_rng(6)
    for h, w in [(480, 640), (15, 11), (1, 1), (17, 300)]:
        m = _random_mask(rng, h, w)
        cover = ops.cell_coverage(m, grid=16)
        np.testing.assert_array_equal(cover.sum(axis=(1, 2)), m.reshape(2, -1).sum(1))
        if h >= 16 and w >= 16:  # then each cell contains its own sample point (top-left)
            assert (cover[ops.pool_masks(m, grid=16)] > 0).all()


def test_fallback_any_marks_the_most_covered_cell_only_for_k_zero_objects():
    h, w = 480, 640  # sampled rows 0, 30, ..., columns 0, 40, ...
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 31:35, 41:49] = 1  # 4x8 inside cell (1, 1), misses its sample point (30, 40)
    masks[0, 61:62, 41:43] = 1  # 1x2 inside cell (2, 1): covers less
    masks[1, 0:100, 0:100] = 1  # K > 0: untouched
    prompt = ops.pool_masks(masks, grid=16)
    assert ops.count_k(prompt).tolist()[0] == 0
    out = ops.fallback_any(masks, prompt, grid=16)
    assert np.flatnonzero(out[0]).tolist() == [1 * 16 + 1]
    np.testing.assert_array_equal(out[1], prompt[1])
    assert ops.count_k(prompt)[0] == 0  # input untouched
