"""ShardDataset / ShardLoader: split, shuffle, resume, contents, device transforms, safety."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib import format as npformat
from PIL import Image

from sa2va_shards import ops
from sa2va_shards.build.run import run_build
from sa2va_shards.config import VisionConfig
from sa2va_shards.errors import ConfigError
from sa2va_shards.format import decode_npy, encode_npy, iter_samples
from sa2va_shards.loader import (
    CorruptDataError,
    CorruptDataWarning,
    LoaderConfig,
    ShardDataset,
    ShardLoader,
    SkippedSamplesWarning,
    collate,
)
from sa2va_shards.loader.batch import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    dynamic_grid,
    tile_count,
    to_device,
)
from tests.helpers import make_config
from tests.helpers.shards import resign_shard

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

LIGHT = LoaderConfig(gt_masks="none", shuffle_buffer=4)  # counting tests: no mask decode


@pytest.fixture(scope="module")
def build(synth, tmp_path_factory) -> Path:
    """10 COCO-style images -> 4 shards of <= 3 samples (fewer shards than some slot counts)."""
    root = synth("coco", n_items=10, seed=3)
    cfg = make_config(root, tmp_path_factory.mktemp("loader_build"), dataset="ldr",
                      image={"store": "resized"},  # kept sources: tests/test_image_store.py
                      shards={"samples_per_shard": 3})
    return run_build(cfg, runner="serial", progress=False).build_dir


@pytest.fixture(scope="module")
def all_keys(build) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(build / "samples.parquet").column("key").to_pylist()


def _keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["keys"]]


# -- split and shuffle --------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 1, 2, 3, 4])
def test_every_key_exactly_once_for_any_ranks_and_workers(build, all_keys, world, workers):
    seen, per_rank = [], []
    for rank in range(world):
        ds = ShardDataset(build, replace(LIGHT, even_ranks=False), rank=rank, world_size=world)
        keys = _keys(ShardLoader(ds, batch_size=2, num_workers=workers))
        seen += keys
        per_rank.append(len(keys))
    assert sorted(seen) == sorted(all_keys)
    assert max(per_rank) - min(per_rank) <= 1


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("workers", [0, 2])
def test_even_ranks_serve_equal_counts_and_leave_out_under_world_size(build, all_keys, world,
                                                                      workers):
    seen, lengths = [], set()
    for rank in range(world):
        ds = ShardDataset(build, LIGHT, rank=rank, world_size=world)
        loader = ShardLoader(ds, batch_size=2, num_workers=workers)
        keys = _keys(loader)
        assert len(keys) == len(ds) == len(all_keys) // world  # announced = served
        assert len(loader) == sum(-(-len(p) // 2) for p in np.array_split(keys, max(1, workers)))
        seen += keys
        lengths.add(len(keys))
    assert len(lengths) == 1 and len(set(seen)) == len(seen)
    assert len(all_keys) - len(seen) == len(all_keys) % world < world


def test_a_dataset_directory_reads_its_latest_version(build, all_keys):
    ds = ShardDataset(build.parent, LIGHT)  # OUT/<dataset>: follows `latest`
    assert sorted(_keys(ShardLoader(ds, batch_size=4, num_workers=0))) == sorted(all_keys)


def test_shuffle_is_seeded_and_changes_per_epoch(build, all_keys):
    def order(seed: int, epoch: int, **kw) -> list[str]:
        ds = ShardDataset(build, LoaderConfig(gt_masks="none", seed=seed, **kw))
        ds.set_epoch(epoch)
        return [s["__key__"] for s in ds]

    first = order(0, 0)
    assert first == order(0, 0)
    assert sorted(first) == sorted(all_keys)
    assert order(0, 1) != first
    assert order(1, 0) != first
    assert order(0, 0, shuffle=False) == all_keys


# -- resume -------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_yields_exactly_the_unseen_samples(build, all_keys, workers):
    rng = np.random.default_rng(workers)
    cfg = LoaderConfig(gt_masks="none", seed=7, shuffle_buffer=3)
    for stop in rng.integers(1, len(all_keys) // 2, size=2):
        ds = ShardDataset(build, cfg)
        ds.set_epoch(2)
        loader, head = ShardLoader(ds, batch_size=2, num_workers=workers), []
        for step, batch in enumerate(loader):
            head += batch["keys"]
            if step + 1 == stop:
                break
        state = json.loads(json.dumps(loader.state_dict()))  # JSON-able, as saved
        fresh = ShardDataset(build, cfg)
        fresh.load_state_dict(state)
        assert len(fresh) == len(all_keys) - len(head)
        tail = _keys(ShardLoader(fresh, batch_size=2, num_workers=workers))
        assert not set(head) & set(tail)
        assert sorted(head + tail) == sorted(all_keys)
        assert fresh.state_dict()["consumed"] == []  # the epoch was served to its end
        again = _keys(ShardLoader(fresh, batch_size=2, num_workers=workers))
        assert sorted(again) == sorted(all_keys)  # the state applied to one pass only


def _run_ranks(build, cfg, world, workers, *, stop=None, state=None):
    """Keys each rank receives (stopping after `stop` batches), and each rank's state."""
    keys, states = [], []
    for rank in range(world):
        ds = ShardDataset(build, cfg, rank=rank, world_size=world)
        if state is not None:
            ds.load_state_dict(state)
        loader, got = ShardLoader(ds, batch_size=2, num_workers=workers), []
        for step, batch in enumerate(loader):
            got += batch["keys"]
            if stop is not None and step + 1 == stop:
                break
        keys.append(got)
        states.append(json.loads(json.dumps(loader.state_dict())))
    return keys, states


