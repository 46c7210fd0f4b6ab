"""The batch: `collate` builds it in the workers, `to_device` makes the model inputs on the device.

Workers ship the 1024 uint8 image and bit-packed masks, never float tensors; `to_device` moves
them (through pinned memory on CUDA) and makes, in batch on the device: the 448 thumbnail
(antialiased bicubic from the 1024 image, ImageNet-normalised), InternVL's dynamic tiles when
asked, and bool masks. Everything here also runs on CPU.

Deviation to know: Sa2VA resizes the original image straight to 448; here the 448 thumbnail is
resized from the stored 1024 squash (both are squashes of the same image, so geometry is
identical, but pixel values differ by a second resampling, as in the seed team's pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from sa2va_shards.config import VisionConfig
from sa2va_shards.ops.tiles import dynamic_grid, tile_count

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TensorList",
    "collate",
    "dynamic_grid",
    "make_tiles",
    "normalize_images",
    "resize_images",
    "tile_count",
    "to_device",
    "unpack_masks",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize of (N, 3, H, W) uint8 to (N, 3, h, w) uint8.

    On CPU the uint8 kernel runs (a port of Pillow's filter, fast); elsewhere the float kernel,
    rounded and clamped, so both give the 8-bit levels Pillow's BICUBIC would (within 1).
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be (N, 3, H, W) uint8, got {images.dtype} {images.shape}")
    if images.device.type == "cpu":
        x = images.contiguous(memory_format=torch.channels_last)
        return F.interpolate(x, size=size, mode="bicubic", antialias=True)
    x = F.interpolate(images.float(), size=size, mode="bicubic", antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def normalize_images(x: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, 3, H, W) 0..255 levels (uint8 or float) -> ImageNet-normalised `dtype`, i.e.
    ToTensor then Normalize(mean, std), in one fused pass: x * 1/(255 std) - mean/std."""
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return torch.addcmul(-mean / std, x, 1.0 / (255.0 * std)).to(dtype)


def make_tiles(images: torch.Tensor, thumbs: torch.Tensor, grids: torch.Tensor,
               frames: torch.Tensor, *, tile: int,
               stored: Sequence[torch.Tensor | None] = ()) -> torch.Tensor:
    """InternVL tiles for a batch: per sample its row-major crops then the thumbnail.

    Args:
        images: (sum_T, 3, S, S) uint8 on the device.
        thumbs: (sum_T, 3, tile, tile) normalised thumbnails (reused as the thumbnail tile).
        grids: (B, 2) (columns, rows); (1, 1) means the thumbnail only (videos: one per frame).
        frames: (B,) frames per sample.
        tile: the tile side (448).
        stored: per sample, the build's full-detail image at its grid ((rows * tile,
            cols * tile, 3) uint8, `image.tiles`) or None: crops are cut from it unresampled
            instead of from the S x S image.

    Returns:
        (sum of tile counts, 3, tile, tile) normalised, samples in batch order.
    """
    starts = torch.cumsum(frames, 0) - frames
    per_sample: list[torch.Tensor | None] = [None] * len(grids)
    for cols, rows in {tuple(g) for g in grids.tolist()}:
        sel = [i for i, g in enumerate(grids.tolist()) if tuple(g) == (cols, rows)]
        if cols * rows == 1:
            for i in sel:
                per_sample[i] = thumbs[int(starts[i]):int(starts[i] + frames[i])]
            continue
        first = starts[sel]  # tiled samples are images: one frame each
        big = torch.empty((len(sel), 3, tile * rows, tile * cols), dtype=torch.uint8,
                          device=images.device)
        kept = [j for j, i in enumerate(sel) if i < len(stored) and stored[i] is not None]
        resize = [j for j in range(len(sel)) if j not in kept]
        if resize:  # only samples without the build's full-detail image are resampled
            big[resize] = resize_images(images[first[resize]], (tile * rows, tile * cols))
        for j in kept:
            big[j] = stored[sel[j]].permute(2, 0, 1)
        big = normalize_images(big, dtype=thumbs.dtype)
        crops = big.unflatten(2, (rows, tile)).unflatten(4, (cols, tile))  # m,3,r,t,c,t
        crops = crops.permute(0, 2, 4, 1, 3, 5).reshape(len(sel), rows * cols, 3, tile, tile)
        for j, i in enumerate(sel):
            per_sample[i] = torch.cat([crops[j], thumbs[int(starts[i])][None]])
    return torch.cat(per_sample)  # type: ignore[arg-type]


