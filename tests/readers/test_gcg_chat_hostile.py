"""Malformed GCG and conversation files: every element is indexed or rejected with its reason,
structural problems stop the build with a config error, and the turn rules on edge cases."""

from __future__ import annotations

import json
import shutil

import pytest

from sa2va_shards.config import ReaderConfig
from sa2va_shards.errors import ConfigError, SampleError
from sa2va_shards.loader.chat import chat_turns
from sa2va_shards.readers import get_reader
from sa2va_shards.records import BAD_ITEM


def _gcg(root, stem, **options):
    return get_reader(ReaderConfig(format="gcg", root=str(root), options={"file": stem,
                                                                         **options}))


@pytest.fixture()
def raw(synth, tmp_path):
    copy = tmp_path / "raw"
    shutil.copytree(synth("gcg", n_items=2, seed=4), copy)
    return copy


def _write(raw, stem, doc):
    (raw / "annotations" / f"{stem}.json").write_text(json.dumps(doc))


def test_wrong_shaped_gcg_elements_are_indexed_as_rejects(raw):
    good = json.loads((raw / "annotations" / "RefCOCOg_GCG_train.json").read_text())
    _write(raw, "RefCOCOg_GCG_train", [*good, [1, 2], {"a": {}, "b": {}}, {"x": 3}])
    items = _gcg(raw, "RefCOCOg_GCG_train").list_items()
    bad = {r.source_id: r.data[BAD_ITEM]["reason"] for r in items if BAD_ITEM in r.data}
    assert bad == {f"RefCOCOg_GCG_train_{i:07d}": "bad_annotation" for i in (2, 3, 4)}


def test_gcg_structural_problems_are_config_errors(raw):
    _write(raw, "GranDf_HA_GCG_train", {"not": "a list"})
    with pytest.raises(ConfigError, match="top-level JSON list"):
        _gcg(raw, "GranDf_HA_GCG_train").list_items()
    doc = json.loads((raw / "annotations" / "flickr_mergedGT_GCG_train.json").read_text())
    doc["annotations"][1]["id"] = doc["annotations"][0]["id"]
    _write(raw, "flickr_mergedGT_GCG_train", doc)
    with pytest.raises(ConfigError, match="not unique"):
        _gcg(raw, "flickr_mergedGT_GCG_train").list_items()


@pytest.mark.parametrize("change,reason", [
    (lambda e: e.update(groundings=["a dog"]), "bad_annotation"),
    (lambda e: e.update(file_name="../../annotations/x.jpg"), "unsafe_path"),
    (lambda e: next(iter(e["groundings"].values())).update(token_positives=[3, "7"]),
     "bad_annotation"),
    (lambda e: e.update(height=-4), "bad_annotation"),
])
def test_a_bad_gcg_element_rejects_only_itself(raw, change, reason):
    doc = json.loads((raw / "annotations" / "GranDf_HA_GCG_train.json").read_text())
    change(doc[0])
    _write(raw, "GranDf_HA_GCG_train", doc)
    reader = _gcg(raw, "GranDf_HA_GCG_train")
    first, second = reader.list_items()
    with pytest.raises(SampleError) as e:
        reader.load(first)
    assert e.value.reason.value == reason
    assert reader.load(second).objects


def test_image_rows_without_a_tag_get_the_block_and_text_rows_lose_theirs():
    turns = [{"from": "gpt", "value": "lead"}, {"from": "human", "value": " What? "},
             {"from": "gpt", "value": " A. "}, {"from": "human", "value": "<image>x"},
             {"from": "human", "value": "y"}, {"from": "gpt", "value": "B"},
             {"from": "human", "value": "dangling"}]
    assert chat_turns(turns, "image", "<IMG>") == [  # the block goes where the tag is
        {"input": "What?", "output": "A."}, {"input": "<IMG>xy", "output": "B"}]
    untagged = [{**t, "value": t["value"].replace("<image>", "")} for t in turns]
    assert chat_turns(untagged, "image", "<IMG>") == [  # no tag: before the first question
        {"input": "<IMG>\nWhat?", "output": "A."}, {"input": "xy", "output": "B"}]
    assert chat_turns(turns, "text", "") == [
        {"input": "What?", "output": "A."}, {"input": "xy", "output": "B"}]
    assert chat_turns(turns, "video", "<F>") == [
        {"input": "<F> What? ", "output": " A. "}, {"input": "xy", "output": "B"}]


def test_llava_rows_of_the_wrong_shape_are_rejects(synth, tmp_path):
    root = tmp_path / "llava"
    shutil.copytree(synth("llava", n_items=2, seed=4), root)
    path = root / "LLaVA-Instruct-150K" / "llava_v1_5_mix665k.json"
    rows = json.loads(path.read_text())
    path.write_text(json.dumps([*rows, "text", {"image": 5, "conversations": rows[0][
        "conversations"]}]))
    reader = get_reader(ReaderConfig(format="llava", root=str(root)))
    items = reader.list_items()
    assert items[2].data[BAD_ITEM]["reason"] == "bad_annotation"
    with pytest.raises(SampleError, match="not a file name"):
        reader.load(items[3])