@pytest.mark.parametrize("before,after", [((2, 2), (1, 0)), ((1, 2), (3, 1)),
                                          ((3, 0), (2, 2)), ((2, 1), (4, 3))])
def test_resume_on_another_cluster_shape_serves_exactly_the_rest(build, all_keys, before,
                                                                 after):
    cfg = LoaderConfig(gt_masks="none", seed=3, shuffle_buffer=3, even_ranks=False)
    heads, states = _run_ranks(build, cfg, *before, stop=1)
    merged = ShardDataset.merge_states(states)
    tails, _ = _run_ranks(build, cfg, *after, state=merged)
    head = [k for h in heads for k in h]
    tail = [k for t in tails for k in t]
    assert len(set(tail)) == len(tail) and not set(head) & set(tail)
    assert sorted(head + tail) == sorted(all_keys)


def test_resume_refuses_what_it_cannot_honour(build):
    ds = ShardDataset(build, LIGHT, rank=0, world_size=2)
    next(iter(ds))
    state = ds.state_dict()
    with pytest.raises(ValueError, match=r"ranks \[0\] of 2.*merge"):
        ShardDataset(build, LIGHT).load_state_dict(state)
    one = ShardDataset(build, LIGHT)
    next(iter(one))
    with pytest.raises(ValueError, match="another plan"):
        ShardDataset(build, replace(LIGHT, seed=1)).load_state_dict(one.state_dict())
    with pytest.raises(ValueError, match="another plan"):
        ShardDataset(build, replace(LIGHT, interleave=2)).load_state_dict(one.state_dict())
    with pytest.raises(ValueError, match="format"):
        ShardDataset(build, LIGHT).load_state_dict({**one.state_dict(), "format": 1})
    # another shuffle buffer, worker count or world size is fine: the state is positions
    ShardDataset(build, replace(LIGHT, shuffle_buffer=9), world_size=3).load_state_dict(
        one.state_dict())


# -- contents -----------------------------------------------------------------------------------

_REGION = re.compile(r"region(\d+)<vp>((?:<IMG_CONTEXT>)*)</vp>")
_IMAGE = re.compile(r"<img>((?:<IMG_CONTEXT>)*)</img>")


