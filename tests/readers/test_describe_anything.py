"""Describe Anything reader and the restricted unpickler: light index from tar headers, pickles
that would run code are refused (and never run), and an end-to-end build compared with
pycocotools + torch nearest on the raw records."""

from __future__ import annotations

import collections
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sa2va_shards.build.run import run_build
from sa2va_shards.config import ReaderConfig
from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.readers import get_reader
from sa2va_shards.readers._safe_pickle import safe_loads
from sa2va_shards.readers.describe_anything import DescribeAnythingReader
from sa2va_shards.synth import synth_dataset
from sa2va_shards.synth.common import encode_image, make_image
from sa2va_shards.synth.describe_anything import DAM_FAULTS, write_tar
from tests.helpers import make_config
from tests.helpers.hostile import touch_exploit
from tests.helpers.shards import (
    check_faults,
    check_prompt_masks,
    decode_raw,
    read_rejects,
    read_shards,
)

N_ITEMS = 9
EXPECTED_REASON = {
    "missing_image": "missing_image", "corrupt_image": "corrupt_image",
    "size_mismatch": "mask_size_mismatch", "bad_rle": "bad_segmentation",
    "unsafe_pickle": "unsafe_pickle", "corrupt_pickle": "bad_annotation",
    "no_objects": "no_objects", "bad_record": "bad_annotation",
}


@pytest.fixture(scope="module")
def raw(synth):
    return synth("describe_anything", n_items=N_ITEMS, seed=2, faults=DAM_FAULTS)


@pytest.fixture(scope="module")
def build(raw, tmp_path_factory):
    cfg = make_config(raw, tmp_path_factory.mktemp("dam_out"), fmt="describe_anything",
                      shards={"samples_per_shard": 4})
    return run_build(cfg, runner="serial", progress=False)


def _reader(raw: Path, **options) -> DescribeAnythingReader:
    return get_reader(ReaderConfig(format="describe_anything", root=str(raw), options=options))


def _raw_keys(raw: Path) -> dict[str, set[str]]:
    """source id -> member suffixes, straight from the tars."""
    out: dict[str, set[str]] = {}
    for tar_path in raw.glob("*/images/*.tar"):
        split = tar_path.parent.parent.name
        with tarfile.open(tar_path) as tar:
            for name in tar.getnames():
                key, _, ext = name.partition(".")
                out.setdefault(f"{split}_{key}", set()).add(ext)
    return out


def _raw_regions(raw: Path, meta: dict) -> list[dict]:
    """The region dicts of a WRITTEN sample (a trusted synth pickle, so plain pickle is fine)."""
    with tarfile.open(raw / meta["tar"]) as tar:
        obj = pickle.loads(tar.extractfile(f"{meta['id']}.pickle").read())
    return [obj] if isinstance(obj, dict) else obj


# --- the restricted unpickler ------------------------------------------------------------------

