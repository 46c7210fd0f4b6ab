"""One raw sample (image or video clip) -> one processed sample: checks, K = 0 policy, resize,
pool, encode.

This is the only place that applies the build config's semantics to a sample. An image is a
clip of one frame: both go through `_process` with a frame axis, and images drop it at the end.
Masks stay COCO RLEs throughout: the prompt masks and the 1024 masks come from
`ops.rle_resize`, bit-identical to torch 'nearest' on the decoded masks, and full resolution is
never decoded (the GT masks are stored as the RLEs they already are). Deterministic.

Video semantics: an object may be absent from some frames (an empty mask there is normal, its
K is 0 and it is not flagged). An object empty in every frame is dropped (`empty_mask`). The
K = 0 policy looks at frames where the object is visible: `keep` flags objects never prompted
(K = 0 wherever visible); `drop_object` drops them; `drop_sample` rejects the clip;
`fallback_any` gives every visible frame with K = 0 its most-covered cell(s).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sa2va_shards import ops
from sa2va_shards.config import BuildConfig
from sa2va_shards.errors import Reason, SampleError
from sa2va_shards.format import SCHEMA_VERSION, THUMB, TILES, ProcessedSample, sample_key
from sa2va_shards.records import RawClip, RawSample

__all__ = ["DroppedObject", "sample_rles", "transform_sample"]


@dataclass(frozen=True, kw_only=True)
class DroppedObject:
    """An object removed from a written sample, recorded as an object-level reject."""

    object_id: str
    reason: Reason
    detail: str


@dataclass(frozen=True, kw_only=True)
class _Masks:
    """A sample's masks as RLEs, frame-major (t * n + i), with the derived per-(t, i) arrays."""

    rles: list[dict]
    n: int
    #: (T, n) pixels per mask.
    areas: np.ndarray
    #: (T, n, G, G) bool.
    prompt: np.ndarray
    runs: np.ndarray
    offsets: np.ndarray


def sample_rles(raw: RawSample) -> list[dict]:
    """The sample's masks as compressed RLEs (str counts): the reader's, or encoded once."""
    rles = raw.rles if raw.rles is not None else ops.rle_encode(raw.masks)
    return [_json_rle(r) for r in rles]


