"""COCO segmentation decoding: all three encodings, and bad input rejected before decoding."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from sa2va_shards import ops
from sa2va_shards.errors import Reason, SampleError


def _box(h, w, y0, x0, y1, x1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _runs(m):
    flat = m.reshape(-1, order="F")
    edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(edges).tolist()
    return [0] + runs if flat[0] else runs


def test_three_encodings_decode_to_the_same_mask():
    h, w = 37, 53
    m = _box(h, w, 5, 7, 30, 40)
    compressed = mask_utils.encode(np.asfortranarray(m))
    segs = [
        [[7.0, 5.0, 40.0, 5.0, 40.0, 30.0, 7.0, 30.0]],
        {"size": [h, w], "counts": compressed["counts"].decode()},
        {"size": [h, w], "counts": _runs(m)},
    ]
    masks, rles = ops.decode_segmentations(segs, height=h, width=w)
    assert masks.shape == (3, h, w) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks[1], m)
    np.testing.assert_array_equal(masks[2], m)
    assert abs(int(masks[0].sum()) - int(m.sum())) < 80  # polygon rasterisation edges
    assert all(isinstance(r["counts"], bytes) for r in rles)


def test_rle_encode_round_trips_any_layout():
    rng = np.random.default_rng(0)
    m = (rng.random((3, 20, 30)) < 0.5).astype(np.uint8)
    for layout in (m, np.asfortranarray(m.transpose(1, 2, 0)).transpose(2, 0, 1)):
        rles = ops.rle_encode(layout)
        assert all(isinstance(r["counts"], str) for r in rles)
        np.testing.assert_array_equal(ops.rle_decode(rles, height=20, width=30), m)
    assert ops.rle_encode(np.zeros((0, 5, 5), np.uint8)) == []


@pytest.mark.parametrize("seg,reason", [
    ([[1.0, 2.0, 3.0, 4.0]], Reason.BAD_SEGMENTATION),  # < 3 points
    ([], Reason.BAD_SEGMENTATION),
    ([[1.0, 2.0, 3.0, float("nan"), 5.0, 6.0]], Reason.BAD_SEGMENTATION),
    ({"size": [10, 10], "counts": [5, 5]}, Reason.BAD_SEGMENTATION),  # sums to 10, not 100
    ({"size": [10, 10], "counts": "zzzz"}, Reason.BAD_SEGMENTATION),
    ({"size": [10, 10], "counts": "0"}, Reason.BAD_SEGMENTATION),
    ({"size": [12, 10], "counts": [120]}, Reason.MASK_SIZE_MISMATCH),
    ({"size": [10]}, Reason.BAD_SEGMENTATION),
    ("polygon", Reason.BAD_SEGMENTATION),
])
def test_bad_segmentations_are_rejected_with_reason(seg, reason):
    with pytest.raises(SampleError) as e:
        ops.decode_segmentations([seg], height=10, width=10)
    assert e.value.reason == reason


def test_truncated_compressed_rle_is_caught_before_pycocotools_decodes_it():
    m = _box(40, 40, 3, 3, 30, 30)
    counts = mask_utils.encode(np.asfortranarray(m))["counts"].decode()
    with pytest.raises(SampleError) as e:
        ops.decode_segmentations([{"size": [40, 40], "counts": counts[:-1]}], height=40, width=40)
    assert e.value.reason == Reason.BAD_SEGMENTATION
    short = mask_utils.encode(np.asfortranarray(m[:, :39]))["counts"].decode()  # 40x39 runs
    with pytest.raises(SampleError, match="1560 pixels"):
        ops.decode_segmentations([{"size": [40, 40], "counts": short}], height=40, width=40)
