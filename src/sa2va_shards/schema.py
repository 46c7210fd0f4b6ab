"""What one sample looks like inside a shard: member names and encodings (pure, no I/O).

Every member decodes with stock tools and no pickle: JPEG, JSON and `.npy` (allow_pickle off).
See the schema table in README.md.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MEMBERS",
    "SCHEMA_VERSION",
    "ProcessedSample",
    "decode_npy",
    "decode_sample_json",
    "encode_npy",
    "encode_sample",
    "sample_key",
]

#: Bumped whenever member names, encodings or semantics change; part of every version hash.
SCHEMA_VERSION = 1

#: member suffix -> what it holds (image samples).
MEMBERS: dict[str, str] = {
    "jpg": "(S, S, 3) RGB image resized to S=1024, JPEG",
    "json": "metadata: source id, original size, objects (id, category, bbox, text), dataset",
    "gt_masks.json": "full-resolution GT masks, list of COCO compressed RLE {size, counts}",
    "masks_1024.json": "(n, S, S) masks resized with torch 'nearest', COCO compressed RLE",
    "prompt_masks.npy": "(n, G, G) bool prompt masks on the G=16 vision-token grid",
    "k.npy": "(n,) int32: K, set cells per object = <IMG_CONTEXT> tokens in its <vp>",
}

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sample_key(source_id: str) -> str:
    """A stable tar key for a source id: letters, digits, '_' and '-' only (never a dot)."""
    return _KEY_UNSAFE.sub("_", source_id)


@dataclass(frozen=True, kw_only=True)
class ProcessedSample:
    """A sample after the kernels, ready to encode."""

    key: str
    #: (S, S, 3) uint8.
    image: np.ndarray
    #: full-resolution GT masks as compressed RLE (str counts).
    gt_rles: list[dict]
    #: 1024 masks as compressed RLE (str counts).
    rles_1024: list[dict]
    #: (n, G, G) bool.
    prompt_masks: np.ndarray
    #: (n,) int.
    k: np.ndarray
    #: the metadata JSON.
    meta: dict[str, Any]
    #: encoded image (filled by `encode_sample`'s caller so hashing sees the exact bytes).
    jpeg: bytes


def encode_npy(a: np.ndarray) -> bytes:
    """`np.save` bytes (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    """Inverse of `encode_npy`; refuses object arrays."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_sample_json(data: bytes) -> Any:
    """Parse a `.json` member."""
    return json.loads(data.decode("utf-8"))


def _json_bytes(obj: Any) -> bytes:
    # sort_keys + fixed separators: the same sample always gives the same bytes. Text from raw
    # annotations may hold unpaired surrogates (valid in JSON escapes, not in UTF-8): they
    # become '?' so every member is valid UTF-8; control characters are JSON-escaped.
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", errors="replace")


def encode_sample(s: ProcessedSample) -> dict[str, bytes]:
    """Member name -> bytes for one sample (deterministic)."""
    return {
        "jpg": s.jpeg,
        "json": _json_bytes(s.meta),
        "gt_masks.json": _json_bytes(s.gt_rles),
        "masks_1024.json": _json_bytes(s.rles_1024),
        "prompt_masks.npy": encode_npy(np.ascontiguousarray(s.prompt_masks, dtype=bool)),
        "k.npy": encode_npy(np.asarray(s.k, dtype=np.int32)),
    }