class _RunsShell:
    """Unpickling this with plain `pickle` would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_safe_unpickler_refuses_code_and_never_runs_it(tmp_path, protocol):
    marker = tmp_path / "ran"
    data = pickle.dumps([{"caption": "x", "mask_rle": _RunsShell(marker)}], protocol=protocol)
    with pytest.raises(SampleError) as info:
        safe_loads(data, name="evil.pickle")
    assert info.value.reason is Reason.UNSAFE_PICKLE and "system" in info.value.detail
    assert not marker.exists()


@pytest.mark.parametrize("obj", [collections.OrderedDict(a=1), Path("/etc/passwd"),
                                 pickle.dumps, ValueError("x")])
def test_safe_unpickler_refuses_any_class_or_function(obj):
    with pytest.raises(SampleError, match="only plain data") as info:
        safe_loads(pickle.dumps(obj, protocol=2), name="x.pickle")
    assert info.value.reason is Reason.UNSAFE_PICKLE


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_safe_unpickler_round_trips_plain_data(protocol):
    obj = [{"caption": "é ü", "mask_rle": {"size": [3, 4], "counts": b"0<\x01"}, "n": 2 ** 70,
            "f": 1.5, "t": (1, None, True), "s": {1, 2}, "fs": frozenset({"a"}),
            "ba": bytearray(b"\x00xy"), "c": 1 + 2j, "e": b""}]
    assert safe_loads(pickle.dumps(obj, protocol=protocol), name="ok.pickle") == obj


def test_safe_unpickler_refuses_allocation_and_odd_codecs():
    alloc = b"c__builtin__\nbytes\n(I1000000000000\ntR."  # bytes(10**12) with plain pickle
    with pytest.raises(SampleError) as info:
        safe_loads(alloc, name="a.pickle")
    assert info.value.reason is Reason.BAD_ANNOTATION
    rot = b"c_codecs\nencode\n(Vabc\nVrot13\ntR."
    with pytest.raises(SampleError, match="latin1"):
        safe_loads(rot, name="b.pickle")
    with pytest.raises(SampleError, match="not a valid pickle"):
        safe_loads(b"\x80\x04garbage", name="c.pickle")


# --- the reader --------------------------------------------------------------------------------

def test_list_items_reads_tar_headers_into_one_item_per_key(raw):
    items = _reader(raw, frame_records="first_frame").list_items()
    keys = _raw_keys(raw)
    assert [r.source_id for r in items] == sorted(keys) == sorted(set(keys))
    assert len(items) == N_ITEMS + len(DAM_FAULTS)
    for item in items:
        exts = keys[item.source_id]
        assert ("pickle" in item.data) == ("pickle" in exts)
        if "image" in item.data:  # SAV records: the first frame
            assert item.data["image"]["name"].endswith("0.jpg" if "0.jpg" in exts else ".jpg")
        with open(raw / item.data["tar"], "rb") as f:  # offsets point at the member bytes
            f.seek(item.data["pickle"]["offset"])
            head = f.read(1)
        assert head in (b"\x80", b"c")  # a pickle protocol marker / a protocol-0 global
    assert {r.data["split"] for r in items} == {"COCOStuff", "LVIS", "SAV"}
    assert _reader(raw, splits=["LVIS"]).list_items() == [
        r for r in items if r.data["split"] == "LVIS"]


def test_per_frame_video_records_are_rejected_unless_asked_for(raw, build):
    items = {r.source_id: r for r in _reader(raw).list_items()}
    frames = {sid for sid, exts in _raw_keys(raw).items() if "0.jpg" in exts}
    assert frames and all(sid.startswith("SAV_") for sid in frames)
    for sid in frames:
        bad = items[sid].data["_bad_item"]
        assert bad["reason"] == "unsupported_layout" and "per-frame" in bad["detail"]
    assert build.counts["rejected_by_reason"]["unsupported_layout"] == len(frames)
    with pytest.raises(ConfigError, match="frame_records"):
        _reader(raw, frame_records="middle")


def test_missing_split_or_root_is_a_config_error(raw, tmp_path):
    with pytest.raises(ConfigError, match="no .tar shards"):
        _reader(raw, splits=["PACO"]).list_items()
    with pytest.raises(ConfigError, match="no <SPLIT>"):
        _reader(tmp_path).list_items()


def test_reader_pickles_for_ray(raw):
    reader = _reader(raw, splits=["SAV", "LVIS"])
    assert pickle.loads(pickle.dumps(reader)) == reader and reader.splits == ("SAV", "LVIS")


def test_load_reads_members_by_offset_only(raw, tmp_path):
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    reader = _reader(copy, frame_records="first_frame")
    item = next(r for r in reader.list_items() if r.source_id.startswith("SAV_"))
    sample = reader.load(item)
    with tarfile.open(copy / item.data["tar"]) as tar:
        assert sample.image == tar.extractfile(item.data["image"]["name"]).read()
    assert sample.meta == {"split": "SAV", "tar": item.data["tar"], "id": item.data["id"]}


def test_build_accounts_for_every_record_and_rejects_each_fault_with_its_reason(raw, build):
    frames = {sid: "unsupported_layout" for sid, exts in _raw_keys(raw).items() if "0.jpg" in exts}
    check_faults(build, {**frames, **{f"COCOStuff_fault_{f}": r
                                      for f, r in EXPECTED_REASON.items()}}, {})
    assert build.counts["read"] == N_ITEMS + len(DAM_FAULTS)


def test_an_exploit_pickle_in_a_tar_is_a_reject_and_never_runs(tmp_path):
    """A record whose pickle would run `os.system` under plain pickle: rejected as
    `unsafe_pickle` naming the call, nothing executed, the other records built."""
    marker = tmp_path / "PWNED"
    root = synth_dataset("describe_anything", tmp_path / "raw", n_items=2, seed=1)
    write_tar(root / "COCOStuff" / "images" / "COCOStuff-0009.tar", [
        {"evil.jpg": encode_image(make_image(np.random.default_rng(0), 40, 50)),
         "evil.pickle": touch_exploit(marker)}])
    build = run_build(make_config(root, tmp_path / "out", fmt="describe_anything"),
                      runner="serial", progress=False)
    assert build.counts["written"] == 2
    assert build.counts["rejected_by_reason"] == {"unsafe_pickle": 1}
    (row,) = read_rejects(build.build_dir)
    assert row["source_id"] == "COCOStuff_evil" and "os.system" in row["detail"]
    assert not marker.exists()


def test_prompt_masks_and_k_equal_torch_nearest_on_the_raw_records(raw, build):
    def raw_mask(meta: dict, obj: dict):
        rle = _raw_regions(raw, meta)[obj["id"] - 1]["mask_rle"]
        return decode_raw(rle, *rle["size"])

    checked, k_zero = check_prompt_masks(build.build_dir, raw_mask)
    assert checked == build.counts["objects_written"] >= 10  # the SA-V records are rejected
    assert k_zero == build.counts["objects_k_zero"] > 0


def test_sample_json_carries_every_caption(raw, build):
    samples = read_shards(build.build_dir)
    assert len(samples) == build.counts["written"]
    for m in samples.values():
        meta = json.loads(m["json"])
        regions = _raw_regions(raw, meta)
        assert [o["caption"] for o in meta["objects"]] == [r["caption"] for r in regions]
        assert [o["img_id"] for o in meta["objects"]] == [r["img_id"] for r in regions]