def unpack_masks(packed: torch.Tensor, *, height: int) -> torch.Tensor:
    """Bit-packed (..., W, ceil(H/8)) uint8 (bits along H, numpy's big-endian order) ->
    (..., H, W) bool on packed's device (a transposed view: the bits are stored per column).

    One table lookup (`embedding` of each byte's 8 bits) instead of shift-and-mask passes.
    """
    table = _BIT_TABLE.to(packed.device)
    bits = F.embedding(packed.long(), table)  # (..., W, nb, 8) uint8
    bits = bits.flatten(-2)[..., :height]
    return bits.transpose(-1, -2).view(torch.bool)


#: byte value -> its 8 bits, most significant first (np.packbits' default order).
_BIT_TABLE = ((torch.arange(256).view(256, 1) >> torch.arange(7, -1, -1)) & 1).to(torch.uint8)


def _thumbnails(out: dict[str, Any], side: int, dtype: torch.dtype) -> torch.Tensor:
    """(sum_T, 3, side, side) normalised thumbnails, one per image or frame: a sample's own
    full-detail thumbnail where it has one (`image.tiles`, or a kept source's one-resample
    view), else its S x S image resized; only the latter are resized."""
    images = out["g_pixel_values"]
    starts = (torch.cumsum(out["frames_per_sample"], 0) - out["frames_per_sample"]).tolist()
    stored = {start: thumb for start, thumb in zip(starts, out.get("thumb") or (), strict=False)
              if thumb is not None}
    own = [j for j in range(len(images)) if j not in stored]
    thumbs = torch.empty((len(images), 3, side, side), dtype=dtype, device=images.device)
    if own:
        thumbs[own] = normalize_images(resize_images(images[own], (side, side)), dtype=dtype)
    for start, thumb in stored.items():
        thumbs[start] = normalize_images(thumb.permute(2, 0, 1)[None], dtype=dtype)[0]
    return thumbs


def _move(value: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(value, torch.Tensor):
        if device.type == "cuda" and not value.is_pinned():
            value = value.pin_memory()  # async H2D copies need page-locked memory
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, list) and any(isinstance(v, torch.Tensor) for v in value):
        return [_move(v, device, non_blocking) for v in value]
    return value


def _unpack_all(out: dict[str, Any]) -> None:
    if not out.get("gt_packed"):
        return
    if "image_masks" in out:
        side = out["g_pixel_values"].shape[-1]
        out["image_masks"] = [unpack_masks(m, height=side) for m in out["image_masks"]]
    if "gt_masks" in out:
        heights = out["orig_size"][:, 0].tolist()
        out["gt_masks"] = [unpack_masks(m, height=int(h))
                           for m, h in zip(out["gt_masks"], heights, strict=True)]
    out["gt_packed"] = False


def to_device(batch: dict[str, Any], device: str | torch.device = "cpu", *,
              vision: VisionConfig | None = None, dtype: torch.dtype = torch.float32,
              non_blocking: bool = True) -> dict[str, Any]:
    """Move a collated uint8 batch to `device` and build the model inputs there.

    Adds `pixel_values` (sum_T, 3, 448, 448) ImageNet-normalised thumbnails (one per image or
    frame) and, when the batch has `tile_grid`, `tiles` (sum num_tiles, 3, 448, 448) in
    Sa2VA's order (crops, then the thumbnail). Unpacks GT masks to bool (n, H, W) (views
    transposed from the column-major bits). `g_pixel_values` stays uint8 (SAM2 normalises it
    in the model, as Sa2VA does).

    Args:
        batch: output of `collate`.
        device: target device.
        vision: InternVL geometry (tile side); default `VisionConfig()`.
        dtype: float dtype of `pixel_values` / `tiles`.
        non_blocking: async copies (from pinned memory) on CUDA.

    Returns:
        A new dict; the input batch is not modified.
    """
    vision = vision or VisionConfig()
    device = torch.device(device)
    out = {k: _move(v, device, non_blocking) for k, v in batch.items()}
    side = vision.image_size
    images = out["g_pixel_values"]
    out["pixel_values"] = _thumbnails(out, side, dtype)
    if "tile_grid" in out:
        out["tiles"] = make_tiles(images, out["pixel_values"], out["tile_grid"].cpu(),
                                  out["frames_per_sample"].cpu(), tile=side,
                                  stored=out.get("tile_image") or ())
    _unpack_all(out)
    return out


