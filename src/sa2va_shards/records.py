"""The small typed records that move between stages (all picklable, none holds big arrays
except `RawSample`, which lives only inside one shard job)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa2va_shards.errors import Reason

__all__ = [
    "BAD_ITEM",
    "ItemRef",
    "RawClip",
    "RawSample",
    "RejectRecord",
    "SampleRecord",
    "ShardPlan",
    "ShardRecord",
    "ShardResult",
    "bad_item",
]

#: `ItemRef.data` key of an input the index already found unusable (see `bad_item`).
BAD_ITEM = "_bad_item"


@dataclass(frozen=True, kw_only=True)
class ItemRef:
    """One input sample as the light index knows it: a stable id plus the reader's plain data
    (file name, annotations) needed to load it. Sorted by `source_id` before planning."""

    #: stable, unique id within the dataset (e.g. the COCO image id, zero-padded).
    source_id: str
    #: JSON-serialisable, reader-specific payload.
    data: dict[str, Any] = field(default_factory=dict)


def bad_item(source_id: str, reason: Reason, detail: str) -> ItemRef:
    """An input whose index record is unusable (a null image, an id of the wrong type, ...):
    it is still an input, so the plan turns it into a reject row instead of dropping it."""
    return ItemRef(source_id=source_id, data={BAD_ITEM: {"reason": reason.value,
                                                         "detail": detail}})


@dataclass(frozen=True, kw_only=True)
class RawSample:
    """One decoded input: image pixels, full-resolution masks and the text about the objects."""

    source_id: str
    #: the encoded image file, decoded by the transform (pixel budget checked first).
    image: bytes
    #: where the image came from (for reject details).
    image_name: str
    #: one plain dict per object: id, category, bbox, captions, ... (same order as the masks).
    objects: tuple[dict[str, Any], ...]
    #: the masks as COCO compressed RLEs at the image's size (preferred: never decoded)...
    rles: tuple[dict, ...] | None = None
    #: ...or as (n, H, W) uint8 {0, 1} arrays (encoded once to RLE by the transform).
    masks: np.ndarray | None = None
    #: sample-level text and provenance: file name, conversations, split, ...
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.rles is None) == (self.masks is None):
            raise ValueError("RawSample needs exactly one of `rles` or `masks`")


@dataclass(frozen=True, kw_only=True)
class RawClip:
    """One decoded video clip: T frames and, per frame, one RLE per object."""

    source_id: str
    #: (T, H, W, 3) uint8 RGB frames, as stored.
    frames: np.ndarray
    #: index of each frame in the source video (24 fps).
    frame_indices: tuple[int, ...]
    #: rles[t][i]: object i in frame t, COCO compressed RLE at the frame size.
    rles: tuple[tuple[dict, ...], ...]
    #: one plain dict per object (same order as each frame's RLEs).
    objects: tuple[dict[str, Any], ...]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ShardPlan:
    """A run of the sorted input (`build.plan`), decided before any work starts."""

    index: int
    name: str
    items: tuple[ItemRef, ...]


@dataclass(frozen=True, kw_only=True)
class SampleRecord:
    """One row of samples.parquet."""

    key: str
    shard: str
    source_id: str
    n_obj: int
    k: list[int]
    k_zero: int
    height: int
    width: int
    sha256: str
    #: frames in the sample (1 for an image); for video `k` is each object's largest K.
    frames: int = 1


@dataclass(frozen=True, kw_only=True)
class ShardRecord:
    """One row of shards.parquet."""

    file: str
    samples: int
    bytes: int
    sha256: str
    #: code fingerprint (`provenance.code_id`) of the process that wrote the shard.
    code: str = ""


@dataclass(frozen=True, kw_only=True)
class RejectRecord:
    """One row of rejects.parquet: a rejected input sample, or an object dropped from one."""

    source_id: str
    level: str
    object_id: str
    stage: str
    reason: str
    detail: str
    shard: str


@dataclass(frozen=True, kw_only=True)
class ShardResult:
    """What one shard job returns to the driver: small, no arrays."""

    shard: ShardRecord
    samples: list[SampleRecord]
    rejects: list[RejectRecord]
    #: items read (== samples written + sample-level rejects).
    read: int
    seconds: float = 0.0
    #: peak resident memory of the process that built the shard (MiB).
    max_rss_mb: float = 0.0
