"""Tiles from full detail: with `image.tiles`, the loader's InternVL tiles and thumbnail are one
resample of the original (as Sa2VA makes them), not a resample of the 1024 squash."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sa2va_shards.build.run import run_build
from sa2va_shards.loader import LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.loader.batch import IMAGENET_MEAN, IMAGENET_STD
from sa2va_shards.ops.tiles import dynamic_grid
from sa2va_shards.verify import verify_build
from tests.helpers import make_config

MAX = 6


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A COCO-style set of large sources with fine detail (stripes a few pixels wide, PNG):
    what the squash to 1024 loses and full-detail tiles keep."""
    root = tmp_path_factory.mktemp("detail")
    (root / "images").mkdir()
    images, anns = [], []
    for i, (w, h) in enumerate([(2048, 1536), (1600, 1200), (1536, 2048)], start=1):
        y, x = np.mgrid[0:h, 0:w]
        # gray (JPEG's 4:2:0 keeps luma detail), periods of 4-5 pixels
        v = 128 + 60 * np.sin(2 * np.pi * x / (4 + i / 3)) + 60 * np.sin(2 * np.pi * y / 4.6)
        a = np.repeat(v.astype(np.uint8)[..., None], 3, axis=-1)
        Image.fromarray(a).save(root / "images" / f"{i:012d}.png")
        images.append({"id": i, "file_name": f"{i:012d}.png", "width": w, "height": h})
        anns.append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0,
                     "bbox": [100, 100, 400, 300], "area": 120000.0,
                     "segmentation": [[100, 100, 500, 100, 500, 400, 100, 400]]})
    (root / "annotations").mkdir()
    (root / "annotations" / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns,
         "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}]}))
    return root


@pytest.fixture(scope="module")
def builds(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiles")
    plain = run_build(make_config(raw, out, dataset="plain"), runner="serial", progress=False)
    tiled = run_build(make_config(raw, out, dataset="tiled", image={"tiles": MAX}),
                      runner="serial", progress=False)
    return plain.build_dir, tiled.build_dir


def _sa2va_tiles(path, max_num: int) -> np.ndarray:
    """InternVL's dynamic_preprocess on the original with Pillow bicubic: (n, 448, 448, 3)."""
    img = Image.open(path).convert("RGB")
    cols, rows = dynamic_grid(*img.size, max_num=max_num)
    big = np.asarray(img.resize((cols * 448, rows * 448), Image.Resampling.BICUBIC))
    crops = [big[r * 448:(r + 1) * 448, c * 448:(c + 1) * 448] for r in range(rows)
             for c in range(cols)]
    thumb = np.asarray(img.resize((448, 448), Image.Resampling.BICUBIC))
    return np.stack([*crops, thumb] if len(crops) > 1 else [thumb])


def _levels(tiles: torch.Tensor) -> np.ndarray:
    std, mean = torch.tensor(IMAGENET_STD).view(3, 1, 1), torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    return ((tiles * std + mean) * 255).permute(0, 2, 3, 1).numpy()


def _errors(build, raw) -> list[float]:
    files = {str(i["id"]).zfill(12): raw / "images" / i["file_name"] for i in json.loads(
        (raw / "annotations" / "instances.json").read_text())["images"]}
    cfg = LoaderConfig(gt_masks="none", max_tiles=MAX, shuffle=False)
    errors = []
    for batch in ShardLoader(ShardDataset(build, cfg), batch_size=2, num_workers=0, device="cpu"):
        parts = batch["tiles"].split(batch["num_tiles"].tolist())
        for key, tiles in zip(batch["keys"], parts, strict=True):
            want = _sa2va_tiles(files[key], MAX).astype(np.float64)
            assert tiles.shape[0] == len(want)  # same grid, thumbnail last
            errors.append(float(np.abs(_levels(tiles) - want).mean()))
    return errors


def test_full_detail_tiles_are_closer_to_sa2va_than_tiles_of_the_squash(builds, raw):
    plain, tiled = builds
    stored, squashed = _errors(tiled, raw), _errors(plain, raw)
    assert len(stored) == len(squashed) == 3
    assert max(stored) < 3.0  # JPEG q95 of one resample of the original
    assert np.mean(stored) < 0.5 * np.mean(squashed)


def test_tiled_builds_verify_and_record_their_grid(builds):
    _, tiled = builds
    assert verify_build(tiled).ok
    cfg = LoaderConfig(gt_masks="none", max_tiles=MAX, shuffle=False)
    for s in ShardDataset(tiled, cfg):
        meta = s["meta"]
        assert meta["tiles"]["grid"] == list(dynamic_grid(meta["width"], meta["height"],
                                                          max_num=MAX))
        assert s["thumb"].shape == (448, 448, 3)


def test_another_max_tiles_falls_back_to_the_squash(builds):
    _, tiled = builds
    for s in ShardDataset(tiled, LoaderConfig(gt_masks="none", max_tiles=2, shuffle=False)):
        if list(s["tile_grid"]) != s["meta"]["tiles"]["grid"]:
            assert "tile_image" not in s


def test_only_samples_without_a_stored_thumbnail_are_resized():
    """A batch mixing a sample with its build's thumbnail and a 2-frame clip without: the
    thumbnails are the stored one and the resized frames, as if every frame were resized and
    the stored one put in its place."""
    from sa2va_shards.loader.batch import _thumbnails, normalize_images, resize_images

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=gen)
    stored = torch.randint(0, 256, (28, 28, 3), dtype=torch.uint8, generator=gen)
    out = {"g_pixel_values": images, "frames_per_sample": torch.tensor([1, 2]),
           "thumb": [stored, None]}
    expected = normalize_images(resize_images(images, (28, 28)))
    expected[0] = normalize_images(stored.permute(2, 0, 1)[None])[0]
    assert torch.equal(_thumbnails(out, 28, torch.float32), expected)
