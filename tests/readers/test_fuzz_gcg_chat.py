"""Fuzzing the GCG and LLaVA readers with arbitrary JSON (as test_fuzz_index.py does for the
others): indexing raises nothing but a config error for a structural problem, every record is
accounted for, and loading and transforming fail only with a reject reason."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

from sa2va_shards.errors import ConfigError
from sa2va_shards.readers.gcg import GcgReader
from sa2va_shards.readers.llava import LlavaReader
from tests.readers.test_fuzz_index import (
    FUZZ,
    _check_items,
    _record,
    rles,
    segmentations,
    values,
)

CAPTION = "a dog and a cat."


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    """A 64x48 JPEG (the fuzzed masks are 48x64)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _mostly(plausible: st.SearchStrategy) -> st.SearchStrategy:
    """Plausible 9 times in 10 (one_of does not weight), so that load and transform run."""
    return st.integers(0, 9).flatmap(lambda i: values if i == 0 else plausible)


spans = _mostly(st.sampled_from([[0, 5], [10, 15], [3, 12]]))
groundings = st.dictionaries(st.text(max_size=5), st.one_of(st.none(), _record({
    "token_positives": spans, "rle_masks": st.lists(segmentations, max_size=2)})), max_size=3)
grandf = _record({"file_name": st.just("good.jpg"), "height": st.just(48),
                  "width": st.just(64), "caption": st.just(CAPTION), "groundings": groundings})
refcocog = st.dictionaries(st.text(max_size=3), _record({
    "img_file_name": st.just("good.jpg"), "caption": st.just(CAPTION),
    "refs": st.lists(_record({"sentence": st.sampled_from(["a dog", "A cat", "zebra", ""]),
                              "segmentation": segmentations}), max_size=3)}),
    min_size=1, max_size=2)
flickr_images = _record({"id": st.integers(1, 3), "file_name": st.just("good.jpg"),
                         "height": st.just(48), "width": st.just(64),
                         "caption": st.sampled_from([CAPTION, "two dogs"])})
flickr_anns = _record({"id": st.integers(1, 10**6), "image_id": st.integers(1, 3),
                       "bbox": _mostly(st.just([1, 1, 20, 20])),
                       "area": _mostly(st.just(100)),
                       "tokens_positive": _mostly(st.sampled_from([[[0, 5]], [[10, 15]]])),
                       "sam_mask": st.one_of(rles, rles, segmentations),
                       "ignore": st.sampled_from([False, False, False, True])})


def _run(jpeg, stem: str, doc, folder: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / folder).mkdir(parents=True)
        (root / folder / "good.jpg").write_bytes(jpeg)
        (root / "annotations").mkdir()
        (root / "annotations" / f"{stem}.json").write_text(json.dumps(doc))
        reader = GcgReader(root=str(root), file=stem)
        try:
            items = reader.list_items()
        except ConfigError:  # a structural problem (Flickr ids repeated): the build stops
            event("config_error")
            return
        _check_items(reader, items, root)


@FUZZ
@given(elements=st.lists(st.one_of(grandf, values), max_size=4))
def test_any_grandf_file_is_indexed_and_loaded_without_a_raw_exception(jpeg, elements):
    _run(jpeg, "GranDf_HA_GCG_train", elements, "images/grandf/train")


@FUZZ
@given(elements=st.lists(st.one_of(refcocog, values), max_size=4))
def test_any_refcocog_gcg_file_is_indexed_and_loaded_without_a_raw_exception(jpeg,
                                                                              elements):
    _run(jpeg, "RefCOCOg_GCG_train", elements, "images/coco2014/train2014")


@FUZZ
@given(imgs=st.lists(flickr_images, max_size=4), anns=st.lists(flickr_anns, max_size=6))
def test_any_flickr_gcg_file_is_indexed_and_loaded_without_a_raw_exception(jpeg, imgs,
                                                                           anns):
    _run(jpeg, "flickr_mergedGT_GCG_train", {"images": imgs, "annotations": anns},
         "images/flickr30k/Flickr30K")


turns = _mostly(st.just([{"from": "human", "value": "<image>\nq?"},
                         {"from": "gpt", "value": "a."}])) | st.lists(_record({
                             "from": st.sampled_from(["human", "gpt", "system"]),
                             "value": st.sampled_from(["<image>\nq?", "a.", "<image><image>"])}),
                             max_size=4)
rows = _record({"image": st.sampled_from(["good.jpg", "good.jpg", "../x.jpg", "missing.jpg"]),
                "conversations": turns})


@FUZZ
@given(elements=st.lists(st.one_of(rows, values), max_size=5))
def test_any_llava_file_is_indexed_and_loaded_without_a_raw_exception(jpeg, elements):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "llava_images").mkdir()
        (root / "llava_images" / "good.jpg").write_bytes(jpeg)
        (root / "LLaVA-Instruct-150K").mkdir()
        (root / "LLaVA-Instruct-150K" / "llava_v1_5_mix665k.json").write_text(
            json.dumps(elements))
        reader = LlavaReader(root=str(root))
        _check_items(reader, reader.list_items(), root)