class TensorList(list):
    """A list of tensors that crosses process boundaries as ONE shared tensor.

    A DataLoader worker sends every tensor as its own shared-memory segment and file
    descriptor, and per-object fields would need several per sample. Pickled, this list
    becomes one flat tensor (allocated in shared memory) plus the shapes, and unpickles as a
    plain list of views into it.
    """

    def __reduce__(self) -> tuple:
        if not self or len({t.dtype for t in self}) != 1:
            return list, (list(self),)
        total = sum(t.numel() for t in self)
        flat = torch.empty(total, dtype=self[0].dtype).share_memory_()
        torch.cat([t.reshape(-1) for t in self], out=flat)
        return _views, (flat, [tuple(t.shape) for t in self])


def _views(flat: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    sizes = [int(np.prod(s)) for s in shapes]
    return [part.view(shape) for part, shape in zip(flat.split(sizes), shapes, strict=True)]


_TENSOR_FIELDS = ("prompt_masks", "k", "image_masks", "gt_masks")
_LIST_FIELDS = (*_TENSOR_FIELDS, "conversation", "task", "kind", "objects", "object_index",
                "source", "texts", "meta")
#: per-sample full-detail images (`image.tiles`), None where the build has none.
_OPTIONAL_FIELDS = ("tile_image", "thumb")


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: the 1024 frames stacked (shared memory in workers), per-sample lists
    for variable-size fields, progress and stats for the consumer. Stats-only markers (a
    worker's tail report) are folded in; a batch can therefore hold 0 samples
    (`batch_size` 0), which `ShardLoader` swallows after `observe`.

    Keys: `g_pixel_values` (sum_T, 3, S, S) uint8 (channels_last strides),
    `frames_per_sample` (B,), `prompt_masks` [(n, G, G) bool], `k` [(n,) int64],
    `image_masks` / `gt_masks` [packed uint8 or (n, H, W) uint8], `orig_size` (B, 2) (H, W),
    `num_tiles` (B,), `tile_grid` (B, 2) (columns, rows) when tiling, `conversation`
    [[{input, output}]], `task`, `kind`, `objects`, `object_index`, `source`, `texts`,
    `meta`, `keys`, `urls`, `gt_packed`, `batch_size`, `__progress__` (B,) (each sample's
    position in the epoch's plan), `__done__` (positions the worker skipped since its last
    batch), `__skipped__` [(reason, detail, corrupt)] reported by the worker.
    """
    skipped = [x for s in samples for x in s.get("__skipped__") or ()]
    done = [p for s in samples for p in s.get("__done__") or ()]
    real = [s for s in samples if "image" in s]
    batch: dict[str, Any] = {"__skipped__": skipped, "__done__": done, "batch_size": len(real),
                             "__progress__": torch.tensor([s["__progress__"] for s in real],
                                                          dtype=torch.long).reshape(-1)}
    if not real:
        return batch
    if any("deferred" in s for s in real):  # decoded on the device (gpu_decode.py)
        batch["image_parts"] = [s.get("deferred", s["image"]) for s in real]
    else:
        hwc = default_collate([f for s in real for f in s["image"]])  # (sum_T, S, S, 3)
        batch["g_pixel_values"] = hwc.permute(0, 3, 1, 2)
    batch["frames_per_sample"] = torch.tensor([len(s["image"]) for s in real])
    batch["orig_size"] = torch.tensor([[int(s["meta"].get("height", 0)),
                                        int(s["meta"].get("width", 0))] for s in real])
    batch["num_tiles"] = torch.tensor([s["num_tiles"] for s in real])
    if any("tile_grid" in s for s in real):
        batch["tile_grid"] = torch.tensor([s.get("tile_grid", (1, 1)) for s in real])
    for name in _LIST_FIELDS:  # variable sizes: per-sample lists, as Sa2VA's collate
        if name in real[0]:
            batch[name] = [s[name] for s in real]
            if name in _TENSOR_FIELDS:
                batch[name] = TensorList(batch[name])
    if any(s.get(name) is not None for s in real for name in _OPTIONAL_FIELDS):
        for name in _OPTIONAL_FIELDS:
            batch[name] = [s.get(name) for s in real]
    batch["keys"], batch["urls"] = [s["__key__"] for s in real], [s["__url__"] for s in real]
    batch["gt_packed"] = real[0]["gt_packed"]
    return batch
