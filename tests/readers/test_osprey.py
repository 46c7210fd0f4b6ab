"""Osprey-724K reader: light index, pickling, and an end-to-end build of the synthesised set
compared with pycocotools + torch nearest on the raw JSON."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import pytest

from sa2va_shards.build.run import run_build
from sa2va_shards.config import ReaderConfig
from sa2va_shards.errors import ConfigError
from sa2va_shards.readers import get_reader
from sa2va_shards.readers.osprey import OSPREY_FILES, OspreyReader
from sa2va_shards.synth.osprey import OSPREY_FAULTS
from tests.helpers import make_config
from tests.helpers.shards import (
    check_faults,
    check_prompt_masks,
    decode_raw,
    read_rejects,
    read_shards,
)

N_ITEMS = 10
EXPECTED_REASON = {
    "missing_image": "missing_image", "corrupt_image": "corrupt_image",
    "size_mismatch": "mask_size_mismatch", "bad_rle": "bad_segmentation",
    "bad_polygon": "bad_segmentation", "no_objects": "no_objects",
    "bad_record": "bad_annotation", "question_only": "no_dialogue",
    "answer_only": "no_dialogue",
}


def _raw_docs(raw: Path) -> dict[str, list]:
    return {Path(f).stem: json.loads((raw / "Osprey-724K" / f).read_text()) for f in OSPREY_FILES}


def _raw_element(docs: dict[str, list], source_id: str) -> dict:
    stem, index = source_id.rsplit("_", 1)
    return docs[stem][int(index)]


def _fault_ids(docs: dict[str, list]) -> dict[str, str]:
    """fault kind -> source id, found from the raw JSON (fault elements are fault_<kind>.jpg)."""
    return {e["file_name"][len("fault_"):-len(".jpg")]: f"osprey_conversation_{i:07d}"
            for i, e in enumerate(docs["osprey_conversation"])
            if e["file_name"].startswith("fault_")}


@pytest.fixture(scope="module")
def raw(synth):
    return synth("osprey", n_items=N_ITEMS, seed=5, faults=OSPREY_FAULTS)


@pytest.fixture(scope="module")
def build(raw, tmp_path_factory):
    cfg = make_config(raw, tmp_path_factory.mktemp("osprey_out"), fmt="osprey",
                      shards={"samples_per_shard": 4})
    return run_build(cfg, runner="serial", progress=False)


def _reader(raw: Path, **options) -> OspreyReader:
    return get_reader(ReaderConfig(format="osprey", root=str(raw), options=options))


def test_list_items_indexes_every_element_once_with_stable_ids(raw):
    docs = _raw_docs(raw)
    items = _reader(raw).list_items()
    assert len(items) == sum(len(d) for d in docs.values()) == N_ITEMS + len(OSPREY_FAULTS)
    ids = [r.source_id for r in items]
    assert ids == sorted(set(ids))
    for item in items:
        assert json.loads(item.data["record"]) == _raw_element(docs, item.source_id)
        json.dumps(item.data)  # the light index must be plain JSON (fingerprinted)
    assert [r.source_id for r in _reader(raw).list_items()] == ids


def test_files_option_selects_files_and_a_missing_file_is_a_config_error(raw, tmp_path):
    items = _reader(raw, files=["osprey_short_form", "osprey_part_level.json"]).list_items()
    assert {r.data["file"] for r in items} == {"osprey_short_form.json", "osprey_part_level.json"}
    with pytest.raises(ConfigError, match="not found"):
        _reader(tmp_path).list_items()
    with pytest.raises(ConfigError, match="top-level JSON list"):
        (tmp_path / "Osprey-724K").mkdir()
        (tmp_path / "Osprey-724K" / "x.json").write_text("{}")
        _reader(tmp_path, files=["x"]).list_items()


def test_reader_pickles_for_ray(raw):
    reader = _reader(raw, files=["osprey_conversation"], image_dirs=["coco/val2017"])
    assert pickle.loads(pickle.dumps(reader)) == reader
    assert reader.image_dirs == ("coco/val2017",)


def test_load_uses_only_the_item_ref_not_the_annotation_files(raw, tmp_path):
    """Item 6: shard tasks get ItemRefs; `load` must not re-read the (large) JSON."""
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    reader = _reader(copy)
    items = reader.list_items()
    shutil.rmtree(copy / "Osprey-724K")
    sample = reader.load(next(r for r in items if r.source_id.startswith("osprey_part_level")))
    assert sample.rles and sample.meta["task"] == "osprey_part_level"


def test_images_are_found_in_folder_order(raw):
    docs = _raw_docs(raw)
    item = next(r for r in _reader(raw).list_items()
                if r.source_id == "osprey_detail_description_0000000")
    name = docs["osprey_detail_description"][0]["file_name"]
    assert (raw / "coco/val2014" / name).exists() and (raw / "coco/val2017" / name).exists()
    assert _reader(raw).load(item).image_name == f"coco/val2014/{name}"


def test_build_accounts_for_every_element_and_rejects_each_fault_with_its_reason(raw, build):
    ids = _fault_ids(_raw_docs(raw))
    assert set(ids) == set(OSPREY_FAULTS)
    check_faults(build, {ids[f]: r for f, r in EXPECTED_REASON.items()},
                 {ids["empty_mask"]: "empty_mask"})
    assert build.counts["read"] == N_ITEMS + len(OSPREY_FAULTS)
    rows = {r["source_id"]: r for r in read_rejects(build.build_dir)}
    # masks are decoded at the JSON size; the real image disagrees: the transform rejects it
    assert rows[ids["size_mismatch"]]["stage"] == "transform"


def test_prompt_masks_and_k_equal_torch_nearest_on_the_raw_json(raw, build):
    docs = _raw_docs(raw)

    def raw_mask(meta: dict, obj: dict):
        elem = _raw_element(docs, meta["source_id"])
        assert obj["region"] == f"region{obj['id']}"
        seg = elem["annotation"][obj["id"] - 1]["segmentation"]
        return decode_raw(seg, elem["height"], elem["width"])

    checked, k_zero = check_prompt_masks(build.build_dir, raw_mask)
    assert checked == build.counts["objects_written"] > 20
    assert k_zero == build.counts["objects_k_zero"] > 0


def test_sample_json_keeps_the_published_text(raw, build):
    docs = _raw_docs(raw)
    seen = set()
    for m in read_shards(build.build_dir).values():
        meta = json.loads(m["json"])
        elem = _raw_element(docs, meta["source_id"])
        field = "description" if meta["task"] == "osprey_detail_description" else "conversations"
        assert meta[field] == elem[field]
        assert meta["file_name"] == elem["file_name"] and meta["dataset"] == "test"
        seen.add(meta["task"])
    assert seen == {Path(f).stem for f in OSPREY_FILES}


def test_subset_build_reads_only_the_chosen_file(raw, tmp_path):
    cfg = make_config(raw, tmp_path, fmt="osprey")
    cfg = dataclasses.replace(cfg, reader=dataclasses.replace(
        cfg.reader, options={"files": ["osprey_short_form"]}))
    result = run_build(cfg, runner="serial", progress=False)
    assert result.counts["read"] == result.counts["written"] == len(
        _raw_docs(raw)["osprey_short_form"])
