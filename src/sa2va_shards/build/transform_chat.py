"""Conversation-only samples (LLaVA-665K, Chat-UniVi) -> processed samples with no objects.

The mask path (`build/transform.py`) rejects a sample without objects; a conversation-only reader
marks its samples (`meta["chat"]`) and they come here instead. The picture goes through the
same resize, JPEG and tile images as every other sample; the mask members are empty (no GT
masks, prompt masks of shape (0, G, G) / (T, 0, G, G), K of shape (0,) / (T, 0)). A pure-text
row (`meta["text_only"]`) is a sample of kind `text` with no picture member at all.
"""

from __future__ import annotations

import numpy as np

from sa2va_shards import ops
from sa2va_shards.build.transform import _meta, _tile_images
from sa2va_shards.config import BuildConfig
from sa2va_shards.errors import Reason, SampleError
from sa2va_shards.format import ProcessedSample, sample_key
from sa2va_shards.records import RawClip, RawSample

__all__ = ["is_chat_raw", "transform_chat"]


def is_chat_raw(raw: RawSample | RawClip) -> bool:
    """Whether a raw sample comes from a conversation-only reader."""
    return bool(raw.meta.get("chat"))


def _empty(t: int | None, grid: int) -> tuple[np.ndarray, np.ndarray]:
    lead = (0,) if t is None else (t, 0)
    return np.zeros((*lead, grid, grid), bool), np.zeros(lead, np.int32)


def _text(raw: RawSample, cfg: BuildConfig) -> ProcessedSample:
    prompt, k = _empty(None, cfg.vision.grid)
    out = {"height": 0, "width": 0, "objects": []}
    return ProcessedSample(key=sample_key(raw.source_id), jpegs=(), gt_rles=[], rles=[],
                           prompt_masks=prompt, k=k,
                           meta=_meta("text", raw.source_id, raw.meta, out, cfg))


def _image(raw: RawSample, cfg: BuildConfig) -> ProcessedSample:
    full = ops.decode_image(raw.image, max_pixels=cfg.image.max_pixels, name=raw.image_name)
    h, w = full.shape[:2]
    small = ops.resize_image(full[None], size=cfg.image.size,
                             interpolation=cfg.image.interpolation,
                             backend=cfg.image.resize_backend)[0]
    meta = _meta("image", raw.source_id, raw.meta, {"height": h, "width": w, "objects": []},
                 cfg)
    tiles = _tile_images(full, cfg, meta)
    prompt, k = _empty(None, cfg.vision.grid)
    return ProcessedSample(key=sample_key(raw.source_id),
                           jpegs=(ops.encode_jpeg(small, quality=cfg.image.jpeg_quality),),
                           gt_rles=[], rles=[], prompt_masks=prompt, k=k, meta=meta,
                           tile_jpegs=tiles)


def _clip(raw: RawClip, cfg: BuildConfig) -> ProcessedSample:
    t, h, w = raw.frames.shape[:3]
    if h * w > cfg.image.max_pixels:
        raise SampleError(Reason.IMAGE_TOO_LARGE,
                          f"frames {w}x{h} over max_pixels={cfg.image.max_pixels}")
    frames = ops.resize_image(raw.frames, size=cfg.image.size,
                              interpolation=cfg.image.interpolation,
                              backend=cfg.image.resize_backend)
    meta = {**raw.meta, "frame_indices": list(raw.frame_indices), "frames": int(t)}
    prompt, k = _empty(t, cfg.vision.grid)
    return ProcessedSample(
        key=sample_key(raw.source_id),
        jpegs=tuple(ops.encode_jpeg(f, quality=cfg.image.jpeg_quality) for f in frames),
        gt_rles=[[] for _ in range(t)], rles=[[] for _ in range(t)], prompt_masks=prompt,
        k=k, meta=_meta("video", raw.source_id, meta, {"height": h, "width": w, "objects": []},
                        cfg))


def transform_chat(raw: RawSample | RawClip, cfg: BuildConfig) -> ProcessedSample:
    """The processed sample of a conversation-only input (nothing is ever dropped from it).

    Raises:
        SampleError: `corrupt_image`, `image_too_large`.
    """
    if isinstance(raw, RawClip):
        return _clip(raw, cfg)
    return _text(raw, cfg) if raw.meta.get("text_only") else _image(raw, cfg)
