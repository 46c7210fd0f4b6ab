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

from sa2va_shards.build.run import run_build
from sa2va_shards.errors import ConfigError, SampleError
from sa2va_shards.loader import LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.readers import get_reader
from sa2va_shards.readers.sav import ANNOTATION_STEP, _check_rotation
from sa2va_shards.synth.sav import SAV_FAULTS
from sa2va_shards.verify import verify_build
from sa2va_shards.viz import render_overlay
from tests.helpers import make_config
from tests.helpers.shards import read_rejects, read_shards


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


@pytest.fixture(scope="module")
def frames_build(raw, tmp_path_factory):
    return _build(raw, tmp_path_factory, max_frames=5, layout="frames")


def test_faults_are_rejected_and_counts_add_up(mp4_build):
    c = mp4_build.counts
    assert c["read"] == c["written"] + c["rejected"] == 3 + len(SAV_FAULTS)
    assert c["rejected_by_reason"] == {"corrupt_video": 1, "mask_size_mismatch": 2,
                                       "missing_video": 1, "rotated_video": 1,
                                       "bad_annotation": 1}
    details = {r["source_id"]: r["detail"] for r in read_rejects(mp4_build.build_dir)}
    assert "90 degree rotation metadata" in details["sav_900003"]
    assert "180 degree rotation metadata" in details["sav_900004"]
    assert "masklet_id" in details["sav_900005"]
    assert verify_build(mp4_build.build_dir).ok


