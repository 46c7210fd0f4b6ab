"""Kernels against hostile values (issue 10): property tests over many generated variants.

Each property states what must hold for ANY input of its class: a bound checked before
pycocotools sees the data, a strict parse that never truncates or replaces, a budget checked
before the work it bounds."""

from __future__ import annotations

import io
import pickle
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from sa2va_shards import ops
from sa2va_shards.errors import Reason, SampleError
from sa2va_shards.ops.rle import POLYGON_MARGIN
from sa2va_shards.readers._safe_pickle import safe_loads

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

coords = st.one_of(st.floats(-1e15, 1e15, allow_nan=False),
                   st.floats(-50, 400, allow_nan=False), st.integers(-10**12, 10**12))


@FAST
@given(pts=st.lists(st.tuples(coords, coords), min_size=3, max_size=12),
       h=st.integers(1, 300), w=st.integers(1, 300))
def test_a_polygon_is_rasterised_only_within_its_bounds(pts, h, w):
    """Any polygon: either rejected as bad_segmentation, or every vertex lies within the
    margin and the mask decodes to exactly H x W. A vertex at 1e12 used to crash pycocotools."""
    poly = [float(v) for p in pts for v in p]
    inside = all(-POLYGON_MARGIN * w <= x <= (1 + POLYGON_MARGIN) * w
                 and -POLYGON_MARGIN * h <= y <= (1 + POLYGON_MARGIN) * h for x, y in pts)
    try:
        rle = ops.segmentation_to_rle([poly], h, w)
    except SampleError as e:
        assert e.reason is Reason.BAD_SEGMENTATION
        assert not inside or "long" in e.detail
        return
    assert inside
    assert mask_utils.decode(rle).shape == (h, w)


@FAST
@given(n=st.integers(1, 600), seed=st.integers(0, 2**32 - 1))
def test_mask_areas_from_runs_equal_pycocotools_for_any_number_of_masks(n, seed):
    """pycocotools' `area` overflows a uint8 at 256 masks; ours counts any number."""
    rng = np.random.default_rng(seed)
    masks = (rng.random((n, 7, 5)) < rng.random()).astype(np.uint8)
    rles = ops.rle_encode(masks)
    areas = ops.runs_area(*ops.rle_to_runs(rles))
    assert areas.tolist() == masks.reshape(n, -1).sum(axis=1).tolist()


@FAST
@given(seed=st.integers(0, 2**32 - 1), char=st.characters(min_codepoint=128))
def test_non_ascii_in_rle_counts_is_rejected_never_replaced(seed, char):
    """Replacing a non-ASCII character by '?' (a valid RLE character) could turn garbage into
    a different, valid mask: it must be a reject whatever the position."""
    rng = np.random.default_rng(seed)
    mask = (rng.random((1, 9, 13)) < 0.5).astype(np.uint8)
    counts = ops.rle_encode(mask)[0]["counts"]
    pos = int(rng.integers(len(counts)))
    bad = counts[:pos] + char + counts[pos + 1:]
    with pytest.raises(SampleError) as e:
        ops.segmentations_to_rles([{"size": [9, 13], "counts": bad}], height=9, width=13)
    assert e.value.reason is Reason.BAD_SEGMENTATION


def test_a_replaced_character_would_have_been_a_valid_mask():
    """The case the property guards: '?' swapped in gives a valid, different mask."""
    m = np.zeros((1, 80, 1), np.uint8)
    m[0, 15:] = 1  # runs 15, 65: '?' (63 - 48 = 15) encodes the first run
    counts = ops.rle_encode(m)[0]["counts"]
    assert counts.startswith("?")
    with pytest.raises(SampleError, match="non-ASCII"):
        ops.segmentations_to_rles([{"size": [80, 1], "counts": "\u00e9" + counts[1:]}],
                                  height=80, width=1)


