"""Image kernels: any Pillow mode to RGB, antialiased resize parity with Pillow, pixel budget."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sa2va_shards import ops
from sa2va_shards.errors import Reason, SampleError


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], axis=2)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"),
                                      ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("1", "PNG"),
                                      ("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF")])
def test_decode_image_converts_every_mode_to_rgb_uint8(mode, fmt):
    rgb = _photo(31, 47)
    img = Image.fromarray(rgb)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
    elif mode in ("I", "F"):
        img = img.convert("L").convert(mode)
    elif mode != "RGB":
        img = img.convert(mode)
    out = ops.decode_image(_encode(img, fmt), max_pixels=10**6)
    assert out.shape == (31, 47, 3) and out.dtype == np.uint8
    # 16-bit scales by its top byte, not Pillow's clipping
    if mode in ("I;16", "L", "I", "F") and fmt != "JPEG":
        gray = np.asarray(Image.fromarray(rgb).convert("L"))
        assert np.abs(out[..., 0].astype(int) - gray).max() <= 8
        assert (out[..., 0] == out[..., 2]).all()


def test_rgba_alpha_is_dropped_not_composited():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent: compositing on white/black would change the colour
    out = ops.decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), max_pixels=100)
    assert (out[..., 0] == 200).all()


def test_exif_orientation_is_not_applied():
    img = Image.fromarray(_photo(20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert ops.decode_image(buf.getvalue(), max_pixels=10**6).shape == (20, 40, 3)


def test_decode_image_rejects_corrupt_and_oversized_images_with_reasons():
    good = _encode(Image.fromarray(_photo(64, 64)), "JPEG")
    with pytest.raises(SampleError) as e:
        ops.decode_image(good[:200], max_pixels=10**6)
    assert e.value.reason == Reason.CORRUPT_IMAGE
    with pytest.raises(SampleError) as e:
        ops.decode_image(b"not an image", max_pixels=10**6)
    assert e.value.reason == Reason.CORRUPT_IMAGE and "0x" not in e.value.detail
    with pytest.raises(SampleError) as e:
        ops.decode_image(good, max_pixels=64 * 64 - 1)
    assert e.value.reason == Reason.IMAGE_TOO_LARGE


@pytest.mark.parametrize("h,w", [(480, 640), (1536, 2048), (17, 11), (1024, 1024), (700, 301)])
def test_torch_bilinear_resize_is_bit_identical_to_pillow(h, w):
    img = _photo(h, w)
    torch_out = ops.resize_image(img, size=1024, interpolation="bilinear", backend="torch")
    pil_out = ops.resize_image(img, size=1024, interpolation="bilinear", backend="pillow")
    np.testing.assert_array_equal(torch_out, pil_out)


@pytest.mark.parametrize("h,w", [(480, 640), (1536, 2048), (17, 11), (700, 301)])
def test_torch_bicubic_resize_is_within_two_levels_of_pillow(h, w):
    img = _photo(h, w)
    torch_out = ops.resize_image(img, size=1024, backend="torch").astype(int)
    pil_out = np.asarray(Image.fromarray(img).resize((1024, 1024), Image.Resampling.BICUBIC))
    diff = np.abs(torch_out - pil_out)
    # rounding differences: <= 1 level when shrinking, <= 2 on ~1% of values when enlarging
    assert diff.max() <= 2 and (diff > 0).mean() < 0.02


def test_resize_image_does_not_mutate_input():
    img = _photo(50, 70)
    img.flags.writeable = False
    out = ops.resize_image(img, size=64)
    assert out.shape == (64, 64, 3) and out.flags.writeable
