"""One raw sample -> one processed sample: checks, K = 0 policy, resize, pool, encode.

This is the only place that applies the build config's semantics to a sample. Masks stay COCO
RLEs throughout: the prompt masks and the 1024 masks come from `ops.rle_resize`, which is
bit-identical to torch 'nearest' on the decoded masks and never decodes full resolution (the
GT masks are stored as the RLEs they already are). Deterministic: same input, same bytes.
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

__all__ = ["DroppedObject", "sample_rles", "transform_sample"]


@dataclass(frozen=True, kw_only=True)
class DroppedObject:
    """An object removed from a written sample, recorded as an object-level reject."""

    object_id: str
    reason: Reason
    detail: str


def sample_rles(raw: RawSample) -> list[dict]:
    """The sample's masks as compressed RLEs (str counts): the reader's, or encoded once."""
    rles = raw.rles if raw.rles is not None else ops.rle_encode(raw.masks)
    return [_json_rle(r) for r in rles]


def _json_rle(r: dict) -> dict:
    counts = r["counts"]
    return {"size": [int(s) for s in r["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def _check_sizes(raw: RawSample, rles: list[dict], image: np.ndarray) -> None:
    h, w = image.shape[:2]
    for r in rles:
        if tuple(r["size"]) != (h, w):
            mh, mw = r["size"]
            raise SampleError(Reason.MASK_SIZE_MISMATCH,
                              f"masks are {mh}x{mw} (HxW) but the image is {h}x{w}",
                              stage="transform")
    if len(raw.objects) != len(rles):
        raise ValueError(f"{len(raw.objects)} object records for {len(rles)} masks")


def _dropped(raw: RawSample, i: int, reason: Reason, detail: str) -> DroppedObject:
    return DroppedObject(object_id=str(raw.objects[i].get("id", i)), reason=reason, detail=detail)


def _apply_k_zero(raw: RawSample, rles: list[dict], prompt: np.ndarray, keep: np.ndarray,
                  cfg: BuildConfig) -> tuple[np.ndarray, np.ndarray, list[DroppedObject]]:
    """Apply `masks.k_zero` to objects that have pixels but no grid cell; returns new arrays."""
    policy, zero = cfg.masks.k_zero, keep & (ops.count_k(prompt) == 0)
    if not zero.any() or policy == "keep":
        return prompt, keep, []
    idx = np.flatnonzero(zero)
    if policy == "drop_sample":
        ids = [str(raw.objects[i].get("id", i)) for i in idx]
        raise SampleError(Reason.K_ZERO, f"objects {ids} have K = 0", stage="transform")
    if policy == "fallback_any":  # decodes only the K = 0 masks (small objects, rare)
        masks = ops.rle_decode([rles[i] for i in idx], height=rles[0]["size"][0],
                               width=rles[0]["size"][1])
        prompt = prompt.copy()
        prompt[idx] = ops.fallback_any(masks, prompt[idx], grid=cfg.vision.grid)
        return prompt, keep, []
    dropped = [_dropped(raw, i, Reason.K_ZERO, "no grid sample point hits the mask") for i in idx]
    return prompt, keep & ~zero, dropped


def _meta(raw: RawSample, cfg: BuildConfig, image: np.ndarray, keep: np.ndarray,
          k0: np.ndarray, fallback: np.ndarray) -> dict:
    h, w = image.shape[:2]
    objects = [{**raw.objects[i], "k_zero": bool(k0[i]), "k_fallback": bool(fallback[i])}
               for i in np.flatnonzero(keep)]
    return {**raw.meta, "schema": SCHEMA_VERSION, "dataset": cfg.dataset,
            "source_id": raw.source_id, "height": int(h), "width": int(w),
            "size": cfg.image.size, "grid": cfg.vision.grid, "objects": objects}


def transform_sample(
    raw: RawSample, cfg: BuildConfig
) -> tuple[ProcessedSample, list[DroppedObject]]:
    """Check, pool and resize one raw sample.

    Returns:
        The processed sample and the objects dropped from it (empty masks; K = 0 under
        `drop_object`).

    Raises:
        SampleError: `corrupt_image`, `image_too_large`, `mask_size_mismatch`, `no_objects`
            (none, or none left after drops), `k_zero` under `drop_sample`.
    """
    full = ops.decode_image(raw.image, max_pixels=cfg.image.max_pixels, name=raw.image_name)
    rles = sample_rles(raw)
    _check_sizes(raw, rles, full)
    if not rles:
        raise SampleError(Reason.NO_OBJECTS, "the image has no annotated objects",
                          stage="transform")
    h, w, grid = full.shape[0], full.shape[1], cfg.vision.grid
    keep = mask_utils.area(rles) > 0
    dropped = [_dropped(raw, i, Reason.EMPTY_MASK, "mask has no pixels")
               for i in np.flatnonzero(~keep)]
    runs, offsets = ops.rle_to_runs(rles)  # parsed once for both resizes
    prompt = ops.pool_runs(runs, offsets, height=h, width=w, grid=grid)
    k0 = keep & (ops.count_k(prompt) == 0)
    prompt, keep, k_dropped = _apply_k_zero(raw, rles, prompt, keep, cfg)
    dropped += k_dropped
    if not keep.any():
        reasons = sorted({d.reason.value for d in dropped})
        raise SampleError(Reason.NO_OBJECTS,
                          f"all {len(keep)} objects dropped ({', '.join(reasons)})",
                          stage="transform")
    idx = np.flatnonzero(keep)
    kept = [rles[i] for i in idx]
    image = ops.resize_image(full, size=cfg.image.size, interpolation=cfg.image.interpolation,
                             backend=cfg.image.resize_backend)
    sample = ProcessedSample(
        key=sample_key(raw.source_id),
        image=image,
        gt_rles=kept,
        rles_1024=(ops.resize_runs(runs, offsets, height=h, width=w, size=cfg.image.size)
                   if len(kept) == len(rles) else
                   ops.resize_rles(kept, height=h, width=w, size=cfg.image.size)),
        prompt_masks=prompt[idx],
        k=ops.count_k(prompt[idx]),
        meta=_meta(raw, cfg, full, keep, k0, k0 & (ops.count_k(prompt) > 0)),
        jpeg=ops.encode_jpeg(image, quality=cfg.image.jpeg_quality),
    )
    return sample, dropped
