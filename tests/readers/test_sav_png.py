"""SA-V val / test layout (JPEGImages_24fps + Annotations_6fps/<video>/<obj>/<frame>.png)."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sa2va_shards.build.run import run_build
from sa2va_shards.readers import get_reader
from sa2va_shards.synth.sav import PNG_FAULTS, break_png_layout
from sa2va_shards.verify import verify_build
from tests.helpers import make_config
from tests.helpers.shards import read_rejects, read_shards


@pytest.fixture(scope="module")
def raw(synth, tmp_path_factory):
    """SA-V synth (its clips also get the val / test PNG masks), one PNG fault per clip added
    on copies of a good clip."""
    src = synth("sav", n_items=2, seed=4)
    root = tmp_path_factory.mktemp("savpng") / "sav_val"
    shutil.copytree(src, root)
    for j, fault in enumerate(PNG_FAULTS):
        vid = f"sav_{800_000 + j:06d}"
        for sub in ("JPEGImages_24fps", "Annotations_6fps"):
            shutil.copytree(root / sub / "sav_000001", root / sub / vid)
        break_png_layout(root, vid, fault)
    return root


def _build(root, out, **options):
    cfg = make_config(root, out, fmt="sav", dataset="sav_val", shards={"samples_per_shard": 3})
    cfg = replace(cfg, reader=replace(cfg.reader, options={"layout": "png", **options}))
    return run_build(cfg, runner="serial", progress=False)


def test_png_faults_are_rejected_with_their_reason(raw, tmp_path):
    build = _build(raw, tmp_path)
    c = build.counts
    assert c["read"] == c["written"] + c["rejected"] == 2 + len(PNG_FAULTS)
    reasons = {r["source_id"]: r["reason"] for r in read_rejects(build.build_dir)}
    assert reasons == {"sav_800000": "bad_annotation",  # frame 4 of object 000 missing
                       "sav_800001": "bad_segmentation", "sav_800002": "bad_segmentation",
                       "sav_800003": "mask_size_mismatch", "sav_800004": "missing_image",
                       "sav_800005": "bad_annotation"}
    assert verify_build(build.build_dir).ok


def test_png_masks_equal_torch_nearest_of_the_raw_pngs(raw, tmp_path):
    (raw / "sav_val.txt").write_text("sav_000002\nsav_000001\n")  # the release's id list
    build = _build(raw, tmp_path, video_list="sav_val.txt")
    samples = read_shards(build.build_dir)
    assert sorted(samples) == ["sav_000001", "sav_000002"]
    for key, m in samples.items():
        meta = json.loads(m["json"])
        prompt = np.load(io.BytesIO(m["prompt_masks.npy"]), allow_pickle=False)
        k = np.load(io.BytesIO(m["k.npy"]), allow_pickle=False)
        assert meta["frame_indices"] == list(range(0, meta["frames"] * 4, 4))  # every 6 fps frame
        for t, frame in enumerate(meta["frame_indices"]):
            for i, obj in enumerate(meta["objects"]):
                png = raw / "Annotations_6fps" / key / obj["masklet_id"] / f"{frame:05d}.png"
                full = (np.asarray(Image.open(png)) != 0).astype(np.float32)
                expected = F.interpolate(torch.from_numpy(full)[None, None], size=(16, 16),
                                         mode="nearest")[0, 0].numpy() > 0
                np.testing.assert_array_equal(prompt[t, i], expected)
                assert k[t, i] == expected.sum()


def test_png_layout_gives_the_same_masks_as_the_manual_json(raw, tmp_path):
    png = read_shards(_build(raw, tmp_path / "a").build_dir)
    cfg = make_config(raw, tmp_path / "b", fmt="sav", dataset="sav_val",
                      shards={"samples_per_shard": 3})
    frames = read_shards(run_build(replace(cfg, reader=replace(
        cfg.reader, options={"layout": "frames"})), runner="serial", progress=False).build_dir)
    for key in ("sav_000001", "sav_000002"):
        for member in ("prompt_masks.npy", "k.npy", "gt_masks.json", "f0003.jpg"):
            assert png[key][member] == frames[key][member]


def test_png_layout_without_annotations_is_a_config_error(tmp_path):
    from sa2va_shards.errors import ConfigError

    cfg = make_config(tmp_path, tmp_path, fmt="sav")
    with pytest.raises(ConfigError, match="Annotations_6fps"):
        get_reader(replace(cfg.reader, options={"layout": "png"})).list_items()
    with pytest.raises(ConfigError, match="expressions"):
        get_reader(replace(cfg.reader, options={"layout": "png", "expressions": "x.json"})
                   ).list_items()
