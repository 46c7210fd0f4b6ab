"""Referring video (MeViS, ReVOS, Ref-YouTube-VOS): real layout end to end, faults, and every
stored mask against an independent decode of the raw files (pycocotools + torch nearest)."""

from __future__ import annotations

import io
import json
import pickle
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

from sa2va_shards.build.run import run_build
from sa2va_shards.errors import ConfigError
from sa2va_shards.loader import LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.readers import READERS, get_reader
from sa2va_shards.readers.refvideo import LAYOUTS
from sa2va_shards.synth.refvideo import REFVIDEO_FAULTS
from sa2va_shards.verify import verify_build
from tests.helpers import make_config
from tests.helpers.hostile import touch_exploit
from tests.helpers.shards import read_rejects, read_shards

FORMATS = ("mevis", "revos", "refytvos")


def _build(raw, out, fmt, **options):
    cfg = make_config(raw, out, fmt=fmt, dataset=fmt, shards={"samples_per_shard": 4})
    if options:
        cfg = replace(cfg, reader=replace(cfg.reader, options=options))
    return run_build(cfg, runner="serial", progress=False)


@pytest.fixture(scope="module", params=FORMATS)
def built(request, synth, tmp_path_factory):
    fmt = request.param
    raw = synth(fmt, n_items=3, seed=2, faults=REFVIDEO_FAULTS)
    return fmt, raw, _build(raw, tmp_path_factory.mktemp(fmt), fmt)


def _raw_docs(raw, fmt):
    exp_file, mask_file, _ = LAYOUTS[fmt]
    videos = json.loads((raw / exp_file).read_text())["videos"]
    if mask_file.endswith(".pkl"):
        with open(raw / mask_file, "rb") as f:
            masks = pickle.load(f)  # our own synth file
    else:
        masks = json.loads((raw / mask_file).read_text())
    return videos, masks


def _expected_objects(videos, fmt):
    """video -> [(mask ids, expressions)], derived here from the raw files: MeViS / ReVOS
    group expressions by their anno_id set, Ref-YouTube-VOS by obj_id with the mask id counted
    over sorted videos and expression ids."""
    out, count = {}, 0
    for vid in sorted(videos):
        groups: dict = {}
        for exp_id in sorted(videos[vid]["expressions"]):
            e = videos[vid]["expressions"][exp_id]
            if fmt == "refytvos":
                key, ids = e["obj_id"], [str(count)]
                count += 1
            else:
                ids = sorted({str(a) for a in e["anno_id"]}, key=int)
                key = tuple(ids)
            groups.setdefault(key, (ids, []))[1].append(e["exp"])
        out[vid] = list(groups.values())
    return out


def test_faults_are_rejected_with_their_reason_and_counts_add_up(built):
    fmt, _, build = built
    c = build.counts
    assert c["read"] == c["written"] + c["rejected"] == 3 + len(REFVIDEO_FAULTS)
    reasons = {r["source_id"]: r["reason"] for r in read_rejects(build.build_dir)
               if r["level"] == "sample"}
    assert reasons == {
        "fault_missing_frame": "missing_image", "fault_corrupt_frame": "corrupt_image",
        "fault_frame_sizes": "corrupt_video", "fault_bad_rle": "bad_segmentation",
        "fault_size_mismatch": "mask_size_mismatch", "fault_missing_mask_id": "bad_annotation",
        "fault_mask_length": "bad_annotation", "fault_bad_expression": "bad_annotation",
        # Ref-YouTube-VOS cannot drop an expression without shifting every later mask id
        "fault_no_expressions": "bad_annotation" if fmt == "refytvos" else "no_objects",
        "fault_unsafe_frame_name": "unsafe_path"}
    assert verify_build(build.build_dir).ok


def test_objects_group_expressions_per_target(built):
    fmt, raw, build = built
    videos, _ = _raw_docs(raw, fmt)
    expected = _expected_objects(videos, fmt)
    samples = read_shards(build.build_dir)
    assert sorted(samples) == ["vid_0000", "vid_0001", "vid_0002"]
    for key, m in samples.items():
        meta = json.loads(m["json"])
        got = [(o["mask_ids"], o["expressions"]) for o in meta["objects"]]
        assert got == [(ids, exps) for ids, exps in expected[key]]
        multi = [o for o in meta["objects"] if len(o["mask_ids"]) > 1]
        assert len(multi) == (0 if fmt == "refytvos" else 1)  # the red-and-green expression


