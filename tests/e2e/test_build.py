"""End to end on a synthesised COCO-style set: accounting, exactness against torch, determinism,
resume and versions."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from sa2va_shards.build import process_shard, run_build
from sa2va_shards.manifest import file_sha256
from sa2va_shards.verify import verify_build
from tests.helpers import make_config

FAULTS = ("corrupt_image", "random_bytes", "zero_byte", "missing_image", "size_mismatch",
          "bad_rle", "bad_polygon", "no_objects", "duplicate_id", "empty_mask")
EXPECTED_REASON = {
    "corrupt_image": "corrupt_image", "random_bytes": "corrupt_image",
    "zero_byte": "corrupt_image", "missing_image": "missing_image",
    "size_mismatch": "mask_size_mismatch", "bad_rle": "bad_segmentation",
    "bad_polygon": "bad_segmentation", "no_objects": "no_objects", "duplicate_id": "duplicate_id",
}


@pytest.fixture(scope="module")
def raw(synth):
    return synth("coco", n_items=14, seed=3, faults=FAULTS)


@pytest.fixture(scope="module")
def serial_build(raw, tmp_path_factory):
    cfg = make_config(raw, tmp_path_factory.mktemp("serial"), shards={"samples_per_shard": 4})
    return cfg, run_build(cfg, runner="serial", progress=False)


def _read_shards(build_dir: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted((build_dir / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                key, _, suffix = m.name.partition(".")
                samples.setdefault(key, {})[suffix] = tar.extractfile(m).read()
    return samples


def _raw_masks(raw: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Masks decoded straight from instances.json with pycocotools: (ann id, mask) per image."""
    doc = json.loads((raw / "annotations" / "instances.json").read_text())
    size = {img["id"]: (img["height"], img["width"]) for img in doc["images"]}
    out: dict[str, list] = {}
    for a in sorted(doc["annotations"], key=lambda a: a["id"]):
        h, w = size[a["image_id"]]
        seg = a["segmentation"]
        try:
            rle = (mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if isinstance(seg, list)
                   else mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list)
                   else seg)
            mask = mask_utils.decode(rle)
        except Exception:  # noqa: BLE001 - the injected bad segmentations; rejected anyway
            continue
        out.setdefault(f"{a['image_id']:012d}", []).append((a["id"], mask))
    return out


def test_every_input_is_written_or_rejected_with_its_reason(serial_build):
    cfg, result = serial_build
    c = result.counts
    assert c["read"] == c["written"] + c["rejected"]
    assert c["read"] == 14 + len(FAULTS) + 1  # + the duplicate image record itself
    rejects = pq.read_table(result.build_dir / "rejects.parquet").to_pylist()
    by_id = {r["source_id"]: r for r in rejects if r["level"] == "sample"}
    for j, fault in enumerate(FAULTS):
        sid = f"{10_000 + j:012d}"
        if fault in EXPECTED_REASON:
            assert by_id[sid]["reason"] == EXPECTED_REASON[fault], fault
        else:  # empty_mask: the sample is written, the empty object is dropped
            assert sid not in by_id
            obj = [r for r in rejects if r["source_id"] == sid and r["level"] == "object"]
            assert [r["reason"] for r in obj] == ["empty_mask"]
    assert c["rejected"] == len(EXPECTED_REASON)
    assert verify_build(result.build_dir).ok


def test_prompt_masks_and_k_equal_torch_nearest_on_independently_decoded_raw_masks(serial_build,
                                                                                 raw):
    _, result = serial_build
    raw_masks = _raw_masks(raw)
    samples = _read_shards(result.build_dir)
    checked = 0
    for key, m in samples.items():
        meta = json.loads(m["json"])
        prompt = np.load(io.BytesIO(m["prompt_masks.npy"]), allow_pickle=False)
        k = np.load(io.BytesIO(m["k.npy"]), allow_pickle=False)
        by_id = dict(raw_masks[key])
        for i, obj in enumerate(meta["objects"]):
            t = torch.from_numpy(by_id[obj["id"]])[None, None].float()
            expected = F.interpolate(t, size=(16, 16), mode="nearest")[0, 0].numpy() != 0
            np.testing.assert_array_equal(prompt[i], expected, err_msg=f"{key} obj {obj['id']}")
            assert k[i] == expected.sum()
            checked += 1
    assert checked == result.counts["objects_written"] > 20
    assert result.counts["objects_k_zero"] > 0  # the synth's few-pixel objects


def test_stored_1024_masks_and_gt_masks_match_torch_and_the_raw_annotation(serial_build, raw):
    _, result = serial_build
    raw_masks = _raw_masks(raw)
    key, m = next(iter(_read_shards(result.build_dir).items()))
    meta = json.loads(m["json"])
    m1024 = mask_utils.decode(json.loads(m["masks.json"]))
    gt = mask_utils.decode(json.loads(m["gt_masks.json"]))
    by_id = dict(raw_masks[key])
    for i, obj in enumerate(meta["objects"]):
        np.testing.assert_array_equal(gt[..., i], by_id[obj["id"]])
        t = torch.from_numpy(by_id[obj["id"]])[None, None]
        expected = F.interpolate(t, size=(1024, 1024), mode="nearest")[0, 0].numpy()
        np.testing.assert_array_equal(m1024[..., i], expected)
    assert (meta["height"], meta["width"]) == gt.shape[:2]


def test_tar_members_are_sorted_with_fixed_metadata(serial_build):
    _, result = serial_build
    tar_path = next((result.build_dir / "shards").glob("*.tar"))
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    keys = [n.partition(".")[0] for n in names]
    assert keys == sorted(keys)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.mode == 0o444 for m in members)
    assert not list((result.build_dir / "shards").glob("*.tmp"))