@pytest.mark.parametrize("max_tiles", [0, 12])
def test_prompts_have_k_context_tokens_per_region(build, max_tiles):
    cfg = LoaderConfig(gt_masks="none", k_zero="keep", max_tiles=max_tiles)
    tokens, n = cfg.vision.tokens_per_image, 0
    for s in ShardDataset(build, cfg):
        first = s["conversation"][0]["input"]
        (image,) = _IMAGE.findall(first)
        assert image.count("<IMG_CONTEXT>") == tokens * s["num_tiles"]
        regions = _REGION.findall(first)
        assert [int(i) for i, _ in regions] == list(range(1, len(s["k"]) + 1))
        assert [c.count("<IMG_CONTEXT>") for _, c in regions] == s["k"].tolist()
        assert first.count("<IMG_CONTEXT>") == tokens * s["num_tiles"] + int(s["k"].sum())
        assert len(s["conversation"]) == len(s["objects"]) == len(s["texts"])
        assert s["prompt_masks"].dtype == torch.bool
        assert s["prompt_masks"].shape[1:] == (cfg.vision.grid, cfg.vision.grid)
        assert torch.equal(s["prompt_masks"].sum((1, 2)), s["k"])
        meta = s["meta"]
        grid = dynamic_grid(meta["width"], meta["height"], max_num=12) if max_tiles else (1, 1)
        assert s["num_tiles"] == tile_count(grid)
        n += 1
    assert n > 0


def test_k_zero_objects_dropped_for_captioning_only(build):
    ks = [s["k"] for s in ShardDataset(build, LoaderConfig(gt_masks="none"))]
    assert all((k > 0).all() for k in ks)
    kept = [s["k"] for s in ShardDataset(build, LoaderConfig(gt_masks="none", k_zero="keep"))]
    assert any((k == 0).any() for k in kept)  # the synth has few-pixel objects
    seg = list(ShardDataset(build, LoaderConfig(task="caption_to_mask")))
    # referring keeps K = 0 objects; a COCO category is one target (all its instances)
    assert sum(len(s["k"]) for s in seg) == sum(
        len({o["category"] for o in s["meta"]["objects"]}) for s in seg)
    assert sum(len(s["meta"]["objects"]) for s in seg) == sum(len(k) for k in kept)


def test_stored_members_round_trip(build):
    cfg = LoaderConfig(gt_masks="both", k_zero="keep", shuffle=False)
    s = next(iter(ShardDataset(build, cfg)))
    m = dict(iter_samples(s["__url__"]))[s["__key__"]]
    image = ops.decode_image(m["jpg"], max_pixels=1 << 26)
    assert torch.equal(s["image"][0], torch.from_numpy(image))
    assert torch.equal(s["prompt_masks"], torch.from_numpy(decode_npy(m["prompt_masks.npy"])))
    batch = to_device(collate([s]), "cpu")
    h, w = s["meta"]["height"], s["meta"]["width"]
    full = ops.rle_decode([_rle(r) for r in json.loads(m["gt_masks.json"])], height=h, width=w)
    assert torch.equal(batch["gt_masks"][0], torch.from_numpy(full.astype(bool)))
    m1024 = ops.rle_decode([_rle(r) for r in json.loads(m["masks.json"])], height=1024,
                           width=1024)
    assert torch.equal(batch["image_masks"][0], torch.from_numpy(m1024.astype(bool)))
    dense = next(iter(ShardDataset(build, LoaderConfig(gt_format="dense", k_zero="keep",
                                                       shuffle=False))))
    assert torch.equal(dense["image_masks"], torch.from_numpy(m1024))


def _rle(r: dict) -> dict:
    return {"size": r["size"], "counts": r["counts"].encode()}


def test_max_objects_is_seeded_and_consistent(build):
    cfg = LoaderConfig(max_objects=1, k_zero="keep", gt_masks="image")
    run = [(s["__key__"], s["object_index"]) for s in ShardDataset(build, cfg)]
    assert run == [(s["__key__"], s["object_index"]) for s in ShardDataset(build, cfg)]
    for s in ShardDataset(build, cfg):
        assert len(s["object_index"]) == 1
        assert len(s["k"]) == len(s["prompt_masks"]) == len(s["image_masks"]) == 1
        assert s["objects"] == [s["meta"]["objects"][i] for (i,) in s["object_index"]]
    picks = []
    for epoch in range(4):
        ds = ShardDataset(build, cfg)
        ds.set_epoch(epoch)
        picks.append(dict((s["__key__"], s["object_index"]) for s in ds))
    assert any(p != picks[0] for p in picks[1:])


