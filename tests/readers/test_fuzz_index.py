"""Fuzzing the index readers with arbitrary JSON (issue 10, classes 1 and 8): whatever the
records hold, indexing never raises, every record is accounted for, and loading and
transforming a sample fail only with a reject reason (`SampleError`), never with a raw
exception that would be counted as `unexpected_error`."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sa2va_shards.build.plan import plan_shards
from sa2va_shards.build.transform import transform_sample
from sa2va_shards.errors import SampleError
from sa2va_shards.readers.coco import CocoReader
from sa2va_shards.readers.osprey import OspreyReader
from sa2va_shards.records import BAD_ITEM
from tests.helpers import make_config

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**13),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.sampled_from(["good.jpg", "../good.jpg", "/etc/hostname", "", "a\0b",
                                     "\ud800"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
polygons = st.lists(st.lists(st.one_of(st.floats(-20, 90), st.integers(-5, 70),
                                       st.floats(-1e6, 1e6)), min_size=6, max_size=12),
                    min_size=1, max_size=2)


def _rle(seed: int) -> dict:
    """A valid compressed RLE of a random 48x64 mask."""
    import numpy as np

    from sa2va_shards import ops

    rng = np.random.default_rng(seed)
    mask = np.zeros((1, 48, 64), np.uint8)
    y, x = rng.integers(0, 40), rng.integers(0, 56)
    mask[0, y:y + rng.integers(0, 9), x:x + rng.integers(0, 9)] = 1
    return ops.rle_encode(mask)[0]


rles = st.integers(0, 2**32 - 1).map(_rle)
broken_rles = st.fixed_dictionaries({"size": st.one_of(values, st.just([48, 64])),
                                     "counts": st.one_of(values, st.text(max_size=12))})
segmentations = st.one_of(polygons, rles, rles, rles, broken_rles, values)


def _field(plausible: st.SearchStrategy) -> st.SearchStrategy:
    # mostly plausible, so that load and transform are reached (one_of does not weight)
    return st.integers(0, 9).flatmap(lambda i: values if i == 0 else plausible)


def _record(keys: dict) -> st.SearchStrategy:
    """A record that usually has every key a reader reads with plausible values, sometimes
    misses keys, holds garbage, or is no object at all."""
    full = st.fixed_dictionaries({k: _field(v) for k, v in keys.items()})
    partial = st.fixed_dictionaries({}, optional={k: _field(v) for k, v in keys.items()})
    return st.integers(0, 9).flatmap(lambda i: values if i == 0 else partial if i == 1
                                      else full)


images = _record({"id": st.integers(1, 3), "file_name": st.just("good.jpg"),
                  "height": st.just(48) | st.just(48.0), "width": st.just(64)})
annotations = _record({"id": st.integers(1, 50), "image_id": st.integers(1, 3),
                       "category_id": st.integers(1, 3), "segmentation": segmentations})
categories = _record({"id": st.integers(1, 3), "name": st.text(max_size=5)})
CATEGORIES = [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]
turns = st.just([{"from": "human", "value": "<image>\nWhat is <region1>?"},
                 {"from": "gpt", "value": "A thing."}])

FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def good_jpg(tmp_path_factory) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _check_items(reader, items, root: Path) -> None:
    plans, rejects = plan_shards(items, dataset="f", samples_per_shard=3)
    assert sum(len(p.items) for p in plans) + len(rejects) == len(items)
    cfg = make_config(root, root / "out", image={"max_pixels": 10**6})
    for plan in plans:
        for item in plan.items:
            assert BAD_ITEM not in item.data
            try:
                transform_sample(reader.load(item), cfg)
                event("written")
            except SampleError as e:
                assert e.detail
                event(e.reason.value)


@FUZZ
@given(imgs=st.lists(images, max_size=6), anns=st.lists(annotations, max_size=8),
       cats=st.lists(categories, max_size=3))
def test_any_coco_index_is_indexed_and_loaded_without_a_raw_exception(good_jpg, imgs, anns,
                                                                         cats):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "images" / "good.jpg").write_bytes(good_jpg)
        (root / "annotations").mkdir()
        doc = {"images": imgs, "annotations": anns, "categories": CATEGORIES + cats}
        (root / "annotations" / "instances.json").write_text(json.dumps(doc))
        reader = CocoReader(root=str(root))
        _check_items(reader, reader.list_items(), root)


@FUZZ
@given(elements=st.lists(_record({"file_name": st.just("good.jpg"),
                                  "height": st.just(48), "width": st.just(64),
                                  "annotation": st.lists(_record({"segmentation": segmentations}),
                                                         max_size=3),
                                  "conversations": turns, "description": st.just(["a"])}),
                         max_size=5))
def test_any_osprey_file_is_indexed_and_loaded_without_a_raw_exception(good_jpg, elements):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "coco" / "train2014").mkdir(parents=True)
        (root / "coco" / "train2014" / "good.jpg").write_bytes(good_jpg)
        (root / "Osprey-724K").mkdir()
        (root / "Osprey-724K" / "osprey_conversation.json").write_text(json.dumps(elements))
        reader = OspreyReader(root=str(root), files=("osprey_conversation",))
        _check_items(reader, reader.list_items(), root)
        shutil.rmtree(root / "out", ignore_errors=True)


regions = _record({"caption": st.text(max_size=10), "mask_rle": rles})


@FUZZ
@given(payload=st.one_of(regions, st.lists(regions, max_size=4), values),
       protocol=st.integers(2, 5))
def test_any_dam_pickle_is_loaded_without_a_raw_exception(good_jpg, payload, protocol):
    import pickle

    from sa2va_shards.readers.describe_anything import DescribeAnythingReader
    from sa2va_shards.synth.describe_anything import write_tar

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tar(root / "S" / "images" / "S-0000.tar",
                  [{"k.jpg": good_jpg, "k.pickle": pickle.dumps(payload, protocol=protocol)}])
        reader = DescribeAnythingReader(root=str(root))
        _check_items(reader, reader.list_items(), root)


sentences = st.lists(st.fixed_dictionaries({"raw": st.text(max_size=8)}), max_size=2)
refs = _record({"ref_id": st.integers(1, 20), "ann_id": st.integers(1, 8),
                "image_id": st.integers(1, 3), "split": st.just("train"),
                "sentences": sentences})
ref_annotations = _record({"id": st.integers(1, 8), "image_id": st.integers(1, 3),
                           "category_id": st.integers(1, 3), "segmentation": segmentations})


@FUZZ
@given(imgs=st.lists(images, max_size=4), anns=st.lists(ref_annotations, max_size=8),
       ref_list=st.lists(refs, min_size=1, max_size=8))
def test_any_refcoco_refs_are_indexed_and_loaded_without_a_raw_exception(good_jpg, imgs, anns,
                                                                           ref_list):
    import pickle

    from sa2va_shards.errors import ConfigError
    from sa2va_shards.readers.refcoco import RefCocoReader

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "images" / "good.jpg").write_bytes(good_jpg)
        doc = {"images": imgs, "annotations": anns, "categories": CATEGORIES}
        (root / "instances.json").write_text(json.dumps(doc))
        (root / "refs(unc).p").write_bytes(pickle.dumps(ref_list, protocol=2))
        reader = RefCocoReader(root=str(root))
        try:
            items = reader.list_items()
        except ConfigError as e:  # the one setup fault: nothing in the split at all
            assert "no refs in split" in str(e)
            return
        _check_items(reader, items, root)


masklet_rows = st.lists(st.integers(0, 9).flatmap(lambda i: values if i == 0 else rles),
                        min_size=0, max_size=3)
manuals = _record({"masklet": st.lists(st.integers(0, 9).flatmap(
    lambda i: values if i == 0 else masklet_rows), max_size=4),
    "masklet_id": st.one_of(st.none(), st.lists(st.integers(0, 5), max_size=3))})


@FUZZ
@given(manual=manuals)
def test_any_sav_manual_json_is_loaded_without_a_raw_exception(good_jpg, manual):
    from sa2va_shards.readers.sav import SavReader

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frames = root / "JPEGImages_24fps" / "sav_000001"
        frames.mkdir(parents=True)
        for t in range(0, 16, 4):
            (frames / f"{t:05d}.jpg").write_bytes(good_jpg)
        (root / "sav_000001_manual.json").write_text(json.dumps(manual))
        reader = SavReader(root=str(root), layout="frames")
        _check_items(reader, reader.list_items(), root)
