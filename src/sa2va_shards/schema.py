"""What one sample looks like inside a shard: member names and encodings (pure, no I/O).

Every member decodes with stock tools and no pickle: JPEG, JSON and `.npy` (allow_pickle off).
The schema table (members, shapes, meaning) is in README.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FRAME_MEMBER",
    "SCHEMA_VERSION",
    "TILE_MEMBERS",
    "ProcessedSample",
    "content_hash",
    "decode_npy",
    "decode_sample_json",
    "encode_npy",
    "encode_sample",
    "frame_member",
    "sample_key",
]

#: Bumped whenever member names, encodings or semantics change; part of every version hash.
SCHEMA_VERSION = 1

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
#: video frame members: f0000.jpg, f0001.jpg, ...
FRAME_MEMBER = re.compile(r"f\d{4}\.(jpg|png)")
#: full-detail tile images (`image.tiles`): the image at its tile grid, the 448 thumbnail.
TILE_MEMBERS = frozenset({"tiles.jpg", "thumb.jpg"})


def sample_key(source_id: str) -> str:
    """A stable tar key for a source id: letters, digits, '_' and '-' only (never a dot)."""
    return _KEY_UNSAFE.sub("_", source_id)


@dataclass(frozen=True, kw_only=True)
class ProcessedSample:
    """A sample after the kernels, ready to encode. An image sample has one JPEG, RLE lists
    over objects, (n, G, G) prompt masks and (n,) K; a video clip has T JPEGs, RLE lists over
    frames of lists over objects, (T, n, G, G) prompt masks and (T, n) K."""

    key: str
    #: the S x S JPEG(s): one for an image, one per frame for video.
    jpegs: tuple[bytes, ...]
    #: full-resolution GT masks as compressed RLE (str counts).
    gt_rles: list
    #: S x S masks as compressed RLE (str counts).
    rles_1024: list
    #: (n, G, G) or (T, n, G, G) bool.
    prompt_masks: np.ndarray
    #: (n,) or (T, n) int.
    k: np.ndarray
    #: the metadata JSON; `kind` is "image" or "video".
    meta: dict[str, Any]
    #: full-detail images for the loader's tiles (`tiles.jpg`, `thumb.jpg`), if built.
    tile_jpegs: dict[str, bytes] = field(default_factory=dict)


def content_hash(members: dict[str, bytes]) -> str:
    """A sample's content hash (samples.parquet `sha256`): over its member names and each
    member's sha256, so it does not depend on tar layout."""
    sha = hashlib.sha256()
    for name in sorted(members):
        sha.update(name.encode() + b"\0" + hashlib.sha256(members[name]).digest())
    return sha.hexdigest()


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


def frame_member(t: int) -> str:
    """Member name of frame t of a video sample: `f0000.jpg`, `f0001.jpg`, ..."""
    return f"f{t:04d}.jpg"


def encode_sample(s: ProcessedSample) -> dict[str, bytes]:
    """Member name -> bytes for one sample (deterministic)."""
    if s.meta["kind"] == "video":
        images = {frame_member(t): jpeg for t, jpeg in enumerate(s.jpegs)}
    elif s.meta["kind"] == "text":  # a pure-text conversation: no picture member
        images = {}
    else:
        images = {"jpg": s.jpegs[0]}
    return {
        **images,
        "json": _json_bytes(s.meta),
        "gt_masks.json": _json_bytes(s.gt_rles),
        "masks_1024.json": _json_bytes(s.rles_1024),
        "prompt_masks.npy": encode_npy(np.ascontiguousarray(s.prompt_masks, dtype=bool)),
        "k.npy": encode_npy(np.asarray(s.k, dtype=np.int32)),
        **s.tile_jpegs,
    }