def test_caption_to_mask_turns_pair_one_seg_with_each_target(build):
    for s in ShardDataset(build, LoaderConfig(task="caption_to_mask", gt_masks="image")):
        turns = s["conversation"]
        assert s["task"] == "caption_to_mask"
        assert len(turns) == len(s["image_masks"]) == len(s["texts"])
        assert all(t["output"].count("[SEG]") == 1 for t in turns)
        assert "<vp>" not in turns[0]["input"] and turns[0]["input"].startswith("<img>")
        for t, text in zip(turns, s["texts"], strict=True):
            assert text.lower().rstrip(".") in t["input"]
    tasks = {s["task"] for s in ShardDataset(build, LoaderConfig(task="mixed"))}
    assert tasks == {"mask_to_caption", "caption_to_mask"}


def test_config_needs_gt_masks_for_referring():
    with pytest.raises(ValueError, match="GT masks"):
        LoaderConfig(task="caption_to_mask", gt_masks="none")


# -- device transforms --------------------------------------------------------------------------


def test_to_device_resizes_and_normalises_like_pillow(build):
    cfg = LoaderConfig(gt_masks="none", max_tiles=6, shuffle=False)
    batch = to_device(collate(list(ShardDataset(build, cfg))[:3]), "cpu")
    pv, g = batch["pixel_values"], batch["g_pixel_values"]
    assert g.dtype == torch.uint8 and g.shape == (3, 3, 1024, 1024)
    assert pv.dtype == torch.float32 and pv.shape == (3, 3, 448, 448)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for i in range(3):
        hwc = g[i].permute(1, 2, 0).contiguous().numpy()
        ref = np.asarray(Image.fromarray(hwc).resize((448, 448), Image.Resampling.BICUBIC))
        ref = (torch.from_numpy(ref).permute(2, 0, 1).float() / 255 - mean) / std
        level = 1 / (255 * min(IMAGENET_STD))  # torch's uint8 kernel rounds within 1 level
        assert (pv[i] - ref).abs().max() <= level + 1e-5
    assert pv.min() >= -2.2 and pv.max() <= 2.7
    tiles, counts = batch["tiles"], batch["num_tiles"]
    assert tiles.shape == (int(counts.sum()), 3, 448, 448)
    ends = torch.cumsum(counts, 0)
    for i in range(3):  # the thumbnail (the tile the prompt masks describe) comes last
        assert torch.equal(tiles[ends[i] - 1], pv[i])


def test_tiles_are_row_major_crops():
    g = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    batch = {"g_pixel_values": g, "frames_per_sample": torch.tensor([1]),
             "tile_grid": torch.tensor([[3, 2]]), "num_tiles": torch.tensor([7])}
    out = to_device(batch, "cpu", vision=VisionConfig(image_size=28, patch_size=14))
    big = torch.nn.functional.interpolate(g, size=(56, 84), mode="bicubic", antialias=True)
    big = (big.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD).view(1, 3, 1, 1)
    assert out["tiles"].shape == (7, 3, 28, 28)
    for t in range(6):
        r, c = divmod(t, 3)
        crop = big[0, :, 28 * r:28 * (r + 1), 28 * c:28 * (c + 1)]
        assert torch.allclose(out["tiles"][t], crop, atol=1e-5)


def _expected_grid(width: int, height: int, max_num: int, size: int = 448) -> tuple:
    """InternVL's tiling rule stated as properties (an oracle independent of the loop in
    `dynamic_grid`): among grids with i*j <= max_num, those closest to the aspect ratio tie;
    the smallest tie is kept unless a larger tie has i*j < 2*w*h / size^2, and then the
    largest such tie wins."""
    grids = [(i, j) for i in range(1, max_num + 1) for j in range(1, max_num + 1)
             if i * j <= max_num]
    diffs = {g: abs(width / height - g[0] / g[1]) for g in grids}
    best = min(diffs.values())
    ties = sorted((g for g in grids if diffs[g] == best), key=lambda g: g[0] * g[1])
    larger = [g for g in ties[1:] if width * height > 0.5 * size * size * g[0] * g[1]]
    return larger[-1] if larger else ties[0]


def test_dynamic_grid_matches_sa2va():
    # tile counts Sa2VA's own code gives (reference/sa2va_formats.md section 2)
    known = {(640, 480): 13, (500, 375): 13, (640, 427): 7, (640, 640): 5, (1024, 1024): 10,
             (1920, 1080): 9, (848, 480): 3, (448, 448): 1}
    for (w, h), n in known.items():
        assert tile_count(dynamic_grid(w, h, max_num=12)) == n, (w, h)
    rng = np.random.default_rng(0)
    sizes = [(int(a), int(b)) for a, b in rng.integers(1, 3000, size=(300, 2))]
    sizes += [(448 * i, 448 * j) for i in range(1, 7) for j in range(1, 7)] + [(1, 1), (11, 15)]
    for max_num in (1, 2, 4, 6, 12):
        for w, h in sizes:
            assert dynamic_grid(w, h, max_num=max_num) == _expected_grid(w, h, max_num), (w, h)