@pytest.mark.ray
def test_ray_build_is_byte_identical_to_serial_build(serial_build, ray_local, tmp_path):
    cfg, serial = serial_build
    ray_result = run_build(dataclasses.replace(cfg, out=str(tmp_path)), progress=False)
    assert ray_result.version == serial.version
    names = sorted(p.name for p in (serial.build_dir / "shards").glob("*.tar"))
    assert names == sorted(p.name for p in (ray_result.build_dir / "shards").glob("*.tar"))
    for name in names + ["samples.parquet", "shards.parquet", "rejects.parquet"]:
        a = serial.build_dir / ("shards/" + name if name.endswith(".tar") else name)
        b = ray_result.build_dir / ("shards/" + name if name.endswith(".tar") else name)
        assert file_sha256(a) == file_sha256(b), name


def test_rebuilding_an_existing_version_is_a_no_op(serial_build):
    cfg, first = serial_build
    again = run_build(cfg, runner="serial", progress=False)
    assert again.reused and again.build_dir == first.build_dir and again.counts == first.counts


def test_config_change_gives_a_new_version(serial_build):
    cfg, first = serial_build
    from sa2va_shards.build.run import input_fingerprint, version_id
    from sa2va_shards.readers import get_reader

    fp = input_fingerprint(get_reader(cfg.reader).list_items())
    card = json.loads((first.build_dir / "dataset.json").read_text())
    ids = {"code": card["code"]["id"], "files": card["files_fingerprint"]}
    assert version_id(cfg, fp, **ids) == first.version
    for change in [{"shards": dataclasses.replace(cfg.shards, samples_per_shard=5)},
                   {"image": dataclasses.replace(cfg.image, interpolation="bilinear")},
                   {"masks": dataclasses.replace(cfg.masks, k_zero="drop_object")}]:
        assert version_id(dataclasses.replace(cfg, **change), fp, **ids) != first.version
    # where things live is not part of the version
    moved = dataclasses.replace(cfg, out="/elsewhere",
                                reader=dataclasses.replace(cfg.reader, root="/x"))
    assert version_id(moved, fp, **ids) == first.version
    # the code and the input files are
    assert version_id(cfg, fp, **{**ids, "code": "0" * 16}) != first.version
    assert version_id(cfg, fp, **{**ids, "files": "0" * 64}) != first.version


def test_crashed_build_resumes_to_the_same_bytes(serial_build, tmp_path):
    cfg, reference = serial_build
    cfg = dataclasses.replace(cfg, out=str(tmp_path))
    real = process_shard
    calls = []

    def crash_on_third(plan, cfg, *, build_dir):
        calls.append(plan.name)
        if len(calls) == 3:
            (Path(build_dir) / "shards" / f"{plan.name}.tmp").write_bytes(b"partial")
            raise RuntimeError("simulated crash")
        return real(plan, cfg, build_dir=build_dir)

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_build(cfg, runner="serial", progress=False, shard_fn=crash_on_third)
    resumed = run_build(cfg, runner="serial", progress=False)
    assert resumed.resumed_shards == 2
    for name in ["samples.parquet", "shards.parquet", "rejects.parquet"]:
        assert file_sha256(resumed.build_dir / name) == file_sha256(reference.build_dir / name)
    for tar in (reference.build_dir / "shards").glob("*.tar"):
        assert file_sha256(resumed.build_dir / "shards" / tar.name) == file_sha256(tar)
    assert not list((resumed.build_dir / "shards").glob("*.tmp"))


def test_resume_redoes_a_shard_whose_bytes_changed(serial_build, tmp_path):
    cfg, reference = serial_build
    cfg = dataclasses.replace(cfg, out=str(tmp_path))
    real = process_shard
    calls = []
    last = f"{cfg.dataset}-{reference.counts['shards'] - 1:06d}.tar"

    def crash_on_last(plan, cfg, *, build_dir):
        calls.append(plan.name)
        if plan.name == last:
            raise RuntimeError("simulated crash")
        return real(plan, cfg, build_dir=build_dir)

    with pytest.raises(RuntimeError):
        run_build(cfg, runner="serial", progress=False, shard_fn=crash_on_last)
    first = Path(tmp_path) / cfg.dataset / reference.version / "shards" / "test-000000.tar"
    first.write_bytes(first.read_bytes()[:-10] + b"corrupted!")
    resumed = run_build(cfg, runner="serial", progress=False)
    assert resumed.resumed_shards == len(calls) - 2  # the corrupted one and the crashed one redone
    assert file_sha256(first) == file_sha256(reference.build_dir / "shards" / first.name)


@pytest.mark.parametrize("policy,expect", [
    ("keep", {"k_zero_kept": True}),
    ("drop_object", {"dropped": "k_zero"}),
    ("drop_sample", {"rejected": "k_zero"}),
    ("fallback_any", {"k_zero_kept": False}),
])
def test_k_zero_policies_are_applied_and_counted(synth, tmp_path, policy, expect):
    raw = synth("coco", n_items=6, seed=5)
    cfg = make_config(raw, tmp_path, masks={"k_zero": policy}, shards={"samples_per_shard": 3})
    c = run_build(cfg, runner="serial", progress=False).counts
    assert c["read"] == c["written"] + c["rejected"] == 6
    if "k_zero_kept" in expect:
        assert (c["objects_k_zero"] > 0) == expect["k_zero_kept"]
    if "dropped" in expect:
        assert c["objects_k_zero"] == 0 and c["objects_dropped_by_reason"]["k_zero"] > 0
    if "rejected" in expect:
        assert c["rejected_by_reason"]["k_zero"] > 0
