"""SA-V val / test: extracted frames plus one PNG mask per object and annotated frame.

The released layout (facebookresearch/sam2 `sav_dataset/README.md`):
`<root>/JPEGImages_24fps/<video_id>/<00000>.jpg` (every frame at 24 fps) and
`<root>/Annotations_6fps/<video_id>/<obj_id>/<00000>.png` (every 4th frame), plus
`sav_val.txt` / `sav_test.txt` listing the video ids. A PNG holds one object: every non-zero
pixel is the object (SA-V's evaluator refuses a PNG with two non-zero values; so do we,
`bad_segmentation`). There is no `_manual.json`: the index is the folder listing (names only).

`SavReader(layout="png")` calls into this module; frames, strides, `max_frames` and the sample
are exactly those of the other SA-V layouts (one clip per video, objects in obj_id order).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from sa2va_shards import ops
from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.records import ItemRef, RawClip, bad_item

if TYPE_CHECKING:
    from sa2va_shards.readers.sav import SavReader

__all__ = ["list_png_items", "load_png_clip"]


def _names(path: Path) -> list[str]:
    """Sorted entry names of a folder (never follows into files)."""
    return sorted(os.listdir(path))


def list_png_items(reader: SavReader) -> list[ItemRef]:
    """One item per video folder under `annotations_dir` (or per id in `video_list`): its
    objects and annotated frame names, from the listing alone."""
    if reader.expressions is not None:  # Ref-SAV captions index the train masklet columns
        raise ConfigError("sav layout png (val / test) takes no Ref-SAV `expressions`")
    base = reader.path(reader.annotations_dir)
    if not base.is_dir():
        raise ConfigError(f"{base}: SA-V annotation folder not found (check reader.root and "
                          "reader.options.annotations_dir)")
    ids = _video_ids(reader, base)
    return [_png_item(reader, base, vid) for vid in ids]


def _video_ids(reader: SavReader, base: Path) -> list[str]:
    if reader.video_list is None:
        return [n for n in _names(base) if (base / n).is_dir()]
    path = reader.path(reader.video_list)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the video list: {e}") from e
    return sorted({line.strip() for line in text.splitlines() if line.strip()})


def _png_item(reader: SavReader, base: Path, vid: str) -> ItemRef:
    folder = base / vid
    if "/" in vid or vid in (".", "..") or not folder.is_dir():
        return bad_item(vid, Reason.BAD_ANNOTATION,
                        f"{reader.annotations_dir}/{vid}: no such annotation folder")
    objects = [n for n in _names(folder) if (folder / n).is_dir()]
    frames = {o: [n.removesuffix(".png") for n in _names(folder / o) if n.endswith(".png")]
              for o in objects}
    problem = _listing_problem(objects, frames)
    if problem:
        return bad_item(vid, Reason.BAD_ANNOTATION, f"{reader.annotations_dir}/{vid}: {problem}")
    return ItemRef(source_id=vid, data={"video": vid, "objects": objects,
                                        "frames": frames[objects[0]]})


def _listing_problem(objects: list[str], frames: dict[str, list[str]]) -> str | None:
    """Why the listing cannot be one clip: no objects, frame names that are not frame
    numbers, or objects annotated on different frames (SA-V annotates every object on every
    annotated frame)."""
    if not objects:
        return "no object folders"
    for o, names in frames.items():
        if not names:
            return f"object {o} has no masks"
        bad = [n for n in names if not n.isdigit()]
        if bad:
            return f"object {o}: {bad[0]}.png is not named by a frame number"
    first = frames[objects[0]]
    for o in objects[1:]:
        if frames[o] != first:
            missing = sorted(set(first) ^ set(frames[o]))[:3]
            return f"objects {objects[0]} and {o} are annotated on different frames ({missing})"
    return None


def load_png_clip(reader: SavReader, ref: ItemRef) -> RawClip:
    """The picked annotated frames, their 24 fps frames and one mask per object."""
    from sa2va_shards.readers.sav import _spread

    names = ref.data["frames"]
    picked = _spread(list(range(0, len(names), reader.frame_stride)), reader.max_frames)
    frame_ids = [int(names[i]) for i in picked]
    frames = reader._jpeg_frames(ref, frame_ids)
    h, w = frames.shape[1:3]
    vid, objects = ref.data["video"], ref.data["objects"]
    rles = tuple(tuple(_png_rle(reader, f"{vid}/{o}/{names[i]}.png", h, w) for o in objects)
                 for i in picked)
    return RawClip(source_id=ref.source_id, frames=frames, frame_indices=tuple(frame_ids),
                   rles=rles, objects=tuple({"id": int(o) if o.isdigit() else o,
                                             "masklet_id": o} for o in objects),
                   meta={"video_id": vid, "fps": 24, "rotation": 0, "layout": "png"})


def _png_rle(reader: SavReader, rel: str, h: int, w: int) -> dict:
    """One object's mask PNG as a compressed RLE at the PNG's size (a size other than the
    frame's is a `mask_size_mismatch` in the transform)."""
    shown, data = reader.read_data(reader.annotations_dir, rel, missing=Reason.BAD_SEGMENTATION)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > reader.max_pixels:
                raise SampleError(Reason.IMAGE_TOO_LARGE, f"{shown}: {im.width}x{im.height}")
            a = np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise SampleError(Reason.BAD_SEGMENTATION, f"{shown}: {type(e).__name__}: {e}",
                          stage="decode") from e
    if a.ndim != 2:
        raise SampleError(Reason.BAD_SEGMENTATION, f"{shown}: a mask PNG must have one channel "
                                                   f"(got shape {a.shape})", stage="decode")
    values = np.unique(a[a != 0])
    if values.size > 1:
        raise SampleError(Reason.BAD_SEGMENTATION,
                          f"{shown}: {values.size} non-zero values; SA-V masks hold one object "
                          "per PNG", stage="decode")
    return ops.rle_encode((a != 0).astype(np.uint8)[None])[0]