# -- safety -------------------------------------------------------------------------------------


def _copy_build(build: Path, dst: Path) -> Path:
    shutil.copytree(build, dst / "build")
    return dst / "build"


def _rewrite(tar_path: Path, edit) -> None:
    """Rewrite a shard with `edit(name, data) -> data | None` (None drops a member), and
    record its new hash so the decoder, not the shard-hash check, meets the edits."""
    with tarfile.open(tar_path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(tar_path, "w") as tar:
        for name, data in members:
            for new_name, new_data in edit(name, data):
                info = tarfile.TarInfo(new_name)
                info.size = len(new_data)
                tar.addfile(info, io.BytesIO(new_data))
    resign_shard(tar_path)


def test_truncated_shard_is_skipped_counted_and_warned(build, all_keys, tmp_path):
    copy = _copy_build(build, tmp_path)
    shard = sorted((copy / "shards").glob("*.tar"))[1]
    with tarfile.open(shard) as tar:
        lost = {m.name.split(".")[0] for m in tar}
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2 + 100])
    ds = ShardDataset(copy, LIGHT)
    with pytest.warns(CorruptDataWarning, match="corrupt_shard"):
        keys = _keys(ShardLoader(ds, batch_size=2, num_workers=2))
    assert len(keys) == len(set(keys))
    assert set(all_keys) - lost <= set(keys) < set(all_keys)
    assert ds.stats["corrupt_shard"] == 1  # reported from a worker, through the batches
    with pytest.raises(CorruptDataError):
        list(ShardDataset(copy, LoaderConfig(gt_masks="none", strict=True)))


