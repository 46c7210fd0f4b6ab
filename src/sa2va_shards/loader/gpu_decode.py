"""Image decode on the training device (`LoaderConfig.image_decode`): nvJPEG through
torchvision when batches go to a CUDA device, instead of libjpeg in the DataLoader workers.

Workers then ship an image sample's JPEG bytes (a few hundred KB) instead of its decoded
pixels (3 MB at 1024), and the main process decodes the whole batch at once on the GPU and
makes what the worker would have made: the S x S SAM2 input and, for a kept source
(`image.store`), the 448 thumbnail and tile image, each one antialiased bicubic resample
(`batch.resize_images`: the float kernel rounded on CUDA, within 1 level of the CPU's). The
worker still checks each JPEG's header (its size must be what the json records), so a wrong
member is a counted skip as before; content damage is caught earlier by the sample's content
hash. Video frames are always decoded in the workers.

`auto` (the default) decodes on the device only when the loader moves batches to CUDA and
torchvision's `decode_jpeg` is importable; otherwise the CPU path is unchanged. `device`
forces the deferred path on any device: on the CPU it decodes with Pillow (`ops`), giving
exactly the worker path's pixels, which is how its plumbing is tested without a GPU.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from sa2va_shards import ops
from sa2va_shards.errors import SampleError
from sa2va_shards.loader.batch import resize_images
from sa2va_shards.ops.store import STORE_ORIGINAL

__all__ = ["decode_deferred", "defer_image", "torchvision_decode_jpeg", "wanted"]


def torchvision_decode_jpeg() -> Any:
    """torchvision's batched `decode_jpeg`, or None when torchvision is not installed."""
    try:
        from torchvision.io import decode_jpeg
    except ImportError:
        return None
    return decode_jpeg


def wanted(mode: str, device: torch.device | None) -> bool:
    """Whether image samples are decoded on the device under `LoaderConfig.image_decode`."""
    if mode == "device":
        return True
    return (mode == "auto" and device is not None and device.type == "cuda"
            and torchvision_decode_jpeg() is not None)


def defer_image(data: bytes, meta: dict, size: int) -> dict[str, Any]:
    """The worker's part: check the JPEG's header against the json (S x S, or the source's
    height x width for a kept source) and keep its bytes for the device."""
    original = meta.get("image_store") == STORE_ORIGINAL
    want = (int(meta["height"]), int(meta["width"])) if original else (size, size)
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
    except (OSError, ValueError, SyntaxError) as e:
        raise SampleError("corrupt_image", f"jpg: {type(e).__name__}: {e}") from e
    if fmt != "JPEG" or (h, w) != want:
        raise SampleError("inconsistent", f"jpg is a {w}x{h} {fmt}, expected a {want[1]}x{want[0]} "
                                    "JPEG")
    return {"data": torch.frombuffer(bytearray(data), dtype=torch.uint8), "original": original,
            "height": h, "width": w}


def _decode_all(records: list[dict], device: torch.device) -> list[torch.Tensor]:
    """(3, H, W) uint8 on `device` per record: nvJPEG in one batched call on CUDA, Pillow
    otherwise (and for any image nvJPEG refuses)."""
    decode_jpeg = torchvision_decode_jpeg() if device.type == "cuda" else None
    if decode_jpeg is not None:
        from torchvision.io import ImageReadMode

        try:
            return decode_jpeg([r["data"] for r in records], mode=ImageReadMode.RGB,
                               device=device)
        except RuntimeError:  # one image nvJPEG cannot do fails the batch: decode on the CPU
            pass
    out = []
    for r in records:
        a = ops.decode_image(r["data"].numpy().tobytes(), max_pixels=r["height"] * r["width"])
        out.append(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).to(device))
    return out


def decode_deferred(batch: dict[str, Any], device: torch.device | str, *, size: int,
                    tile: int) -> dict[str, Any]:
    """Decode a batch's deferred images on `device` and fill the fields the worker path fills:
    `g_pixel_values` (sum_T, 3, S, S) uint8, and for kept sources `thumb` / `tile_image` (HWC
    uint8 views, None elsewhere). `collate` put each sample's deferred record or decoded
    frames (T, S, S, 3) in `image_parts`; a batch without it is returned as it is."""
    if "image_parts" not in batch:
        return batch
    device = torch.device(device)
    parts = batch.pop("image_parts")
    records = [p for p in parts if isinstance(p, dict)]
    decoded = iter(_decode_all(records, device))
    frames = []
    thumbs, tiles = list(batch.get("thumb") or [None] * len(parts)), list(
        batch.get("tile_image") or [None] * len(parts))
    grids = batch.get("tile_grid")
    for i, part in enumerate(parts):
        if not isinstance(part, dict):  # decoded in the worker (a video clip)
            frames.append(part.permute(0, 3, 1, 2).to(device))
            continue
        x = next(decoded)[None]
        frames.append(resize_images(x, (size, size)) if x.shape[-2:] != (size, size) else x)
        if part["original"]:
            thumbs[i] = resize_images(x, (tile, tile))[0].permute(1, 2, 0)
            cols, rows = grids[i].tolist() if grids is not None else (1, 1)
            if cols * rows > 1:
                tiles[i] = resize_images(x, (rows * tile, cols * tile))[0].permute(1, 2, 0)
    batch["g_pixel_values"] = torch.cat(frames)
    if any(t is not None for t in thumbs):
        batch["thumb"], batch["tile_image"] = thumbs, tiles
    return batch
