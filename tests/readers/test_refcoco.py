"""RefCOCO reader: refs pickle through the restricted unpickler, split selection, one sample per
image with all sentences, and an end-to-end build compared with pycocotools + torch nearest on
the raw instances.json."""

from __future__ import annotations

import json
import pickle
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from sa2va_shards.build.run import run_build
from sa2va_shards.config import ReaderConfig
from sa2va_shards.errors import ConfigError
from sa2va_shards.readers import get_reader
from sa2va_shards.readers.refcoco import RefCocoReader
from sa2va_shards.synth import synth_dataset
from sa2va_shards.synth.refcoco import REFCOCO_FAULTS
from tests.helpers import make_config
from tests.helpers.hostile import touch_exploit
from tests.helpers.shards import check_faults, check_prompt_masks, decode_raw, read_shards

N_ITEMS = 12
FAULTS = tuple(f for f in REFCOCO_FAULTS if f != "unsafe_pickle")
EXPECTED_REASON = {
    "missing_image": "missing_image", "corrupt_image": "corrupt_image",
    "size_mismatch": "mask_size_mismatch", "bad_polygon": "bad_segmentation",
    "bad_rle": "bad_segmentation", "missing_ann": "bad_annotation",
}


@pytest.fixture(scope="module")
def raw(synth):
    return synth("refcoco", n_items=N_ITEMS, seed=4, faults=FAULTS)


@pytest.fixture(scope="module")
def build(raw, tmp_path_factory):
    cfg = make_config(raw, tmp_path_factory.mktemp("refcoco_out"), fmt="refcoco",
                      shards={"samples_per_shard": 3})
    return run_build(cfg, runner="serial", progress=False)


def _reader(raw: Path, **options) -> RefCocoReader:
    return get_reader(ReaderConfig(format="refcoco", root=str(raw), options=options))


def _raw_refs(raw: Path, split: str = "train") -> dict[int, list[dict]]:
    """image id -> refs of `split` (our own synth file: plain pickle is fine here)."""
    with open(raw / "refs(unc).p", "rb") as f:
        refs = pickle.load(f)
    out: dict[int, list[dict]] = defaultdict(list)
    for r in refs:
        if r["split"] == split:
            out[r["image_id"]].append(r)
    return out


def test_list_items_gives_one_item_per_image_of_the_split(raw):
    for split in ("train", "val", "testA", "testB"):
        refs = _raw_refs(raw, split)
        items = _reader(raw, split=split).list_items()
        assert [r.source_id for r in items] == [f"{i:012d}" for i in sorted(refs)]
        for item in items:
            json.dumps(item.data)
            ann_ids = {r["ann_id"] for r in refs[item.data["image_id"]]}
            assert {o["id"] for o in item.data["objects"]} == ann_ids


def test_split_test_is_testA_plus_testB_as_refer_py(raw):
    items = _reader(raw, split="test").list_items()
    a, b = (_reader(raw, split=s).list_items() for s in ("testA", "testB"))
    assert a and b and [i.source_id for i in items] == sorted(i.source_id for i in a + b)
    assert [i.data["objects"] for i in items] == [i.data["objects"] for i in sorted(
        a + b, key=lambda i: i.source_id)]


def test_lowercase_stores_sentences_as_sa2va_feeds_them(raw):
    raw_items = _reader(raw, split="val").list_items()
    low_items = _reader(raw, split="val", lowercase=True).list_items()
    for r, lo in zip(raw_items, low_items, strict=True):
        for ro, lo_obj in zip(r.data["objects"], lo.data["objects"], strict=True):
            assert lo_obj["sentences"] == [s.lower().removesuffix(".") for s in ro["sentences"]]
            assert any(s != s.lower() for s in ro["sentences"])  # synth writes capitals


def test_wrong_split_missing_files_and_variant(raw, tmp_path):
    with pytest.raises(ConfigError, match="no refs in split 'trainval'"):
        _reader(raw, split="trainval").list_items()
    with pytest.raises(ConfigError, match=r"refs\(umd\).p: refs file not found"):
        _reader(raw, variant="umd").list_items()
    copy = tmp_path / "refcocog"
    shutil.copytree(raw, copy)
    (copy / "refs(unc).p").rename(copy / "refs(umd).p")
    assert _reader(copy, variant="umd").list_items() == _reader(raw).list_items()
    assert _reader(copy, refs_file="refs(umd).p").list_items() == _reader(raw).list_items()
    (copy / "instances.json").unlink()
    with pytest.raises(ConfigError, match="instances.json: annotation file not found"):
        _reader(copy, variant="umd").list_items()


def test_unsafe_refs_pickle_stops_the_build_and_is_never_executed(tmp_path):
    raw = synth_dataset("refcoco", tmp_path / "raw", n_items=3, faults=("unsafe_pickle",))
    with pytest.raises(ConfigError, match="unsafe_pickle.*collections.OrderedDict"):
        _reader(raw).list_items()
    marker = tmp_path / "PWNED"
    (raw / "refs(unc).p").write_bytes(touch_exploit(marker))  # a real os.system exploit
    with pytest.raises(ConfigError, match="unsafe_pickle.*os.system"):
        _reader(raw).list_items()
    assert not marker.exists()


def test_reader_pickles_for_ray(raw):
    reader = _reader(raw, split="val", variant="umd", images="/abs/train2014")
    assert pickle.loads(pickle.dumps(reader)) == reader


def test_load_uses_only_the_item_ref_not_the_annotation_files(raw, tmp_path):
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    reader = _reader(copy)
    items = reader.list_items()
    (copy / "instances.json").unlink()
    (copy / "refs(unc).p").unlink()
    assert reader.load(items[0]).rles


def test_build_accounts_for_every_image_and_rejects_each_fault_with_its_reason(raw, build):
    ids = {f: f"{10_000 + j:012d}" for j, f in enumerate(FAULTS)}
    check_faults(build, {ids[f]: r for f, r in EXPECTED_REASON.items()}, {})
    assert build.counts["read"] == len(_raw_refs(raw))


def test_prompt_masks_and_k_equal_torch_nearest_on_the_raw_instances(raw, build):
    doc = json.loads((raw / "instances.json").read_text())
    anns = {a["id"]: a for a in doc["annotations"]}
    size = {i["id"]: (i["height"], i["width"]) for i in doc["images"]}

    def raw_mask(meta: dict, obj: dict):
        return decode_raw(anns[obj["id"]]["segmentation"], *size[meta["image_id"]])

    checked, k_zero = check_prompt_masks(build.build_dir, raw_mask)
    assert checked == build.counts["objects_written"] > 5
    assert k_zero == build.counts["objects_k_zero"] > 0


def test_objects_carry_all_sentences_of_every_ref(raw, build):
    refs = _raw_refs(raw)
    twice = 0
    for m in read_shards(build.build_dir).values():
        meta = json.loads(m["json"])
        by_ann: dict[int, list[str]] = defaultdict(list)
        for r in sorted(refs[meta["image_id"]], key=lambda r: r["ref_id"]):
            by_ann[r["ann_id"]] += [s["raw"] for s in r["sentences"]]
        assert {o["id"]: o["sentences"] for o in meta["objects"]} == by_ann
        assert meta["split"] == "train"
        twice += sum(len(o["ref_ids"]) > 1 for o in meta["objects"])
    assert twice > 0  # an object referred to by two refs keeps both refs' sentences
