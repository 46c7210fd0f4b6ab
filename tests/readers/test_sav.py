"""SA-V: real mp4 + _manual.json (and the extracted-frames layout) end to end."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.build import run_build
from sa2va_shards.loader import LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.readers import get_reader
from sa2va_shards.readers.sav import ANNOTATION_STEP, SAV_FAULTS
from sa2va_shards.verify import verify_build
from tests.helpers import make_config
from tests.helpers.shards import read_shards


@pytest.fixture(scope="module")
def raw(synth):
    return synth("sav", n_items=3, seed=1, faults=SAV_FAULTS)


def _build(raw, tmp_path_factory, **options):
    cfg = make_config(raw, tmp_path_factory.mktemp("sav"), fmt="sav", dataset="sav",
                      shards={"samples_per_shard": 2})
    if options:
        from dataclasses import replace

        cfg = replace(cfg, reader=replace(cfg.reader, options=options))
    return run_build(cfg, runner="serial", progress=False)


@pytest.fixture(scope="module")
def mp4_build(raw, tmp_path_factory):
    return _build(raw, tmp_path_factory, max_frames=5, frame_stride=1)


def test_faults_are_rejected_and_counts_add_up(mp4_build):
    c = mp4_build.counts
    assert c["read"] == c["written"] + c["rejected"] == 3 + len(SAV_FAULTS)
    assert c["rejected_by_reason"] == {"corrupt_video": 1, "mask_size_mismatch": 1,
                                       "missing_video": 1}
    assert verify_build(mp4_build.build_dir).ok


def test_prompt_masks_and_k_per_frame_equal_torch_on_the_raw_masklets(mp4_build, raw):
    checked = 0
    for key, m in read_shards(mp4_build.build_dir).items():
        meta = json.loads(m["json"])
        doc = json.loads((raw / f"{key}_manual.json").read_text())
        prompt = np.load(io.BytesIO(m["prompt_masks.npy"]), allow_pickle=False)
        k = np.load(io.BytesIO(m["k.npy"]), allow_pickle=False)
        assert meta["kind"] == "video" and prompt.shape[:2] == k.shape == (5, 3)
        for t, frame_index in enumerate(meta["frame_indices"]):
            rles = doc["masklet"][frame_index // ANNOTATION_STEP]
            for i, obj in enumerate(meta["objects"]):
                mask = mask_utils.decode(rles[obj["masklet_id"]])
                t_mask = torch.from_numpy(mask)[None, None].float()
                expected = F.interpolate(t_mask, size=(16, 16), mode="nearest")[0, 0].numpy() > 0
                np.testing.assert_array_equal(prompt[t, i], expected)
                assert k[t, i] == expected.sum()
                checked += 1
    assert checked == 3 * 5 * 3
    assert mp4_build.counts["objects_k_zero"] == 3  # the 2x2 object of every clip


def test_frames_and_masks_are_aligned(mp4_build):
    """The stored 1024 frame shows the drawn colour under each stored 1024 mask."""
    colours = np.array([(230, 40, 40), (40, 200, 60)], float)
    for m in read_shards(mp4_build.build_dir).values():
        rles = json.loads(m["masks_1024.json"])
        for t in range(5):
            frame = np.asarray(Image.open(io.BytesIO(m[f"f{t:04d}.jpg"]))).astype(float)
            for i, colour in enumerate(colours):
                mask = mask_utils.decode(rles[t][i]).astype(bool)
                inner = mask & np.roll(mask, 12, 0) & np.roll(mask, -12, 0) & \
                    np.roll(mask, 12, 1) & np.roll(mask, -12, 1)  # away from the edges
                assert np.abs(frame[inner].mean(0) - colour).max() < 25


def test_frames_layout_gives_the_same_masks_as_mp4(mp4_build, raw, tmp_path_factory):
    frames_build = _build(raw, tmp_path_factory, max_frames=5, layout="frames")
    a, b = read_shards(mp4_build.build_dir), read_shards(frames_build.build_dir)
    # the mp4 faults do not apply to extracted frames: those clips are written there
    assert set(b) - set(a) == {"sav_900000", "sav_900002"}
    for key in a:
        for member in ("prompt_masks.npy", "k.npy", "masks_1024.json", "gt_masks.json"):
            assert a[key][member] == b[key][member]


def test_stride_and_max_frames_pick_annotated_frames(raw, tmp_path_factory):
    build = _build(raw, tmp_path_factory, max_frames=3, frame_stride=2)
    for m in read_shards(build.build_dir).values():
        assert json.loads(m["json"])["frame_indices"] == [0, 8, 16]


def test_reader_pickles_and_indexes_without_parsing(raw):
    reader = get_reader(make_config(raw, raw, fmt="sav").reader)
    assert pickle.loads(pickle.dumps(reader)) == reader
    items = reader.list_items()
    assert [i.source_id for i in items] == sorted(i.source_id for i in items)
    assert all("masklet" not in json.dumps(i.data) for i in items)


def test_loader_streams_video_samples_with_ref_sav_captions(raw, tmp_path_factory):
    build = _build(raw, tmp_path_factory, max_frames=3, expressions="sam_v_final_v3.json")
    ds = ShardDataset(build.build_dir, LoaderConfig(gt_masks="none", shuffle=False))
    batches = list(ShardLoader(ds, batch_size=2, num_workers=0))
    assert sum(b["batch_size"] for b in batches) == 3
    assert all(set(b["kind"]) == {"video"} for b in batches)
    meta = json.loads(next(iter(read_shards(build.build_dir).values()))["json"])
    assert meta["objects"][0]["caption"] == "The red box slides to the right."


def test_fallback_any_gives_every_visible_frame_a_cell_and_still_verifies(raw, tmp_path):
    cfg = make_config(raw, tmp_path, fmt="sav", dataset="sav", masks={"k_zero": "fallback_any"},
                      shards={"samples_per_shard": 2})
    from dataclasses import replace

    cfg = replace(cfg, reader=replace(cfg.reader, options={"max_frames": 4}))
    build = run_build(cfg, runner="serial", progress=False)
    assert build.counts["objects_k_zero"] == 0
    for m in read_shards(build.build_dir).values():
        k = np.load(io.BytesIO(m["k.npy"]), allow_pickle=False)
        meta = json.loads(m["json"])
        assert (k[:, 2] >= 1).all() and meta["objects"][2]["k_fallback"]
        assert not meta["objects"][0]["k_fallback"]
    assert verify_build(build.build_dir).ok
