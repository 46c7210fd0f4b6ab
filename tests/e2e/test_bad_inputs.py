"""The bad-input corpus: every kind of broken or unusual input, next to good samples, in one
build. Each is converted or rejected with its own reason; the counts add up."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sa2va_shards.build.run import run_build
from sa2va_shards.synth.coco import COCO_FAULTS
from tests.helpers import make_config

REJECTED = {
    "corrupt_image": "corrupt_image", "random_bytes": "corrupt_image",
    "zero_byte": "corrupt_image", "missing_image": "missing_image",
    "size_mismatch": "mask_size_mismatch", "bad_rle": "bad_segmentation",
    "bad_polygon": "bad_segmentation", "no_objects": "no_objects",
    "duplicate_id": "duplicate_id", "too_large": "image_too_large",
}
OBJECT_DROPPED = {"empty_mask": "empty_mask", "polygon_outside": "empty_mask"}
CONVERTED = ("mode_p", "mode_la", "mode_i16", "mode_cmyk", "exif_rotated", "text_control")


@pytest.fixture(scope="module")
def corpus(synth, tmp_path_factory):
    raw = synth("coco", n_items=8, seed=13, faults=COCO_FAULTS)
    cfg = make_config(raw, tmp_path_factory.mktemp("bad"), image={"max_pixels": 10_000_000},
                      shards={"samples_per_shard": 5})
    result = run_build(cfg, runner="serial", progress=False)
    rejects = pq.read_table(result.build_dir / "rejects.parquet").to_pylist()
    members = {}
    for tar_path in (result.build_dir / "shards").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                key, _, suffix = m.name.partition(".")
                members.setdefault(key, {})[suffix] = tar.extractfile(m).read()
    return result, rejects, members


def _sid(fault: str) -> str:
    return f"{10_000 + COCO_FAULTS.index(fault):012d}"


def test_the_corpus_covers_at_least_fifteen_kinds():
    kinds = set(REJECTED) | set(OBJECT_DROPPED) | set(CONVERTED) | {"k_zero"}
    assert kinds - {"k_zero"} == set(COCO_FAULTS) and len(kinds) >= 15


def test_each_bad_sample_is_rejected_with_its_own_reason(corpus):
    result, rejects, _ = corpus
    by_id = {r["source_id"]: r for r in rejects if r["level"] == "sample"}
    for fault, reason in REJECTED.items():
        assert by_id[_sid(fault)]["reason"] == reason, fault
        assert by_id[_sid(fault)]["detail"], fault
    assert len(by_id) == len(REJECTED)
    c = result.counts
    assert c["read"] == c["written"] + c["rejected"] == 8 + len(COCO_FAULTS) + 1


def test_objects_without_pixels_are_dropped_and_their_samples_written(corpus):
    _, rejects, members = corpus
    for fault, reason in OBJECT_DROPPED.items():
        rows = [r for r in rejects if r["source_id"] == _sid(fault)]
        assert [(r["level"], r["reason"]) for r in rows] == [("object", reason)], fault
        assert np.load(io.BytesIO(members[_sid(fault)]["k.npy"])).tolist() != []


def test_unusual_modes_exif_and_odd_text_are_converted_not_rejected(corpus):
    _, rejects, members = corpus
    assert not {r["source_id"] for r in rejects} & {_sid(f) for f in CONVERTED}
    for fault in CONVERTED:
        m = members[_sid(fault)]
        img = Image.open(io.BytesIO(m["jpg"]))
        meta = json.loads(m["json"].decode("utf-8"))  # valid UTF-8 always
        # only a plain RGB JPEG is kept as it is (`image.store`); the others are converted
        kept = meta["image_store"] == "original"
        assert kept == (fault == "text_control")
        assert img.mode == "RGB" and img.size == ((320, 240) if kept else (1024, 1024))
        assert (meta["height"], meta["width"]) == (240, 320)  # stored pixels: EXIF not applied
    name = json.loads(members[_sid("text_control")]["json"])["objects"][0]["category"]
    assert name == "bad\x00\x1b[31m\u2028?name"


def test_k_zero_regions_are_kept_and_counted(corpus):
    result, _, _ = corpus
    assert result.counts["objects_k_zero"] > 0
    assert result.counts["k_histogram"]["0"] == result.counts["objects_k_zero"]
