"""Image kernels: decode any Pillow mode to RGB, square resize, JPEG encode.

EXIF orientation is never applied: annotations are in stored-pixel coordinates and Sa2VA's
training code (`Image.open(...).convert('RGB')`) ignores EXIF too.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from sa2va_shards.errors import Reason, SampleError
from sa2va_shards.ops.fastjpeg import decode_rgb

__all__ = ["decode_image", "encode_jpeg", "encode_png", "resize_image", "to_rgb"]

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any Pillow image to (H, W, 3) uint8 RGB.

    Alpha is dropped (not composited), as `convert('RGB')` does. 16-bit grayscale is scaled to
    8 bits by its top byte instead of Pillow's clipping, which would turn most of a 16-bit image
    white; 32-bit integer ('I') images are treated as 16-bit when any value exceeds 255 (older
    Pillow opens 16-bit PNGs that way) and as 8-bit otherwise; float images are clipped.
    """
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        return np.repeat(_gray8(np.asarray(img), img.mode)[:, :, None], 3, axis=2)
    if img.mode == "F":
        gray = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def _gray8(a: np.ndarray, mode: str) -> np.ndarray:
    """16- or 32-bit integer grayscale -> uint8, a block of rows at a time: temporaries stay a
    few MB whatever the image size (a whole-image int64 copy was 8 bytes per pixel)."""
    sixteen = mode in _SIXTEEN_BIT or a.max(initial=0) > 255
    out = np.empty(a.shape, np.uint8)
    rows = max(1, (1 << 20) // max(a.shape[1], 1))
    for y in range(0, a.shape[0], rows):
        block = a[y:y + rows]
        if sixteen:  # the top byte; 'I' values outside 16 bits are clipped first
            block = np.clip(block, 0, 65535) >> 8 if block.dtype.itemsize > 2 else block >> 8
        out[y:y + rows] = np.clip(block, 0, 255)
    return out


def decode_image(data: bytes, *, max_pixels: int, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to (H, W, 3) uint8 RGB, checking the pixel budget first.

    Raises:
        SampleError: `corrupt_image` if Pillow cannot decode it, `image_too_large` above
            `max_pixels` (checked from the header, before any pixel is decoded).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise SampleError(
                    Reason.IMAGE_TOO_LARGE, f"{name}: {w}x{h} over max_pixels={max_pixels}"
                )
            fast = decode_rgb(data, img.format, img.mode, img.size)
            if fast is not None:  # Pillow's pixels, faster (ops/fastjpeg.py)
                return fast
            img.load()
        return to_rgb(img)
    except SampleError:
        raise
    except Image.UnidentifiedImageError as e:  # its message holds a memory address
        raise SampleError(Reason.CORRUPT_IMAGE, f"{name}: not a recognised image format") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise SampleError(Reason.CORRUPT_IMAGE, f"{name}: {type(e).__name__}: {e}") from e


_PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def resize_image(
    image: np.ndarray, *, size: int | tuple[int, int], interpolation: str = "bicubic",
    backend: str = "torch"
) -> np.ndarray:
    """Squash-resize (H, W, 3) uint8 (or a batch (T, H, W, 3) of video frames, in one call) to
    (size, size, 3), or (height, width, 3) for a `size` pair, with an antialiased kernel.

    `backend='pillow'` is Pillow itself. `backend='torch'` runs torch's uint8 antialiased
    interpolate, a port of Pillow's separable filter: bilinear is bit-identical; bicubic differs
    by rounding, at most 1 level when shrinking and 2 levels on ~1% of values when enlarging
    (under JPEG q95's own error); it is several times faster.
    """
    if image.ndim not in (3, 4) or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) or (T, H, W, 3) uint8, got {image.shape} "
                         f"{image.dtype}")
    if interpolation not in _PIL_FILTERS:
        raise ValueError(f"interpolation must be one of {sorted(_PIL_FILTERS)}")
    batch = image if image.ndim == 4 else image[None]
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if batch.shape[1:3] == hw:
        out = batch.copy()
    elif backend == "pillow":
        out = np.stack([np.asarray(Image.fromarray(f).resize((hw[1], hw[0]),
                                                             _PIL_FILTERS[interpolation]))
                        for f in batch])
    elif backend == "torch":
        out = _torch_resize(batch, hw, interpolation)
    else:
        raise ValueError(f"backend must be 'torch' or 'pillow', got {backend!r}")
    return out if image.ndim == 4 else out[0]


def _torch_resize(batch: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    with warnings.catch_warnings():  # read-only input (Pillow's buffer); interpolate never writes
        warnings.simplefilter("ignore", UserWarning)
        # (T, H, W, 3) memory is already NHWC: the permuted view is channels_last, no copy
        t = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
    out = F.interpolate(t, size=size, mode=interpolation, antialias=True,
                        align_corners=False)
    # the uint8 antialias kernel returns planar output; np.stack interleaves ~3x faster than
    # a permute + contiguous copy
    planar = out.numpy()
    result = np.empty((len(planar), *size, 3), np.uint8)
    for frame, planes in zip(result, planar, strict=True):
        np.stack(planes, axis=-1, out=frame)
    return result


def encode_jpeg(image: np.ndarray, *, quality: int) -> bytes:
    """Encode (H, W, 3) uint8 RGB as baseline JPEG (4:2:0, as Pillow's default)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    """Encode an (H, W) or (H, W, 3) uint8 array as PNG (used for overlays and 1-bit masks)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
