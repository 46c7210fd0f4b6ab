"""SA-V video: `sav_XXXXXX.mp4` (24 fps) + `sav_XXXXXX_manual.json`, or extracted JPEG frames.

The manual JSON's `masklet` is a list over annotated frames (6 fps: every 4th video frame) of
lists over objects of COCO compressed RLE. One sample = one clip: every annotated frame (or every
`frame_stride`-th, at most `max_frames` spread over the clip), decoded with PyAV (mp4) or read from
`JPEGImages_24fps/<video_id>/<00000>.jpg`. A decoded frame whose size differs from the RLE size
(rotation metadata, a wrong video) is a `mask_size_mismatch` reject, not a wrong mask.

Rotation metadata (an mp4 display matrix) is never applied: frames are used as stored, as
images ignore EXIF. A rotated video whose masks have the stored frame size is kept when the
masks can only be in stored orientation (a +-90 degree rotation of a non-square video: display
masks would have the swapped size); when the size cannot tell (180 degrees, a square video)
the clip is a `rotated_video` reject rather than a possibly mirrored mask. Extracted frames
(`layout: frames`, written by ffmpeg, which does apply the rotation) have no such metadata.

`layout: png` reads SA-V's val / test release (frames plus one PNG per object and annotated
frame, no `_manual.json`): see `sav_png`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from sa2va_shards import ops
from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.readers import sav_png
from sa2va_shards.readers.base import BaseReader
from sa2va_shards.records import ItemRef, RawClip, bad_item
from sa2va_shards.safe_io import check_regular, data_path, duplicate_keys, load_json

__all__ = ["ANNOTATION_STEP", "SavReader"]

#: video frames per annotated frame (24 fps video, 6 fps masklets).
ANNOTATION_STEP = 4
#: SA-V's frame rate; an mp4 at another rate is `corrupt_video` (23.976 passes).
VIDEO_FPS = 24
FPS_TOLERANCE = 0.05


@dataclass(frozen=True, kw_only=True)
class SavReader(BaseReader):
    """Reads every `*_manual.json` under `<root>/<videos>` with its mp4 (or frame folder),
    plus object captions from a Ref-SAV expression file when `expressions` is set."""

    name: ClassVar[str] = "sav"
    videos: str = "."
    layout: Literal["mp4", "frames", "png"] = "mp4"
    #: folder of extracted frames (layout `frames`), relative to root.
    frames_dir: str = "JPEGImages_24fps"
    #: take every n-th annotated frame...
    frame_stride: int = 1
    #: ...all of them (None, the default: the loader draws each step's frames from the whole
    #: clip, as Sa2VA does) or at most this many, spread evenly over the whole clip.
    max_frames: int | None = None
    #: optional Ref-SAV expression file (Sa2VA's `sam_v_final_v3.json`: {video_id: {objects:
    #: {column index: {formated, short_caps}}}}), relative to root: adds object captions.
    expressions: str | None = None
    #: build only the videos the expression file names (Sa2VA's Ref-SAV selection: the
    #: other SA-V videos are not inputs of this dataset, so they are neither read nor rejects).
    only_expressions: bool = False
    #: frame pixel budget, checked from the stream header before any frame is decoded; the
    #: build sets it from `image.max_pixels`.
    max_pixels: int = 100_000_000
    #: layout `png` (SA-V val / test): the per-object PNG folder and an optional list of
    #: video ids (`sav_val.txt`), relative to root; without it every annotated video is read.
    annotations_dir: str = "Annotations_6fps"
    video_list: str | None = None

    def __post_init__(self) -> None:
        if self.only_expressions and self.expressions is None:
            raise ConfigError("sav only_expressions needs `expressions` (the Ref-SAV file)")
        if self.layout not in ("mp4", "frames", "png"):
            raise ConfigError(f"sav layout {self.layout!r}: expected 'mp4', 'frames' or 'png'")
        if self.frame_stride < 1 or (self.max_frames is not None and self.max_frames < 1):
            raise ConfigError(f"sav frame_stride {self.frame_stride} and max_frames "
                              f"{self.max_frames} must be >= 1")

    def list_items(self) -> list[ItemRef]:
        """One item per manual JSON: names and byte sizes only (never parsed here: SA-V has
        50k videos; the JSON is read by the one task that builds the clip)."""
        if self.layout == "png":
            return sav_png.list_png_items(self)
        base = self.path(self.videos)
        if not base.is_dir():
            raise ConfigError(f"{base}: SA-V video folder not found (check reader.root)")
        captions, bad_captions = self._expressions()
        items = []
        for path in sorted(base.rglob("*_manual.json")):
            video_id = path.name.removesuffix("_manual.json")
            if self.only_expressions and video_id not in captions and video_id not in bad_captions:
                continue
            rel = path.relative_to(self.root)
            if video_id in bad_captions:
                items.append(bad_item(video_id, Reason.BAD_ANNOTATION, bad_captions[video_id]))
                continue
            items.append(ItemRef(source_id=video_id, data={
                "annotation": str(rel), "video": str(rel.with_name(f"{video_id}.mp4")),
                "annotation_bytes": path.lstat().st_size,
                "captions": captions.get(video_id, {})}))
        return items

    def index_files(self) -> list[str]:
        """The files `list_items` opens: the Ref-SAV expression file when set (layout png: the
        video list when set). The manual JSONs are only listed and sized here (`lstat`)."""
        name = self.video_list if self.layout == "png" else self.expressions
        return [name] if name is not None else []

    def item_folders(self, ref: ItemRef) -> list[str]:
        """Layout `frames`: the clip's frame folder, whose listing `item_files` names."""
        return [f"{self.frames_dir}/{ref.source_id}"] if self.layout == "frames" else []

    def _expressions(self) -> tuple[dict[str, dict[str, dict]], dict[str, str]]:
        """video id -> {column index: {caption, short_caps}} from the Ref-SAV file, if set,
        and video id -> why its entry is unusable (the video is then rejected, not built
        without its captions)."""
        if self.expressions is None:
            return {}, {}
        path = self.path(self.expressions)
        doc, dups = self.setup_json(self.expressions, unreadable="cannot read the expression file")
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: expected an object of videos, got {type(doc).__name__}")
        captions, bad = {}, {}
        for vid, entry in doc.items():
            problem = _expression_problem(entry, dups)
            if problem:
                bad[vid] = f"{self.expressions}: {vid}: {problem}"
                continue
            captions[vid] = {str(i): {"caption": o.get("formated"),
                                      "short_caps": o.get("short_caps")}
                             for i, o in (entry.get("objects") or {}).items()}
        return captions, bad

    def item_files(self, ref: ItemRef) -> list[str]:
        """The files `load` reads, relative to root: a shard is reused by an incremental build
        only while they are unchanged (`build/store.py`). Which frames an mp4-less clip reads
        depends on its annotation, so every file of its frame folder is named."""
        if self.layout == "png":
            vid, names = ref.data["video"], ref.data["frames"]
            return [f"{self.frames_dir}/{vid}/{int(n):05d}.jpg" for n in names] + [
                f"{self.annotations_dir}/{vid}/{o}/{n}.png"
                for o in ref.data["objects"] for n in names]
        if self.layout == "mp4":
            return [ref.data["annotation"], ref.data["video"]]
        folder = f"{self.frames_dir}/{ref.source_id}"
        try:
            names = sorted(os.listdir(self.path(folder)))
        except (OSError, ValueError):
            names = []  # no folder: every frame is missing, and stays so until one appears
        return [ref.data["annotation"], *(f"{folder}/{n}" for n in names)]

    def load(self, ref: ItemRef) -> RawClip:
        """The clip's frames and, per frame and object, the masklet RLE."""
        if self.layout == "png":
            return sav_png.load_png_clip(self, ref)
        doc = self._annotation(ref)
        masklet = doc["masklet"]
        picked = _spread(list(range(0, len(masklet), self.frame_stride)), self.max_frames)
        if not picked:
            raise SampleError(Reason.NO_OBJECTS, "the video has no annotated frames")
        rles = _frame_rles(masklet, picked, ref.data["annotation"])
        ids = _masklet_ids(doc, len(rles[0]), ref.data["annotation"])
        frame_ids = [i * ANNOTATION_STEP for i in picked]
        if self.layout == "mp4":
            frames, rotation, fps = self._mp4_frames(ref, frame_ids)
            _check_rotation(frames.shape[1:3], rles, rotation, ref.data["video"])
        else:  # extracted frames carry no rate: the folder is the 24 fps extraction
            frames, rotation, fps = self._jpeg_frames(ref, frame_ids), 0, VIDEO_FPS
        captions = ref.data.get("captions", {})
        objects = tuple({"id": i, "masklet_id": i, **captions.get(str(col), {})}
                        for col, i in enumerate(ids))
        return RawClip(source_id=ref.source_id, frames=frames, frame_indices=tuple(frame_ids),
                       rles=rles, objects=objects,
                       meta={"video_id": ref.source_id, "fps": fps, "rotation": rotation,
                             "video_frame_count": doc.get("video_frame_count")})

    def _annotation(self, ref: ItemRef) -> dict[str, Any]:
        rel = ref.data["annotation"]
        _, data = self.read_data("", rel, missing=Reason.BAD_ANNOTATION)
        try:
            doc, dups = load_json(data)
        except ValueError as e:
            raise SampleError(Reason.BAD_ANNOTATION, f"{rel}: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("masklet"), list):
            raise SampleError(Reason.BAD_ANNOTATION, f"{rel}: no masklet")
        if dups:
            raise SampleError(Reason.BAD_ANNOTATION,
                              f"{rel}: repeats keys {list(duplicate_keys(doc))}")
        return doc

    def _mp4_frames(self, ref: ItemRef,
                    frame_ids: list[int]) -> tuple[np.ndarray, int, int | float]:
        """The wanted frames (T, H, W, 3) RGB as stored, the rotation metadata (degrees,
        counter-clockwise, 0 when none) and the frame rate: decodes up to the last wanted
        frame only, after the stream's size and rate are checked."""
        import av

        rel = ref.data["video"]
        path = data_path(self.root, rel, name="video")
        if not os.path.lexists(path):
            raise SampleError(Reason.MISSING_VIDEO, f"{rel}: no such file")
        check_regular(path, rel)  # PyAV would block on a FIFO
        wanted, out, rotation = set(frame_ids), {}, 0
        try:
            with av.open(str(path)) as container:
                fps = self._check_stream(container, rel)
                for i, frame in enumerate(container.decode(video=0)):
                    if i == 0:  # older PyAV has no `rotation`: the size check still applies
                        rotation = int(round(getattr(frame, "rotation", 0) or 0)) % 360
                    if i in wanted:  # RGB as stored; rotation metadata is not applied
                        out[i] = frame.to_ndarray(format="rgb24")
                    if i >= frame_ids[-1]:
                        break
        except (av.error.FFmpegError, ValueError, OSError) as e:
            msg = str(e).replace(str(path), rel)  # no machine-specific paths in reject rows
            raise SampleError(Reason.CORRUPT_VIDEO, f"{rel}: {type(e).__name__}: {msg}") from e
        missing = [i for i in frame_ids if i not in out]
        if missing:
            raise SampleError(Reason.CORRUPT_VIDEO, f"{rel}: frames {missing[:5]} not decodable")
        return np.stack([out[i] for i in frame_ids]), rotation, fps

    def _check_stream(self, container: Any, rel: str) -> int | float:
        """The video stream's frame rate, after checking there is a video stream, its size is
        within `max_pixels` (before any frame is decoded) and its rate is SA-V's 24 fps (the
        masklets' every-4th-frame mapping assumes it)."""
        if not container.streams.video:
            raise SampleError(Reason.CORRUPT_VIDEO, f"{rel}: no video stream (audio only?)")
        stream = container.streams.video[0]
        h, w = stream.codec_context.height, stream.codec_context.width
        if h * w > self.max_pixels:
            raise SampleError(Reason.IMAGE_TOO_LARGE,
                              f"{rel}: frames {w}x{h} over max_pixels={self.max_pixels}")
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else float("nan")
        if not abs(fps - VIDEO_FPS) <= FPS_TOLERANCE:
            raise SampleError(Reason.CORRUPT_VIDEO,
                              f"{rel}: {fps:g} fps; SA-V masklets are every {ANNOTATION_STEP}th "
                              f"frame of a {VIDEO_FPS} fps video, so the frames would not match")
        # an int when whole, so a 24 fps clip's JSON bytes are what they always were
        return int(fps) if fps.is_integer() else round(fps, 3)

    def _jpeg_frames(self, ref: ItemRef, frame_ids: list[int]) -> np.ndarray:
        folder = f"{self.frames_dir}/{ref.source_id}"
        frames = []
        for i in frame_ids:
            rel, data = self.read_data("", f"{folder}/{i:05d}.jpg")
            frames.append(ops.decode_image(data, max_pixels=self.max_pixels, name=rel))
        if len({f.shape for f in frames}) != 1:
            raise SampleError(Reason.CORRUPT_VIDEO, f"{folder}: frames differ in size")
        return np.stack(frames)


def _spread(frames: list[int], cap: int | None) -> list[int]:
    """At most `cap` of `frames`, evenly spaced from the first to the last."""
    if cap is None or len(frames) <= cap:
        return frames
    return [frames[i] for i in np.linspace(0, len(frames) - 1, cap).round().astype(int)]


def _expression_problem(entry: Any, dups: bool) -> str | None:
    """Why a Ref-SAV entry cannot give captions, or None."""
    objects = entry.get("objects") if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or not isinstance(objects or {}, dict):
        return "entry must be an object with an 'objects' object"
    for col, o in (objects or {}).items():
        if not isinstance(o, dict):
            return f"object {col} is {type(o).__name__}, not an object"
        caps = o.get("short_caps")
        if not isinstance(o.get("formated"), str | None) or not (
                caps is None or isinstance(caps, list) and all(isinstance(c, str) for c in caps)):
            return f"object {col}: formated must be text and short_caps a list of text"
    if dups and duplicate_keys(entry):
        return f"repeats keys {list(duplicate_keys(entry))}"
    return None


def _frame_rles(masklet: list, picked: list[int], name: str) -> tuple[tuple[dict, ...], ...]:
    """The picked annotated frames' RLEs, checked to be lists of the same number of
    {size: [H, W], counts: str} dicts (the transform validates the runs)."""
    rows = [masklet[i] for i in picked]
    for t, row in zip(picked, rows, strict=True):
        if not isinstance(row, list) or not all(
                isinstance(r, dict) and isinstance(r.get("counts"), str | bytes)
                and isinstance(r.get("size"), list) and len(r["size"]) == 2
                and all(isinstance(v, int) for v in r["size"]) for r in row):
            raise SampleError(Reason.BAD_ANNOTATION,
                              f"{name}: masklet[{t}] is not a list of COCO RLE dicts")
    n_obj = sorted({len(row) for row in rows})
    if len(n_obj) != 1:
        raise SampleError(Reason.BAD_ANNOTATION, f"{name}: frames list {n_obj} objects")
    return tuple(tuple({"size": r["size"], "counts": r["counts"]} for r in row) for row in rows)


def _masklet_ids(doc: dict[str, Any], n_obj: int, name: str) -> list[int]:
    """One id per masklet column: `masklet_id`, or the column index when absent."""
    ids = doc.get("masklet_id")
    if ids is None:
        return list(range(n_obj))
    if not isinstance(ids, list) or len(ids) != n_obj or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise SampleError(Reason.BAD_ANNOTATION,
                          f"{name}: masklet_id {str(ids)[:80]} does not give one int id per "
                          f"masklet column ({n_obj})")
    return ids


def _check_rotation(frame_hw: tuple[int, int], rles: tuple[tuple[dict, ...], ...],
                    rotation: int, name: str) -> None:
    """Reject a rotated video whose masks may not be in stored orientation (module doc); an
    unrotated video's sizes are checked by the transform, like images."""
    if rotation == 0:
        return
    h, w = frame_hw
    sizes = sorted({tuple(r["size"]) for row in rles for r in row})
    if sizes != [(h, w)]:
        mh, mw = sizes[0]
        raise SampleError(Reason.MASK_SIZE_MISMATCH,
                          f"{name}: masks are {mh}x{mw} (HxW) but the stored frames are {h}x{w}; "
                          f"the video has {rotation} degree rotation metadata, not applied "
                          f"(use the extracted-frames layout)")
    if rotation % 180 == 0 or h == w:
        raise SampleError(Reason.ROTATED_VIDEO,
                          f"{name}: {rotation} degree rotation metadata; the masks have the "
                          f"stored size, so their orientation cannot be told")