def _union(masks, ids, index, h, w):
    m = np.zeros((h, w), np.uint8)
    for a in ids:
        rle = masks[a][index]
        if rle is not None:
            m |= mask_utils.decode(rle)
    return m


def _nearest(mask, size):
    t = torch.from_numpy(mask)[None, None].float()
    return F.interpolate(t, size=(size, size), mode="nearest")[0, 0].numpy() > 0


def test_every_mask_equals_an_independent_decode_of_the_raw_files(built):
    fmt, raw, build = built
    videos, masks = _raw_docs(raw, fmt)
    checked = 0
    for key, m in read_shards(build.build_dir).items():
        meta = json.loads(m["json"])
        names = sorted(videos[key]["frames"])
        assert meta["kind"] == "video" and meta["frame_names"] == names  # every frame stored
        prompt = np.load(io.BytesIO(m["prompt_masks.npy"]), allow_pickle=False)
        k = np.load(io.BytesIO(m["k.npy"]), allow_pickle=False)
        gt, m1024 = json.loads(m["gt_masks.json"]), json.loads(m["masks.json"])
        h, w = meta["height"], meta["width"]
        for t, name in enumerate(meta["frame_names"]):
            for i, obj in enumerate(meta["objects"]):
                full = _union(masks, obj["mask_ids"], names.index(name), h, w)
                np.testing.assert_array_equal(mask_utils.decode(gt[t][i]), full)
                np.testing.assert_array_equal(mask_utils.decode(m1024[t][i]) > 0,
                                              _nearest(full, 1024))
                np.testing.assert_array_equal(prompt[t, i], _nearest(full, 16))
                assert k[t, i] == _nearest(full, 16).sum()
                checked += 1
    assert checked == sum(len(json.loads(m["json"])["objects"]) * json.loads(m["json"])["frames"]
                          for m in read_shards(build.build_dir).values()) > 0
    assert build.counts["objects_k_zero"] == 3  # the 2x2 dot of each video


def _box(mask):
    ys, xs = np.nonzero(mask)
    return np.array([ys.min(), ys.max(), xs.min(), xs.max()])


def test_frames_and_masks_are_aligned(built):
    """The red and green boxes drawn in each stored frame are where their stored masks are
    (they move 4 px per frame, 32 px at 1024: a frame paired with its neighbour's mask fails)."""
    _, _, build = built
    colours = np.array([(230, 40, 40), (40, 200, 60)], float)
    for m in read_shards(build.build_dir).values():
        meta = json.loads(m["json"])
        rles = json.loads(m["masks.json"])
        single = [i for i, o in enumerate(meta["objects"]) if len(o["mask_ids"]) == 1]
        for t in range(meta["frames"]):
            frame = np.asarray(Image.open(io.BytesIO(m[f"f{t:04d}.jpg"]))).astype(float)
            for obj_index, colour in zip(single[:2], colours, strict=True):
                drawn = np.abs(frame - colour).max(-1) < 50
                mask = mask_utils.decode(rles[t][obj_index])
                assert np.abs(_box(mask) - _box(drawn)).max() <= 8


def test_max_frames_spreads_frames_over_the_clip(synth, tmp_path):
    raw = synth("mevis", n_items=3, seed=2)
    build = _build(raw, tmp_path, "mevis", max_frames=3)
    for m in read_shards(build.build_dir).values():
        meta = json.loads(m["json"])
        n = meta["video_frame_count"]
        assert meta["frame_indices"][0] == 0 and meta["frame_indices"][-1] == n - 1
        assert len(meta["frame_indices"]) == 3 == meta["frames"]


def test_loader_serves_the_expressions_as_referring_targets(built):
    fmt, _, build = built
    ds = ShardDataset(build.build_dir, LoaderConfig(task="caption_to_mask", gt_masks="image",
                                                    shuffle=False))
    batches = list(ShardLoader(ds, batch_size=3, num_workers=0))
    assert sum(b["batch_size"] for b in batches) == 3
    served = {t.lower().rstrip(".") for b in batches for sample in b["texts"] for t in sample}
    assert "green box" in served or "the box that leads" in served


