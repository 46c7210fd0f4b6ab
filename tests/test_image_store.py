"""`image.store`: a kept source is the file's bytes, validated and rejected exactly as a resized
one; the loader's SAM2 input, thumbnail and tiles are one Pillow-bicubic resample of it."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from sa2va_shards.build.run import run_build
from sa2va_shards.loader import LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.loader.batch import IMAGENET_MEAN, IMAGENET_STD
from sa2va_shards.ops.store import is_jpeg, keep_source
from sa2va_shards.ops.tiles import dynamic_grid
from sa2va_shards.verify import verify_build
from tests.helpers import make_config

#: every fault the COCO synth has: bad files, PNG modes, CMYK, EXIF, too large, bad masks.
FAULTS = ("corrupt_image", "random_bytes", "zero_byte", "missing_image", "size_mismatch",
          "bad_rle", "no_objects", "empty_mask", "too_large", "mode_p", "mode_la", "mode_i16",
          "mode_cmyk", "exif_rotated")
POLICIES = ("resized", "original", "auto")
#: a target smaller than some synth sources (up to 900x601), so `auto` keeps some, resizes some.
SIZE = 640
MAX = 6


@pytest.fixture(scope="module")
def raw(synth):
    return synth("coco", n_items=16, seed=5, faults=FAULTS)


@pytest.fixture(scope="module")
def builds(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    return {p: run_build(make_config(raw, out, dataset=p, image={"store": p, "size": SIZE,
                                                                "max_pixels": 10_000_000},
                                     shards={"samples_per_shard": 8}),
                         runner="serial", progress=False).build_dir for p in POLICIES}


def _members(build) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted((build / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                key, _, suffix = m.name.partition(".")
                samples.setdefault(key, {})[suffix] = tar.extractfile(m).read()
    return samples


def _sources(raw) -> dict[str, bytes]:
    doc = json.loads((raw / "annotations" / "instances.json").read_text())
    return {str(i["id"]).zfill(12): (raw / "images" / i["file_name"]).read_bytes()
            for i in doc["images"] if (raw / "images" / i["file_name"]).is_file()}


def _jpeg(mode: str = "RGB", **opts) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (8, 8)).save(buf, "JPEG", **opts)
    return buf.getvalue()


def test_keep_source_policy():
    jpeg, gray = _jpeg(), _jpeg("L")
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated, upright = _jpeg(exif=exif.tobytes()), Image.Exif()
    upright[0x0112] = 1
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    assert is_jpeg(jpeg) and not is_jpeg(png.getvalue()) and not is_jpeg(b"")
    assert not keep_source(jpeg, 10, 10, store="resized", size=1024)
    assert keep_source(jpeg, 4000, 3000, store="original", size=1024)
    assert keep_source(_jpeg(exif=upright.tobytes()), 10, 10, store="original", size=1024)
    for other in (png.getvalue(), gray, _jpeg("CMYK"), rotated, b"\xff\xd8\xff\xe0junk"):
        assert not keep_source(other, 10, 10, store="original", size=1024)
        assert not keep_source(other, 10, 10, store="auto", size=1024)
    assert keep_source(jpeg, 1024, 768, store="auto", size=1024)
    assert not keep_source(jpeg, 1025, 768, store="auto", size=1024)
    assert not keep_source(jpeg, 768, 1025, store="auto", size=1024)
    with pytest.raises(ValueError):
        keep_source(jpeg, 10, 10, store="both", size=1024)


def test_members_are_the_source_bytes_or_the_squash(builds, raw):
    sources = _sources(raw)
    kept = {p: 0 for p in POLICIES}
    for policy, build in builds.items():
        for key, m in _members(build).items():
            meta, src = json.loads(m["json"]), sources[key]
            keep = meta["image_store"] == "original"
            kept[policy] += keep
            assert keep == keep_source(src, meta["height"], meta["width"], store=policy,
                                       size=SIZE)
            if keep:
                assert m["jpg"] == src and not {"tiles.jpg", "thumb.jpg"} & set(m)
            else:
                assert meta["image_store"] == "resized"
                assert Image.open(io.BytesIO(m["jpg"])).size == (SIZE, SIZE)
                assert Image.open(io.BytesIO(m["jpg"])).format == "JPEG"
    n = len(_members(builds["resized"]))
    assert kept["resized"] == 0 and 0 < kept["auto"] < kept["original"] < n  # PNGs resized


def test_rejects_and_masks_do_not_depend_on_the_policy(builds):
    tables = {p: pq.read_table(b / "rejects.parquet").drop(["shard"]).to_pylist()
              for p, b in builds.items()}  # shard files are named after the dataset
    assert tables["resized"] == tables["original"] == tables["auto"]
    reasons = {r["reason"] for r in tables["resized"]}
    assert {"corrupt_image", "image_too_large", "missing_image"} <= reasons
    members = {p: _members(b) for p, b in builds.items()}
    for key, m in members["resized"].items():
        for policy in ("original", "auto"):
            for name in ("gt_masks.json", "masks.json", "prompt_masks.npy", "k.npy"):
                assert members[policy][key][name] == m[name]


def test_builds_of_every_policy_verify(builds):
    for build in builds.values():
        report = verify_build(build)
        assert report.ok, report.problems


def test_verify_catches_a_kept_source_of_the_wrong_size(builds, tmp_path):
    """A kept source whose size is not the json's is a problem, not a pass."""
    from sa2va_shards.verify import _check_image

    meta = {"image_store": "original", "height": 480, "width": 640}
    buf = io.BytesIO()
    Image.new("RGB", (640, 479)).save(buf, "JPEG")
    with pytest.raises(ValueError, match="kept source"):
        _check_image(buf.getvalue(), meta, SIZE, "k")
    buf = io.BytesIO()
    Image.new("RGB", (640, 480)).save(buf, "JPEG")
    _check_image(buf.getvalue(), meta, SIZE, "k")