sizes = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.floats(allow_nan=True),
                  st.integers(-5, 5), st.lists(st.integers(1, 5), max_size=2),
                  st.floats(1, 1000).filter(lambda v: not v.is_integer()))


@FAST
@given(h=sizes, w=sizes)
def test_rle_sizes_are_whole_positive_numbers_or_a_reject(h, w):
    """null, text, bools, fractions and negatives: a reason, never a traceback or a
    truncated size."""
    try:
        ops.segmentations_to_rles([{"size": [h, w], "counts": "0"}], height=4, width=4)
    except SampleError as e:
        assert e.reason in (Reason.BAD_SEGMENTATION, Reason.MASK_SIZE_MISMATCH)
    else:
        pytest.fail(f"size {[h, w]!r} accepted")


@pytest.mark.parametrize("value, ok", [(480, 480), (480.0, 480), (480.5, None), ("480", None),
                                       (True, None), (0, None), (-3, None), (None, None),
                                       (float("inf"), None), (float("nan"), None)])
def test_strict_dim_never_truncates(value, ok):
    if ok is None:
        with pytest.raises(ValueError):
            ops.strict_dim(value)
    else:
        assert ops.strict_dim(value) == ok


@settings(max_examples=40, deadline=None)
@given(depth=st.integers(2, 12), width=st.integers(2, 64), protocol=st.integers(2, 5))
def test_pickles_that_expand_through_shared_references_are_refused(depth, width, protocol):
    """Output bounded by input: `width ** depth` references in a few KB are refused before
    anything copies them, in time bounded by the budget, not by the expansion. The oracle is
    the exact expanded size: every node once per path, plus the text."""
    x: object = "x" * 64
    for _ in range(depth):
        x = [x] * width  # the same object `width` times: one memo reference each
    data = pickle.dumps(x, protocol=protocol)
    expanded = sum(width**k for k in range(depth + 1)) + 64 * width**depth
    if expanded <= 16 * len(data) + 1_000_000:
        assert safe_loads(data, name="ok") == x
        return
    with pytest.raises(SampleError) as e:
        safe_loads(data, name="bomb.pickle")
    assert e.value.reason is Reason.ANNOTATION_TOO_LARGE


def test_a_cyclic_pickle_is_refused():
    a: list = []
    a.append(a)
    with pytest.raises(SampleError, match="expands"):
        safe_loads(pickle.dumps(a), name="cycle.pickle")


def test_plain_annotation_pickles_with_ordinary_sharing_pass():
    keys = ["raw", "sent", "sent_id", "tokens"]  # one str object per key, memoised
    refs = [{k: f"{k} {i}" for k in keys} | {"split": "train"} for i in range(20_000)]
    assert safe_loads(pickle.dumps(refs, protocol=2), name="refs.p") == refs


def _gray(mode: str, a: np.ndarray) -> Image.Image:
    if mode == "I":
        return Image.fromarray(a.astype(np.int32))
    dtype = ">u2" if mode == "I;16B" else "<u2"
    return Image.frombytes(mode, a.shape[::-1], a.astype(dtype).tobytes())


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_images_convert_without_int64_copies(mode):
    """A 16-bit 2000x2000 image: peak extra memory stays near input + output (an int64 copy
    took 8 bytes per pixel, several times over), and the pixels are the top byte."""
    a = np.random.default_rng(0).integers(0, 65536, (2000, 2000))
    img = _gray(mode, a)
    tracemalloc.start()
    rgb = ops.to_rgb(img)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(rgb[..., 0], a >> 8)
    assert (rgb[..., 0] == rgb[..., 2]).all()
    assert peak < np.asarray(img).nbytes + rgb.nbytes + (16 << 20)


def test_a_decompression_bomb_header_is_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buf, format="PNG")
    with pytest.raises(SampleError) as e:
        ops.decode_image(buf.getvalue(), max_pixels=1_000_000)
    assert e.value.reason is Reason.IMAGE_TOO_LARGE