def test_reader_pickles_and_defaults_follow_the_format(synth):
    for fmt in FORMATS:
        raw = synth(fmt, n_items=3, seed=2, faults=REFVIDEO_FAULTS)
        reader = get_reader(make_config(raw, raw, fmt=fmt).reader)
        assert pickle.loads(pickle.dumps(reader)) == reader
        assert (reader.expressions, reader.masks, reader.frames_dir) == LAYOUTS[fmt]
        assert READERS[fmt].name == fmt


def test_setup_faults_are_config_errors(synth, tmp_path):
    raw = synth("refytvos", n_items=2, seed=3)
    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    cfg = make_config(root, tmp_path, fmt="refytvos").reader
    (root / "mask_dict.pkl").write_bytes(touch_exploit(tmp_path / "ran"))
    with pytest.raises(ConfigError, match="unsafe_pickle.*os.system"):
        get_reader(cfg).list_items()
    assert not (tmp_path / "ran").exists()
    (root / "mask_dict.pkl").unlink()
    with pytest.raises(ConfigError, match="mask file not found"):
        get_reader(cfg).list_items()
    with pytest.raises(ConfigError, match="max_frames"):
        get_reader(replace(cfg, options={"max_frames": 0}))


def test_repeated_keys_reject_only_the_videos_they_touch(synth, tmp_path):
    raw = synth("mevis", n_items=3, seed=2)
    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    text = (root / "mask_dict.json").read_text()
    first_id = json.loads(text).__iter__().__next__()  # a mask id of vid_0000 (sorted first)
    (root / "mask_dict.json").write_text(text[:-1] + f', "{first_id}": null}}')
    items = get_reader(make_config(root, tmp_path, fmt="mevis").reader).list_items()
    bad = {i.source_id: i.data.get("_bad_item") for i in items}
    assert bad["vid_0000"]["reason"] == "bad_annotation" and "repeated" in bad["vid_0000"]["detail"]
    assert bad["vid_0001"] is None and bad["vid_0002"] is None


def test_ref_youtube_vos_copies_of_one_object_must_agree(synth, tmp_path):
    raw = synth("refytvos", n_items=2, seed=3)
    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    with open(root / "mask_dict.pkl", "rb") as f:
        masks = pickle.load(f)  # our own synth file
    # vid_0000 (first in sorted order): expressions 0 and 2 both refer to obj_id 1 -> ids 0, 2
    masks["2"][0] = None
    with open(root / "mask_dict.pkl", "wb") as f:
        pickle.dump(masks, f)
    items = {i.source_id: i for i in get_reader(make_config(root, tmp_path,
                                                            fmt="refytvos").reader).list_items()}
    bad = items["vid_0000"].data["_bad_item"]
    assert bad["reason"] == "bad_annotation" and "differ" in bad["detail"]
    assert items["vid_0001"].data["objects"][0]["mask_ids"] == ["6"]  # counted on, unchanged


def test_a_mask_pickle_keyed_by_int_reads_as_its_text_ids(synth, tmp_path):
    raw = synth("refytvos", n_items=2, seed=3)
    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    with open(root / "mask_dict.pkl", "rb") as f:
        masks = pickle.load(f)
    with open(root / "mask_dict.pkl", "wb") as f:
        pickle.dump({int(k): v for k, v in masks.items()}, f)
    cfg = make_config(root, tmp_path, fmt="refytvos").reader
    assert get_reader(cfg).list_items() == get_reader(replace(cfg, root=str(raw))).list_items()


def test_ref_youtube_vos_mask_ids_count_expression_ids_as_text():
    """VISA's (and Sa2VA's) count: videos sorted, expression ids sorted as text, so expression
    "10" comes before "2"."""
    from sa2va_shards.readers.refvideo import _count_mask_ids, _objects_by_obj_id

    exps = {str(i): {"exp": f"thing {i}", "obj_id": str(i)} for i in range(12)}
    videos = {"b": {"expressions": exps}, "a": {"expressions": {"0": {"exp": "x", "obj_id": "1"}}}}
    counted = _count_mask_ids(videos)
    assert counted == {"a": ["0"], "b": [str(i) for i in range(1, 13)]}
    objects = _objects_by_obj_id(sorted(exps.items()), counted["b"], {}, "b")
    by_exp = {o["exp_ids"][0]: o["mask_ids"][0] for o in objects}
    assert by_exp["0"] == "1" and by_exp["1"] == "2" and by_exp["10"] == "3" and by_exp["2"] == "5"
