"""Hostile index records and paths (issue 10, classes 1, 2, 3, 5, 8): one COCO build holding
every malformed record kind next to good images. Every bad record is a reject with a reason,
nothing is read outside the root, nothing hangs, and the good images are built."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sa2va_shards.build.run import run_build
from sa2va_shards.readers.coco import CocoReader
from sa2va_shards.verify import verify_build
from tests.helpers import make_config

BOX = [[20.0, 20.0, 120.0, 20.0, 120.0, 100.0, 20.0, 100.0]]


def _image(i, **over):
    """An image record of good.jpg; the fixture fills in its real size unless given."""
    return {"id": i, "file_name": "good.jpg", **over}


def _ann(j, image_id, **over):
    return {"id": j, "image_id": image_id, "category_id": 1, "segmentation": BOX,
            "bbox": [20, 20, 100, 80], "iscrowd": 0, **over}


#: (image record, annotations, expected reason or None when it must be written).
CASES = {
    "far_polygon": (_image(101), [_ann(1, 101, segmentation=[[0, 0, 1e12, 0, 5, 5]])],
                    "bad_segmentation"),
    "huge_polygon": (_image(102), [_ann(2, 102, segmentation=[[0, 0, 3e5, 0, 5, 3e5]])],
                     "bad_segmentation"),
    "float_size": (_image(103, height=240.5), [_ann(3, 103)], "bad_annotation"),
    "string_size": (_image(104, width="320"), [_ann(4, 104)], "bad_annotation"),
    "whole_float_size": (_image(105, height="float", width="float"), [_ann(5, 105)], None),
    "null_rle_size": (_image(106), [_ann(6, 106, segmentation={"size": None, "counts": "x"})],
                      "bad_segmentation"),
    "non_ascii_rle": (_image(107), [_ann(7, 107, segmentation={"size": "real",
                                                                "counts": "\u00e9" * 4})],
                      "bad_segmentation"),
    "dotdot": (_image(108, file_name="../outside.jpg"), [_ann(8, 108)], "unsafe_path"),
    "absolute": (_image(109, file_name="/etc/hostname"), [_ann(9, 109)], "unsafe_path"),
    "nested_dotdot": (_image(110, file_name="sub/../../outside.jpg"), [_ann(10, 110)],
                      "unsafe_path"),
    "symlink_out": (_image(111, file_name="link_out.jpg"), [_ann(11, 111)], "unsafe_path"),
    "symlink_in": (_image(112, file_name="link_in.jpg"), [_ann(12, 112)], None),
    "nul_name": (_image(113, file_name="go\x00od.jpg"), [_ann(13, 113)], "bad_annotation"),
    "fifo": (_image(114, file_name="fifo.jpg"), [_ann(14, 114)], "not_a_file"),
    "folder": (_image(115, file_name="sub"), [_ann(15, 115)], "not_a_file"),
    "surrogate_id": (_image("a\ud800b"), [_ann(16, "a\ud800b")], "bad_annotation"),
    "empty_id": (_image(""), [_ann(17, "")], "bad_annotation"),
    "unknown_category": (_image(118), [_ann(18, 118, category_id=99)], "bad_annotation"),
    "unhashable_category": (_image(119), [_ann(19, 119, category_id=[1])], "bad_annotation"),
    "bad_ann_id": (_image(120), [_ann({"x": 1}, 120)], "bad_annotation"),
    "mixed_ann_ids": (_image(121), [_ann(21, 121), _ann("b21", 121)], None),
    "many_masks": (_image(122), [_ann(1000 + k, 122) for k in range(300)], None),
}


@pytest.fixture(scope="module")
def hostile(synth, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    raw = tmp / "raw"
    shutil.copytree(synth("coco", n_items=4, seed=3), raw)
    images = raw / "images"
    good = max(images.glob("*.jpg"), key=lambda p: p.stat().st_size)  # room for BOX
    shutil.copy(good, images / "good.jpg")
    (tmp / "outside.jpg").write_bytes(good.read_bytes())  # the target of every escape
    os.symlink(tmp / "outside.jpg", images / "link_out.jpg")
    os.symlink(images / "good.jpg", images / "link_in.jpg")
    os.mkfifo(images / "fifo.jpg")
    (images / "sub").mkdir()
    doc = json.loads((raw / "annotations" / "instances.json").read_text())
    h, w = _size_of(good)
    for img, anns, _ in CASES.values():
        size = {"height": float(h), "width": float(w)} if img.get("height") == "float" else {}
        doc["images"].append({"height": h, "width": w, **img, **size})
        doc["annotations"] += [{**a, "segmentation": {**a["segmentation"], "size": [h, w]}}
                               if isinstance(a["segmentation"], dict)
                               and a["segmentation"]["size"] == "real" else a for a in anns]
    doc["images"] += [None, {"id": [1]}, {"id": True}, "text"]  # records that are no image
    doc["annotations"] += [None, {"id": 7000, "image_id": {"a": 1}},
                           {"id": 7001, "image_id": 999_999}, {"id": 7002, "image_id": 999_999}]
    doc["categories"] += [{"name": "no id"}, {"id": [3], "name": "list id"}]
    # two records with a repeated key, which only raw JSON text can hold
    repeated_id = '{"id": 130, "id": 131, "file_name": "good.jpg", "height": %d, "width": %d}'
    repeated_ann = ('{"id": 31, "image_id": 132, "image_id": 132, "category_id": 1, '
                    '"segmentation": ' + json.dumps(BOX) + "}")
    image_132 = json.dumps(_image(132, height=h, width=w))
    text = json.dumps(doc).replace('"images": [', f'"images": [{repeated_id % (h, w)}, '
                                   f'{image_132}, ', 1)
    text = text.replace('"annotations": [', f'"annotations": [{repeated_ann}, ', 1)
    (raw / "annotations" / "instances.json").write_text(text)
    cfg = make_config(raw, tmp / "out", shards={"samples_per_shard": 6})
    old = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(300)  # a FIFO read would block forever: fail instead of hanging the suite
    try:
        result = run_build(cfg, runner="serial", progress=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    rejects = pq.read_table(result.build_dir / "rejects.parquet").to_pylist()
    samples = pq.read_table(result.build_dir / "samples.parquet").to_pylist()
    return result, rejects, samples, tmp


def _hang(*_):
    raise TimeoutError("the build hung")


def _size_of(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def _sid(image_id) -> str:
    return f"{image_id:012d}" if isinstance(image_id, int) else image_id


def test_every_bad_record_is_a_reject_with_its_reason(hostile):
    result, rejects, samples, _ = hostile
    by_id = {r["source_id"]: r for r in rejects if r["level"] == "sample"}
    written = {s["source_id"] for s in samples}
    for name, (img, _, reason) in CASES.items():
        sid = _sid(img["id"]).encode("utf-8", "backslashreplace").decode()
        if reason is None:
            assert sid in written, name
        else:
            assert by_id[sid]["reason"] == reason, (name, by_id[sid])
            assert by_id[sid]["detail"], name


def test_records_that_are_no_image_and_orphans_are_rejected_not_dropped(hostile):
    _, rejects, _, _ = hostile
    by_id = {r["source_id"]: r["reason"] for r in rejects if r["level"] == "sample"}
    tail = [k for k in by_id if k.startswith("images[")]
    assert len(tail) == 4 and {by_id[k] for k in tail} == {"bad_annotation"}
    assert sum(k.startswith("annotations[") for k in by_id) == 2
    assert "000000999999" in by_id and by_id["000000999999"] == "bad_annotation"


def test_repeated_json_keys_reject_their_record(hostile):
    _, rejects, samples, _ = hostile
    by_id = {r["source_id"]: r for r in rejects if r["level"] == "sample"}
    assert "repeats keys ['id']" in by_id["000000000131"]["detail"]
    assert "repeats keys ['image_id']" in by_id["000000000132"]["detail"]
    assert not {"000000000131", "000000000132"} & {s["source_id"] for s in samples}


def test_the_build_accounts_for_everything_and_verifies(hostile):
    result, _, samples, _ = hostile
    c = result.counts
    assert c["read"] == c["written"] + c["rejected"]
    assert c["written"] == len(samples) >= 4 + sum(r is None for *_, r in CASES.values())
    assert verify_build(result.build_dir).ok
    many = next(s for s in samples if s["source_id"] == "000000000122")
    assert many["n_obj"] == 300  # past pycocotools' uint8 area overflow


def test_no_byte_from_outside_the_root_reaches_a_shard(hostile):
    _, rejects, samples, tmp = hostile
    escapes = {_sid(CASES[n][0]["id"]) for n in ("dotdot", "absolute", "nested_dotdot",
                                                  "symlink_out")}
    assert not escapes & {s["source_id"] for s in samples}
    assert all("etc" not in r["detail"] or r["reason"] == "unsafe_path" for r in rejects)


def test_reader_index_never_raises_on_the_hostile_file(hostile):
    _, _, _, tmp = hostile
    items = CocoReader(root=str(tmp / "raw")).list_items()
    assert len({i.source_id for i in items}) >= len(CASES)