def _pillow(src: bytes, size: tuple[int, int]) -> np.ndarray:
    """Sa2VA's pixels: the file opened, converted to RGB, Pillow bicubic to (w, h)."""
    img = Image.open(io.BytesIO(src)).convert("RGB")
    return np.asarray(img.resize(size, Image.Resampling.BICUBIC)).astype(np.int16)


def _levels(x: torch.Tensor) -> np.ndarray:
    std, mean = torch.tensor(IMAGENET_STD).view(3, 1, 1), torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    return ((x.double() * std + mean) * 255).permute(0, 2, 3, 1).numpy()


def _kept_batches(build, backend: str):
    cfg = LoaderConfig(gt_masks="none", image_size=SIZE, max_tiles=MAX, shuffle=False,
                       resize_backend=backend)
    for batch in ShardLoader(ShardDataset(build, cfg), batch_size=4, num_workers=0,
                             device="cpu"):
        for b, meta in enumerate(batch["meta"]):
            if meta["image_store"] == "original":
                yield batch, b, meta


@pytest.mark.parametrize("backend, tol", [("pillow", 0), ("torch", 2)])
def test_loader_images_are_one_pillow_resample_of_the_source(builds, raw, backend, tol):
    """SAM2 input, thumbnail and every tile vs Pillow bicubic from the original: identical
    with the Pillow backend, within torch's rounding (2 levels) with the torch one."""
    sources, seen = _sources(raw), 0
    for batch, b, meta in _kept_batches(builds["original"], backend):
        src = sources[batch["keys"][b]]
        w, h = meta["width"], meta["height"]
        sam = batch["g_pixel_values"][b].permute(1, 2, 0).numpy().astype(np.int16)
        assert np.abs(sam - _pillow(src, (SIZE, SIZE))).max() <= tol
        cols, rows = dynamic_grid(w, h, max_num=MAX)
        big = _pillow(src, (cols * 448, rows * 448))
        want = [big[r * 448:(r + 1) * 448, c * 448:(c + 1) * 448] for r in range(rows)
                for c in range(cols)] if cols * rows > 1 else []
        want.append(_pillow(src, (448, 448)))
        start = int(batch["num_tiles"][:b].sum())
        tiles = _levels(batch["tiles"][start:start + len(want)])
        assert np.abs(tiles - np.stack(want)).max() <= tol + 1e-3
        thumb = _levels(batch["pixel_values"][b:b + 1])[0]
        assert np.abs(thumb - want[-1]).max() <= tol + 1e-3
        seen += 1
    assert seen >= 10  # plain RGB JPEG sources


def test_loader_refuses_a_kept_source_of_the_wrong_size(builds):
    from sa2va_shards.errors import SampleError
    from sa2va_shards.loader.originals import decode_original

    buf = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buf, "JPEG")
    with pytest.raises(SampleError, match="inconsistent"):
        decode_original(buf.getvalue(), {"height": 48, "width": 65})
    with pytest.raises(SampleError, match="corrupt_image"):  # larger than declared: refused
        decode_original(buf.getvalue(), {"height": 10, "width": 10})
    with pytest.raises(SampleError, match="corrupt_image"):
        decode_original(b"\xff\xd8\xff\xe0junk", {"height": 48, "width": 64})


def test_inspect_renders_a_kept_source_at_the_sam2_size(builds, tmp_path):
    from sa2va_shards.viz import render_overlay

    key = next(k for k, m in _members(builds["original"]).items()
               if json.loads(m["json"])["image_store"] == "original")
    out = render_overlay(builds["original"], tmp_path / "o.png", key=key)
    assert Image.open(out).size[0] > 0


def test_the_policy_is_part_of_the_version(raw, tmp_path):
    from sa2va_shards.manifest import version_id

    ids = {version_id(make_config(raw, tmp_path, image={"store": p}), "fp", code="c", files="f")
           for p in POLICIES}
    assert len(ids) == 3