def _json_rle(r: dict) -> dict:
    counts = r["counts"]
    return {"size": [int(s) for s in r["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def _check_sizes(rles: list[dict], n_objects: int, h: int, w: int) -> None:
    for r in rles:
        if tuple(r["size"]) != (h, w):
            mh, mw = r["size"]
            raise SampleError(Reason.MASK_SIZE_MISMATCH,
                              f"masks are {mh}x{mw} (HxW) but the image is {h}x{w}",
                              stage="transform")
    if n_objects and len(rles) % n_objects or not n_objects and rles:
        raise ValueError(f"{n_objects} object records for {len(rles)} masks")
    if n_objects == 0:
        raise SampleError(Reason.NO_OBJECTS, "the sample has no annotated objects",
                          stage="transform")


def _masks(rles: list[dict], n: int, h: int, w: int, grid: int) -> _Masks:
    runs, offsets = ops.rle_to_runs(rles)  # parsed once for both resizes
    t = len(rles) // n
    prompt = ops.pool_runs(runs, offsets, height=h, width=w, grid=grid)
    return _Masks(rles=rles, n=n, areas=ops.runs_area(runs, offsets).reshape(t, n),
                  prompt=prompt.reshape(t, n, grid, grid), runs=runs, offsets=offsets)


def _dropped(objects: tuple[dict, ...], i: int, reason: Reason, detail: str) -> DroppedObject:
    return DroppedObject(object_id=str(objects[i].get("id", i)), reason=reason, detail=detail)


def _fallback(m: _Masks, zero: np.ndarray, h: int, w: int, grid: int) -> np.ndarray:
    """Prompt masks with the most-covered cell(s) set where `zero` (T, n); decodes only those
    masks (small objects, rare)."""
    flat = np.flatnonzero(zero.reshape(-1))
    prompt = m.prompt.reshape(-1, grid, grid).copy()
    masks = ops.rle_decode([m.rles[j] for j in flat], height=h, width=w)
    prompt[flat] = ops.fallback_any(masks, prompt[flat], grid=grid)
    return prompt.reshape(m.prompt.shape)


def _apply_k_zero(m: _Masks, objects: tuple[dict, ...], keep: np.ndarray, zero: np.ndarray,
                  never: np.ndarray, cfg: BuildConfig, h: int,
                  w: int) -> tuple[np.ndarray, np.ndarray, list[DroppedObject]]:
    """Apply `masks.k_zero` given `zero` (T, n: visible with K = 0) and `never` (n: objects
    never prompted); returns (prompt, keep, dropped), new arrays."""
    policy = cfg.masks.k_zero
    if policy == "keep" or not zero.any():
        return m.prompt, keep, []
    if policy == "fallback_any":
        return _fallback(m, zero, h, w, cfg.vision.grid), keep, []
    if not never.any():  # drop_* act on objects that never get a token
        return m.prompt, keep, []
    if policy == "drop_sample":
        ids = [str(objects[i].get("id", i)) for i in np.flatnonzero(never)]
        raise SampleError(Reason.K_ZERO, f"objects {ids} have K = 0", stage="transform")
    dropped = [_dropped(objects, i, Reason.K_ZERO, "no grid sample point hits the mask")
               for i in np.flatnonzero(never)]
    return m.prompt, keep & ~never, dropped


def _process(frames: np.ndarray, rles: list[dict], objects: tuple[dict, ...],
             cfg: BuildConfig) -> tuple[dict, list[DroppedObject]]:
    """The shared core: frames (T, H, W, 3), RLEs frame-major (T * n). Returns arrays and
    lists that all keep the frame axis, plus the dropped objects."""
    t, h, w = frames.shape[:3]
    n, grid, size = len(objects), cfg.vision.grid, cfg.image.size
    _check_sizes(rles, n, h, w)
    m = _masks(rles, n, h, w, grid)
    visible, k = m.areas > 0, ops.count_k(m.prompt)  # (T, n)
    keep = visible.any(axis=0)
    dropped = [_dropped(objects, i, Reason.EMPTY_MASK, "mask has no pixels")
               for i in np.flatnonzero(~keep)]
    zero = visible & (k == 0)  # visible in that frame, yet no grid point hits it
    never = keep & ~(visible & (k > 0)).any(axis=0)  # visible somewhere, never prompted
    prompt, keep, k_dropped = _apply_k_zero(m, objects, keep, zero, never, cfg, h, w)
    dropped += k_dropped
    if not keep.any():
        reasons = sorted({d.reason.value for d in dropped})
        raise SampleError(Reason.NO_OBJECTS, f"all {n} objects dropped ({', '.join(reasons)})",
                          stage="transform")
    idx = np.flatnonzero(keep)
    flat_idx = (np.arange(t)[:, None] * n + idx[None, :]).reshape(-1)
    kept = [rles[j] for j in flat_idx]
    rles = (ops.resize_runs(m.runs, m.offsets, height=h, width=w, size=size)
                 if len(kept) == len(rles) else ops.resize_rles(kept, height=h, width=w,
                                                                 size=size))
    images = ops.resize_image(frames, size=size, interpolation=cfg.image.interpolation,
                              backend=cfg.image.resize_backend)
    fallback = (zero & (ops.count_k(prompt) > 0)).any(axis=0)  # some frame got a fallback cell
    return {
        "jpegs": tuple(ops.encode_jpeg(f, quality=cfg.image.jpeg_quality) for f in images),
        "gt": [kept[i * len(idx):(i + 1) * len(idx)] for i in range(t)],
        "masks": [rles[i * len(idx):(i + 1) * len(idx)] for i in range(t)],
        "prompt": prompt[:, idx], "k": ops.count_k(prompt[:, idx]),
        "objects": [{**objects[i], "k_zero": bool(never[i] and not fallback[i]),
                     "k_fallback": bool(fallback[i])} for i in idx],
        "height": h, "width": w,
    }, dropped


def _meta(kind: str, source_id: str, meta: dict, out: dict, cfg: BuildConfig) -> dict:
    return {**meta, "schema": SCHEMA_VERSION, "kind": kind, "dataset": cfg.dataset,
            "source_id": source_id, "height": int(out["height"]), "width": int(out["width"]),
            "size": cfg.image.size, "grid": cfg.vision.grid, "objects": out["objects"]}


def transform_sample(raw: RawSample | RawClip,
                     cfg: BuildConfig) -> tuple[ProcessedSample, list[DroppedObject]]:
    """Check, pool and resize one raw image sample or video clip.

    Returns:
        The processed sample and the objects dropped from it (empty masks; K = 0 under
        `drop_object`).

    Raises:
        SampleError: `corrupt_image`, `image_too_large`, `mask_size_mismatch`, `no_objects`
            (none, or none left after drops), `k_zero` under `drop_sample`.
    """
    if isinstance(raw, RawClip):
        return _transform_clip(raw, cfg)
    full = ops.decode_image(raw.image, max_pixels=cfg.image.max_pixels, name=raw.image_name)
    out, dropped = _process(full[None], sample_rles(raw), raw.objects, cfg)
    meta = _meta("image", raw.source_id, raw.meta, out, cfg)
    tile_jpegs = _tile_images(full, cfg, meta)
    return ProcessedSample(
        key=sample_key(raw.source_id), jpegs=out["jpegs"], gt_rles=out["gt"][0],
        rles=out["masks"][0], prompt_masks=out["prompt"][0], k=out["k"][0],
        meta=meta, tile_jpegs=tile_jpegs), dropped


def _tile_images(full: np.ndarray, cfg: BuildConfig, meta: dict) -> dict[str, bytes]:
    """InternVL's inputs at full detail, each one resample from the original: the image at
    its dynamic grid (cols * 448 x rows * 448, cut into tiles by the loader) and the 448
    thumbnail. `meta["tiles"]` records the grid (None: a one-tile image, thumbnail only)."""
    if cfg.image.tiles < 2:
        return {}
    side, (h, w) = cfg.vision.image_size, full.shape[:2]
    grid = ops.dynamic_grid(w, h, max_num=cfg.image.tiles, image_size=side)
    opts = {"interpolation": "bicubic", "backend": cfg.image.resize_backend}
    out = {THUMB: ops.encode_jpeg(ops.resize_image(full, size=side, **opts),
                                        quality=cfg.image.jpeg_quality)}
    meta["tiles"] = {"max": cfg.image.tiles, "grid": list(grid)}
    if grid[0] * grid[1] > 1:
        big = ops.resize_image(full, size=(grid[1] * side, grid[0] * side), **opts)
        out[TILES] = ops.encode_jpeg(big, quality=cfg.image.jpeg_quality)
    return out


def _transform_clip(raw: RawClip, cfg: BuildConfig) -> tuple[ProcessedSample, list]:
    t, h, w = raw.frames.shape[:3]
    if h * w > cfg.image.max_pixels:
        raise SampleError(Reason.IMAGE_TOO_LARGE,
                          f"frames {w}x{h} over max_pixels={cfg.image.max_pixels}")
    rles = [_json_rle(r) for frame in raw.rles for r in frame]
    out, dropped = _process(raw.frames, rles, raw.objects, cfg)
    meta = {**raw.meta, "frame_indices": list(raw.frame_indices), "frames": int(t)}
    return ProcessedSample(
        key=sample_key(raw.source_id), jpegs=out["jpegs"], gt_rles=out["gt"],
        rles=out["masks"], prompt_masks=out["prompt"], k=out["k"],
        meta=_meta("video", raw.source_id, meta, out, cfg)), dropped