def test_corrupt_members_are_skipped_and_counted(build, all_keys, tmp_path):
    copy = _copy_build(build, tmp_path)
    shard = sorted((copy / "shards").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        first, second, third = sorted({m.name.split(".")[0] for m in tar})[:3]
    evil = encode_npy(np.zeros(1)).replace(b"'descr': '<f8'", b"'descr': '|O'")
    huge = io.BytesIO()  # a header claiming 4e12 cells over the real 256-byte payload
    npformat.write_array_header_1_0(huge, {"descr": "|b1", "fortran_order": False,
                                           "shape": (10**10, 16, 16)})

    def edit(name: str, data: bytes):
        key, suffix = name.split(".", 1)
        if key == first and suffix == "jpg":
            data = data[: len(data) // 4]
        if key == second and suffix == "k.npy":
            data = evil  # an object array: only loadable by unpickling
        if key == third and suffix == "prompt_masks.npy":
            data = huge.getvalue() + b"\0" * 256
        yield name, data

    _rewrite(shard, edit)
    _rewrite(sorted((copy / "shards").glob("*.tar"))[1],  # an unknown member is never opened
             lambda name, data: [(name, data)] + ([(name.replace(".json", ".pickle"),
                                                     b"\x80\x04bad")] if ".json" in name else []))
    ds = ShardDataset(copy, LoaderConfig(shuffle=False))
    with pytest.warns(CorruptDataWarning):
        keys = [s["__key__"] for s in ds]
    assert sorted(keys) == sorted(set(all_keys) - {first, second, third})
    assert ds.stats["corrupt_image"] == 1 and ds.stats["bad_npy"] == 2
    with pytest.raises(CorruptDataError, match="corrupt_image"):
        list(ShardDataset(copy, LoaderConfig(strict=True, shuffle=False)))
    # the three damaged samples are consecutive: a tolerance of 3 in a row stops the pass,
    # one of 4 skips them (the same boundary and rule as the build's shard job)
    with pytest.raises(CorruptDataError, match="3 consecutive samples failed in worker 0"):
        list(ShardDataset(copy, LoaderConfig(shuffle=False, max_consecutive_errors=3)))
    with pytest.warns(CorruptDataWarning):
        assert len(list(ShardDataset(copy, LoaderConfig(shuffle=False,
                                                        max_consecutive_errors=4)))) == len(keys)


def test_samples_with_nothing_to_serve_are_counted_and_reported_per_pass(build, all_keys,
                                                                          tmp_path):
    copy = _copy_build(build, tmp_path)
    shard = sorted((copy / "shards").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        key = sorted({m.name.split(".")[0] for m in tar})[0]

    def edit(name: str, data: bytes):  # every object of `key` gets K = 0
        if name.startswith(key + ".") and name.endswith("npy"):
            data = encode_npy(np.zeros_like(decode_npy(data)))
        yield name, data

    _rewrite(shard, edit)
    ds = ShardDataset(copy, LoaderConfig(gt_masks="none", strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptDataWarning)
        with pytest.warns(SkippedSamplesWarning, match=r"1 intact samples .*no_usable_objects 1"):
            keys = _keys(ShardLoader(ds, batch_size=2, num_workers=2))
    assert sorted(keys) == sorted(set(all_keys) - {key})
    assert ds.stats == {"no_usable_objects": 1}


def test_preprocessing_mismatch_is_refused(build):
    with pytest.raises(ConfigError, match="grid: build 16, loader 14"):
        ShardDataset(build, LoaderConfig(vision=VisionConfig(patch_size=16)))
    with pytest.raises(ConfigError, match="schema_version"):
        ShardDataset(build, LoaderConfig(schema_version=99))
    with pytest.raises(ConfigError, match="image_size"):
        ShardDataset(build, LoaderConfig(image_size=512))
    urls = sorted(str(p) for p in (build / "shards").glob("*.tar"))
    assert ShardDataset(urls, LIGHT).card["version"] == build.name  # card found from URLs


def test_shards_without_a_card_warn_or_refuse_when_strict(build, all_keys, tmp_path):
    for tar in (build / "shards").glob("*.tar"):
        shutil.copy(tar, tmp_path)
    with pytest.warns(UserWarning, match="cannot be checked"):
        ds = ShardDataset(tmp_path, LIGHT)
    assert sorted(s["__key__"] for s in ds) == sorted(all_keys)
    with pytest.raises(ConfigError, match="dataset.json"):
        ShardDataset(str(tmp_path / "ldr-{000000..000003}.tar"),
                     LoaderConfig(gt_masks="none", strict=True))


def test_video_samples_stack_frames(build, tmp_path):
    copy = _copy_build(build, tmp_path)
    shard = sorted((copy / "shards").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        key = sorted({m.name.split(".")[0] for m in tar})[0]

    def edit(name: str, data: bytes):  # the first sample becomes a 2-frame video
        k, suffix = name.split(".", 1)
        if k != key:
            yield name, data
        elif suffix == "jpg":
            yield from ((f"{k}.f0000.jpg", data), (f"{k}.f0001.jpg", data))
        elif suffix == "json":
            yield name, json.dumps({**json.loads(data), "kind": "video"}).encode()
        elif suffix in ("prompt_masks.npy", "k.npy"):
            a = decode_npy(data)
            yield name, encode_npy(np.stack([a, a]))
        elif suffix.endswith(".json"):
            yield name, json.dumps([json.loads(data)] * 2).encode()

    _rewrite(shard, edit)
    cfg = LoaderConfig(task="caption_to_mask", gt_masks="both", shuffle=False, max_tiles=12,
                       frames=None)  # every stored frame
    s = next(s for s in ShardDataset(copy, cfg) if s["__key__"] == key)
    n = len(s["objects"])
    assert s["kind"] == "video" and s["image"].shape == (2, 1024, 1024, 3)
    assert s["prompt_masks"].shape == (2, n, 16, 16) and s["k"].shape == (2, n)
    assert s["conversation"][0]["input"].count("<img>") == 2
    batch = to_device(collate([s]), "cpu")
    assert batch["pixel_values"].shape == (2, 3, 448, 448)
    assert batch["frames_per_sample"].tolist() == [2] and batch["tiles"].shape[0] == 2
    assert batch["image_masks"][0].shape == (2, n, 1024, 1024)
    h, w = s["meta"]["height"], s["meta"]["width"]
    assert batch["gt_masks"][0].shape == (2, n, h, w)