@pytest.mark.parametrize("layout", ["mp4", "frames"])
def test_prompt_masks_and_k_per_frame_equal_torch_on_the_raw_masklets(layout, mp4_build,
                                                                      frames_build, raw):
    build = mp4_build if layout == "mp4" else frames_build
    checked = 0
    for key, m in read_shards(build.build_dir).items():
        meta = json.loads(m["json"])
        doc = json.loads((raw / f"{key}_manual.json").read_text())
        prompt = np.load(io.BytesIO(m["prompt_masks.npy"]), allow_pickle=False)
        k = np.load(io.BytesIO(m["k.npy"]), allow_pickle=False)
        t_frames = 5 if key < "sav_9" else 4  # the fault clips are shorter
        assert meta["kind"] == "video" and prompt.shape[:2] == k.shape == (t_frames, 3)
        for t, frame_index in enumerate(meta["frame_indices"]):
            rles = doc["masklet"][frame_index // ANNOTATION_STEP]
            for i, obj in enumerate(meta["objects"]):
                mask = mask_utils.decode(rles[obj["masklet_id"]])
                t_mask = torch.from_numpy(mask)[None, None].float()
                expected = F.interpolate(t_mask, size=(16, 16), mode="nearest")[0, 0].numpy() > 0
                np.testing.assert_array_equal(prompt[t, i], expected)
                assert k[t, i] == expected.sum()
                checked += 1
    assert checked == 3 * 5 * 3 + (4 * 4 * 3 if layout == "frames" else 0)
    assert build.counts["objects_k_zero"] == 3 + (4 if layout == "frames" else 0)  # 2x2 objects


def _box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([ys.min(), ys.max(), xs.min(), xs.max()])


@pytest.mark.parametrize("layout", ["mp4", "frames"])
def test_frames_and_masks_are_aligned(layout, mp4_build, frames_build):
    """The box drawn in the stored 1024 frame is where its stored 1024 mask is, to within the
    blur of the codecs and the bicubic resize (8 px at 1024). The boxes move 3 px per video
    frame (19 px at 1024), so a frame one video frame off its annotation fails. The frames
    layout includes the rotated clips."""
    build = mp4_build if layout == "mp4" else frames_build
    colours = np.array([(230, 40, 40), (40, 200, 60)], float)
    checked = 0
    for m in read_shards(build.build_dir).values():
        rles = json.loads(m["masks.json"])
        for t in range(len(rles)):  # the fault clips are shorter
            frame = np.asarray(Image.open(io.BytesIO(m[f"f{t:04d}.jpg"]))).astype(float)
            for i, colour in enumerate(colours):
                drawn = np.abs(frame - colour).max(-1) < 50  # the background is darker
                mask = mask_utils.decode(rles[t][i])
                assert np.abs(_box(mask) - _box(drawn)).max() <= 8
                checked += 1
    assert checked == 2 * (3 * 5 + (4 * 4 if layout == "frames" else 0))


def test_frames_layout_gives_the_same_samples_as_mp4(mp4_build, frames_build):
    a, b = read_shards(mp4_build.build_dir), read_shards(frames_build.build_dir)
    # the mp4 faults do not apply to extracted frames (ffmpeg applied the rotations)
    assert set(b) - set(a) == {"sav_900000", "sav_900002", "sav_900003", "sav_900004"}
    for key in a:
        for member in ("prompt_masks.npy", "k.npy", "masks.json", "gt_masks.json"):
            assert a[key][member] == b[key][member]
        for t in range(5):  # same frames up to the codecs (each frame has its own background)
            fa, fb = (np.asarray(Image.open(io.BytesIO(s[key][f"f{t:04d}.jpg"])), float)
                      for s in (a, b))
            assert np.abs(fa - fb).mean() < 3


def test_stride_and_max_frames_pick_annotated_frames(raw, tmp_path_factory):
    build = _build(raw, tmp_path_factory, max_frames=3, frame_stride=2)
    for m in read_shards(build.build_dir).values():
        meta = json.loads(m["json"])
        annotated = len(json.loads((raw / f"{meta['video_id']}_manual.json").read_text())
                        ["masklet"])
        last = (annotated - 1) // 2 * 2  # the last annotated frame on the stride
        # three frames spread over the whole clip: first, last and one between, all on the stride
        picked = [i // 4 for i in meta["frame_indices"]]
        assert picked[0] == 0 and picked[-1] == last and len(picked) == 3
        assert all(p % 2 == 0 for p in picked) and picked == sorted(set(picked))


def test_every_annotated_frame_is_stored_by_default(raw, tmp_path_factory):
    build = _build(raw, tmp_path_factory)
    for m in read_shards(build.build_dir).values():
        meta = json.loads(m["json"])
        annotated = len(json.loads((raw / f"{meta['video_id']}_manual.json").read_text())
                        ["masklet"])
        assert meta["frame_indices"] == [4 * i for i in range(annotated)]


@pytest.mark.parametrize("options", [{"layout": "mkv"}, {"frame_stride": 0}, {"max_frames": 0}])
def test_bad_reader_options_are_config_errors(raw, options):
    cfg = make_config(raw, raw, fmt="sav")
    from dataclasses import replace

    with pytest.raises(ConfigError):
        get_reader(replace(cfg.reader, options=options))


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


@pytest.mark.parametrize(("mask_hw", "frame_hw", "rotation", "reason"), [
    ((120, 160), (120, 160), 0, None),
    ((120, 160), (120, 160), 90, None),  # display masks would be 160x120: stored orientation
    ((160, 120), (120, 160), 270, "mask_size_mismatch"),
    ((120, 160), (120, 160), 180, "rotated_video"),  # the size cannot tell
    ((128, 128), (128, 128), 90, "rotated_video"),
])
def test_rotation_metadata_rejects_only_what_the_size_cannot_tell(mask_hw, frame_hw, rotation,
                                                                   reason):
    rles = (({"size": list(mask_hw), "counts": ""},),)
    if reason is None:
        _check_rotation(frame_hw, rles, rotation, "v.mp4")
    else:
        with pytest.raises(SampleError) as e:
            _check_rotation(frame_hw, rles, rotation, "v.mp4")
        assert e.value.reason.value == reason and f"{rotation} degree" in e.value.detail


def test_overlay_is_a_strip_of_frames_with_mask_outlines(mp4_build, tmp_path):
    path = render_overlay(mp4_build.build_dir, tmp_path / "clip.png", key="sav_000001")
    png = np.asarray(Image.open(path))
    assert png.shape[1] >= 4 * 384 and png.shape[0] > 384
    red = np.all(png == (230, 25, 75), axis=-1)  # region1's outline colour, exactly
    assert red[:, : 10 + 384].any() and red[:, 10 + 3 * 394:].any()  # first and last frame


def test_only_expressions_builds_just_the_videos_ref_sav_names(raw, tmp_path_factory):
    named = set(json.loads((raw / "sam_v_final_v3.json").read_text()))
    build = _build(raw, tmp_path_factory, expressions="sam_v_final_v3.json",
                   only_expressions=True)
    ids = {json.loads(m["json"])["video_id"] for m in read_shards(build.build_dir).values()}
    assert build.counts["read"] == len(named) and ids == named  # fault clips: not inputs
    every = _build(raw, tmp_path_factory, expressions="sam_v_final_v3.json")
    assert every.counts["read"] == len(named) + len(SAV_FAULTS)


def test_only_expressions_needs_the_expression_file(raw, tmp_path_factory):
    with pytest.raises(ConfigError, match="only_expressions needs"):
        _build(raw, tmp_path_factory, only_expressions=True)
