"""The optional fast JPEG decode gives Pillow's pixels and changes no reject and no byte."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sa2va_shards import errors as ops_errors
from sa2va_shards import ops
from sa2va_shards.build.run import run_build
from sa2va_shards.ops import fastjpeg
from sa2va_shards.synth import common as _synth
from tests.helpers import make_config

pytestmark = pytest.mark.skipif(not fastjpeg.available(), reason="simplejpeg not installed")


def _jpegs() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    rgb = _synth.make_image(rng, 241, 319)  # odd sizes: partial MCUs, chroma edge upsampling
    out = []
    for name, mode, opts in [("420", "RGB", {}), ("444", "RGB", {"subsampling": 0}),
                             ("422", "RGB", {"subsampling": 1}),
                             ("progressive", "RGB", {"progressive": True}),
                             ("gray", "L", {}), ("cmyk", "CMYK", {}),
                             ("q50", "RGB", {"quality": 50})]:
        buf = io.BytesIO()
        Image.fromarray(rgb).convert(mode).save(buf, "JPEG", **{"quality": 90, **opts})
        out.append((name, buf.getvalue()))
    return out


@pytest.mark.parametrize("name,data", _jpegs())
def test_fast_decode_is_pillows_pixels(name, data):
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    img = Image.open(io.BytesIO(data))
    fast = fastjpeg.decode_rgb(data, img.format, img.mode, img.size)
    if name == "cmyk":
        assert fast is None  # Pillow's own CMYK conversion decides
    else:
        assert fast is not None and np.array_equal(fast, want)
    assert np.array_equal(ops.decode_image(data, max_pixels=1 << 20), want)


def test_damaged_streams_go_to_pillow():
    data = dict(_jpegs())["420"]
    cut = data[: len(data) // 2]  # truncated: libjpeg warns, so Pillow decides (a reject)
    img = Image.open(io.BytesIO(cut))
    assert fastjpeg.decode_rgb(cut, img.format, img.mode, img.size) is None
    with pytest.raises(ops_errors.SampleError, match="truncated"):
        ops.decode_image(cut, max_pixels=1 << 20)
    junk = data + b"\x00" * 64  # bytes after the end marker: ignored by both
    img = Image.open(io.BytesIO(junk))
    fast = fastjpeg.decode_rgb(junk, img.format, img.mode, img.size)
    assert fast is None or np.array_equal(fast, np.asarray(img.convert("RGB")))


def _build(raw, out, name):
    result = run_build(make_config(raw, out, dataset="fast", shards={"samples_per_shard": 8}),
                       runner="serial", progress=False)
    shards = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted((result.build_dir / "shards").glob("*.tar"))}
    return shards, pq.read_table(result.build_dir / "rejects.parquet").to_pylist()


def test_builds_are_byte_identical_with_and_without_it(synth, tmp_path, monkeypatch):
    raw = synth("coco", n_items=12, seed=7, faults=("corrupt_image", "random_bytes",
                                                   "zero_byte", "mode_cmyk", "exif_rotated"))
    fast = _build(raw, tmp_path / "a", "fast")
    monkeypatch.setattr(fastjpeg, "_simplejpeg", None)
    slow = _build(raw, tmp_path / "b", "slow")
    assert fast == slow
