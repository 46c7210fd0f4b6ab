"""One raw sample -> one processed sample: checks, K = 0 policy, resize, pool, encode.

This is the only place that applies the build config's semantics to a sample. Everything here
is deterministic: the same raw sample and config give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from sa2va_shards import ops
from sa2va_shards.config import BuildConfig
from sa2va_shards.errors import Reason, SampleError
from sa2va_shards.records import RawSample
from sa2va_shards.schema import SCHEMA_VERSION, ProcessedSample, sample_key

__all__ = ["DroppedObject", "transform_sample"]


@dataclass(frozen=True, kw_only=True)
class DroppedObject:
    """An object removed from a written sample, recorded as an object-level reject."""

    object_id: str
    reason: Reason
    detail: str


def _areas(raw: RawSample) -> np.ndarray:
    if raw.rles is not None:  # area from the RLE runs, no pass over the pixels
        return mask_utils.area(list(raw.rles)).astype(np.int64)
    return np.count_nonzero(raw.masks.reshape(len(raw.masks), -1), axis=1)


def _check_sizes(raw: RawSample, image: np.ndarray) -> None:
    h, w = image.shape[:2]
    if raw.masks.shape[1:] != (h, w):
        mh, mw = raw.masks.shape[1:]
        raise SampleError(
            Reason.MASK_SIZE_MISMATCH,
            f"masks are {mh}x{mw} (HxW) but the image is {h}x{w}",
            stage="transform",
        )
    if len(raw.objects) != len(raw.masks):
        raise ValueError(f"{len(raw.objects)} object records for {len(raw.masks)} masks")


def _apply_k_zero(
    raw: RawSample, prompt: np.ndarray, k: np.ndarray, keep: np.ndarray, cfg: BuildConfig
) -> tuple[np.ndarray, np.ndarray, list[DroppedObject]]:
    """Apply `masks.k_zero` to objects that have pixels but no grid cell; returns new arrays."""
    policy, zero = cfg.masks.k_zero, keep & (k == 0)
    dropped: list[DroppedObject] = []
    if not zero.any() or policy == "keep":
        return prompt, keep, dropped
    if policy == "drop_sample":
        ids = [str(raw.objects[i].get("id", i)) for i in np.flatnonzero(zero)]
        raise SampleError(Reason.K_ZERO, f"objects {ids} have K = 0", stage="transform")
    if policy == "fallback_any":
        grid = cfg.vision.grid
        prompt = prompt.copy()
        prompt[zero] = ops.fallback_any(raw.masks[zero], prompt[zero], grid=grid)
        return prompt, keep, dropped
    for i in np.flatnonzero(zero):  # drop_object
        dropped.append(_dropped(raw, i, Reason.K_ZERO, "no grid sample point hits the mask"))
    return prompt, keep & ~zero, dropped


def _dropped(raw: RawSample, i: int, reason: Reason, detail: str) -> DroppedObject:
    return DroppedObject(object_id=str(raw.objects[i].get("id", i)), reason=reason, detail=detail)


def _meta(raw: RawSample, cfg: BuildConfig, image: np.ndarray, keep: np.ndarray,
          k0: np.ndarray, fallback: np.ndarray) -> dict:
    h, w = image.shape[:2]
    objects = [
        {**raw.objects[i], "k_zero": bool(k0[i]), "k_fallback": bool(fallback[i])}
        for i in np.flatnonzero(keep)
    ]
    return {
        **raw.meta,
        "schema": SCHEMA_VERSION,
        "dataset": cfg.dataset,
        "source_id": raw.source_id,
        "height": int(h),
        "width": int(w),
        "size": cfg.image.size,
        "grid": cfg.vision.grid,
        "objects": objects,
    }


def transform_sample(
    raw: RawSample, cfg: BuildConfig
) -> tuple[ProcessedSample, list[DroppedObject]]:
    """Check, pool and resize one raw sample.

    Returns:
        The processed sample and the objects dropped from it (empty masks; K = 0 under
        `drop_object`).

    Raises:
        SampleError: `corrupt_image`, `image_too_large`, `mask_size_mismatch`, `no_objects` (none, or none left after drops),
            `k_zero` under `drop_sample`.
    """
    full = ops.decode_image(raw.image, max_pixels=cfg.image.max_pixels, name=raw.image_name)
    _check_sizes(raw, full)
    if len(raw.masks) == 0:
        raise SampleError(Reason.NO_OBJECTS, "the image has no annotated objects", stage="transform")
    grid, size = cfg.vision.grid, cfg.image.size
    areas = _areas(raw)
    keep = areas > 0
    dropped = [_dropped(raw, i, Reason.EMPTY_MASK, "mask has no pixels")
               for i in np.flatnonzero(~keep)]
    prompt = ops.pool_masks(raw.masks, grid=grid)
    k0 = keep & (ops.count_k(prompt) == 0)
    prompt, keep, k_dropped = _apply_k_zero(raw, prompt, ops.count_k(prompt), keep, cfg)
    dropped += k_dropped
    if not keep.any():
        reasons = sorted({d.reason.value for d in dropped})
        raise SampleError(Reason.NO_OBJECTS, f"all {len(keep)} objects dropped ({', '.join(reasons)})",
                          stage="transform")
    fallback = k0 & (ops.count_k(prompt) > 0)
    idx = np.flatnonzero(keep)
    # resize first, select after: a full-resolution selection would copy every kept mask
    masks_1024 = ops.select_masks(ops.resize_masks(raw.masks, size=size), idx)
    if raw.rles is not None:
        gt_rles = [raw.rles[i] for i in idx]
    else:
        gt_rles = ops.rle_encode(ops.select_masks(raw.masks, idx))
    image = ops.resize_image(full, size=size, interpolation=cfg.image.interpolation,
                             backend=cfg.image.resize_backend)
    sample = ProcessedSample(
        key=sample_key(raw.source_id),
        image=image,
        gt_rles=[_json_rle(r) for r in gt_rles],
        rles_1024=ops.rle_encode(masks_1024),
        prompt_masks=prompt[idx],
        k=ops.count_k(prompt[idx]),
        meta=_meta(raw, cfg, full, keep, k0, fallback),
        jpeg=ops.encode_jpeg(image, quality=cfg.image.jpeg_quality),
    )
    return sample, dropped


def _json_rle(r: dict) -> dict:
    counts = r["counts"]
    return {"size": [int(s) for s in r["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
