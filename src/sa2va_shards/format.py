"""The shard format, both ways: member names, encode and decode of each member, the card's
`preprocessing` block, and iteration over a tar's samples. Pure, no build or loader logic;
the writer, the loader, `verify`, `viz` and the tests all read the format from here.

Every member decodes with stock tools and no pickle: JPEG, JSON and `.npy` (allow_pickle off).
The schema table (members, shapes, meaning) is in README.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from webdataset import tariterators

if TYPE_CHECKING:
    from sa2va_shards.config import BuildConfig

__all__ = [
    "FRAME_MEMBER",
    "GT_MASKS",
    "IMAGE",
    "K",
    "MASKS",
    "META",
    "POOLING",
    "PROMPT_MASKS",
    "SCHEMA_VERSION",
    "THUMB",
    "TILES",
    "TILE_MEMBERS",
    "ProcessedSample",
    "content_hash",
    "decode_json",
    "decode_npy",
    "encode_npy",
    "encode_sample",
    "frame_member",
    "image_members",
    "iter_samples",
    "preprocessing_block",
    "sample_key",
]

#: Bumped whenever member names, encodings or semantics change; part of every version hash.
#: 2: the masks of the stored image are `masks.json` (was `masks_1024.json`, though they are
#: `image.size` masks, 512 with `size: 512`); `jpg` may be the source file's own bytes
#: (`image_store: original` in the json, the `image.store` policy); `kind: text` samples
#: (a conversation without a picture) have no image member.
SCHEMA_VERSION = 2

# Member names (a tar member is `<key>.<name>`).
#: the image squashed to `image.size`, or the kept source (JPEG; a clip has FRAME_MEMBERs).
IMAGE = "jpg"
#: the sample's metadata JSON; `kind` is "image", "video" or "text" (a conversation only).
META = "json"
#: every object's mask at the stored image's size, COCO compressed RLE.
MASKS = "masks.json"
#: every object's mask at the original resolution (the mask loss's ground truth), RLE.
GT_MASKS = "gt_masks.json"
#: (n, G, G) or (T, n, G, G) bool: each object's cells of the vision-token grid.
PROMPT_MASKS = "prompt_masks.npy"
#: (n,) or (T, n) int32: K, the `<IMG_CONTEXT>` count of each object's region prompt.
K = "k.npy"
#: full-detail tile images (`image.tiles`): the image at its tile grid, the 448 thumbnail.
TILES, THUMB = "tiles.jpg", "thumb.jpg"
TILE_MEMBERS = frozenset({TILES, THUMB})
#: video frame members: f0000.jpg, f0001.jpg, ...
FRAME_MEMBER = re.compile(r"f\d{4}\.(jpg|png)")
#: how masks become prompt masks: torch's `F.interpolate(mode='nearest')` (legacy nearest).
POOLING = "torch_nearest_legacy"

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sample_key(source_id: str) -> str:
    """A stable tar key for a source id: letters, digits, '_' and '-' only (never a dot)."""
    return _KEY_UNSAFE.sub("_", source_id)


def frame_member(t: int) -> str:
    """Member name of frame t of a video sample: `f0000.jpg`, `f0001.jpg`, ..."""
    return f"f{t:04d}.jpg"


def image_members(names: Any) -> list[str]:
    """The image member names among `names`, in frame order: `jpg` / `png` (an image) and
    the frames `f0000.jpg`, ... (a video clip)."""
    return sorted(n for n in names if n in (IMAGE, "png") or FRAME_MEMBER.fullmatch(n))


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
    #: S x S masks (the stored image's size) as compressed RLE (str counts).
    rles: list
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
    member's sha256, so it does not depend on tar layout. `__key__`-style entries are not
    members and are left out."""
    sha = hashlib.sha256()
    for name in sorted(n for n in members if not n.startswith("__")):
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


def decode_json(data: bytes) -> Any:
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
    if s.meta["kind"] == "video":
        images = {frame_member(t): jpeg for t, jpeg in enumerate(s.jpegs)}
    elif s.meta["kind"] == "text":  # a pure-text conversation: no picture member
        images = {}
    else:
        images = {IMAGE: s.jpegs[0]}
    return {
        **images,
        META: _json_bytes(s.meta),
        GT_MASKS: _json_bytes(s.gt_rles),
        MASKS: _json_bytes(s.rles),
        PROMPT_MASKS: encode_npy(np.ascontiguousarray(s.prompt_masks, dtype=bool)),
        K: encode_npy(np.asarray(s.k, dtype=np.int32)),
        **s.tile_jpegs,
    }


def preprocessing_block(cfg: BuildConfig) -> dict[str, Any]:
    """The card's `preprocessing` block: the geometry a consumer must match (the loader
    refuses a build whose block differs from what it was configured for)."""
    return {
        "image_size": cfg.image.size,
        "grid": cfg.vision.grid,
        "tokens_per_image": cfg.vision.tokens_per_image,
        "vision": {"image_size": cfg.vision.image_size, "patch_size": cfg.vision.patch_size,
                   "downsample_ratio": cfg.vision.downsample_ratio},
        "pooling": POOLING,
        "interpolation": cfg.image.interpolation,
        "k_zero": cfg.masks.k_zero,
    }


def iter_samples(tar_path: str | Path, names: Collection[str] | None = None
                 ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member name: bytes}) for each sample of a shard, in tar order: webdataset's
    grouping of members by key (the loader streams through the same functions, with its
    own error handling and hash checks). `names`: read only these members."""
    def wanted(fname: str) -> bool:
        return tariterators.base_plus_ext(fname)[1] in names

    with open(tar_path, "rb") as stream:
        files = tariterators.tar_file_expander([{"url": str(tar_path), "stream": stream}],
                                               select_files=None if names is None else wanted)
        for sample in tariterators.group_by_keys(files):
            yield sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}
