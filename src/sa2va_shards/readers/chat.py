"""Conversation-only sets of Sa2VA's mix: LLaVA-665K (image VQA and pure-text rows) and
Chat-UniVi video chat. No masks: a sample is the picture (image, frames, or nothing) plus the
stored turns, served through the same tiles, template and tokens as the mask sets.

LLaVA-665K (`llava`): `<root>/<file>` is a list of `{id, image?, conversations: [{from,
value}]}`; `image` is relative to `<root>/<images>`. A row without `image` is pure text.
Chat-UniVi (`chatunivi`): `<root>/<file>` is a list of `{video, conversations}`; the video is
`<root>/<videos>/<video>` (an `.mkv` name that is missing falls back to `.mp4`, as in Sa2VA).
Its frames are decoded with PyAV and `frames` of them kept, one per equal segment of the
video (the segment's middle frame); the loader draws 5 of them per step (Sa2VA draws one
random frame in each of 5 segments of the whole video at every step).

How such a sample is stored (README "Conversation-only samples"): no objects, empty mask
members, `json` holding `conversations` and `"chat": "<reader>"`; an image row is an image
sample, a video a video sample, a pure-text row a sample of kind `text` with no picture member.

Rows whose turns hold no question followed by an answer are `no_dialogue` rejects; a row with
more than one `<image>` tag is a `bad_annotation` (the model receives one picture).
Source id: `<file stem>_<index in the list, 7 digits>`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.readers import _chat_synth
from sa2va_shards.records import ItemRef, RawClip, RawSample, bad_item
from sa2va_shards.safe_io import (
    check_regular,
    data_path,
    duplicate_keys,
    load_setup_json,
    read_data_file,
)

__all__ = ["CHAT_FORMATS", "ChatUniviReader", "LlavaReader", "turn_problem"]

#: reader names whose builds are conversation-only.
CHAT_FORMATS: tuple[str, ...] = ("llava", "chatunivi")
_INDEX_DIGITS = 7


def turn_problem(turns: Any) -> str | None:
    """Why a `conversations` list cannot be served, or None: it must be {from, value} text
    turns from human / gpt with a question followed by an answer."""
    if not isinstance(turns, list) or not all(
            isinstance(t, dict) and t.get("from") in ("human", "gpt")
            and isinstance(t.get("value"), str) for t in turns):
        return "conversations must be a list of {from: human|gpt, value: text} turns"
    roles = [t["from"] for t in turns]
    if "human" not in roles or "gpt" not in roles[roles.index("human"):]:
        return "no question followed by an answer"
    return None


def _read_list(root: str, file: str) -> tuple[list, bool]:
    path = Path(root) / file
    data, dups = load_setup_json(path, unreadable="cannot read conversations",
                                 missing="conversation file not found (check reader.root and "
                                         "reader.options.file)")
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a top-level JSON list, got {type(data).__name__}")
    return data, dups


def _items(root: str, file: str) -> list[ItemRef]:
    """One item per row, carrying the row as compact JSON (so `load` never re-reads the file)."""
    data, dups = _read_list(root, file)
    stem, items = Path(file).stem, []
    for i, rec in enumerate(data):
        sid = f"{stem}_{i:0{_INDEX_DIGITS}d}"
        if not isinstance(rec, dict):
            items.append(bad_item(sid, Reason.BAD_ANNOTATION,
                                  f"{file}[{i}]: element is {type(rec).__name__}"))
        elif dups and duplicate_keys(rec):
            items.append(bad_item(sid, Reason.BAD_ANNOTATION,
                                  f"{file}[{i}]: repeats keys {list(duplicate_keys(rec))}"))
        else:
            items.append(ItemRef(source_id=sid, data={"index": i, "record": json.dumps(
                rec, separators=(",", ":"), ensure_ascii=False)}))
    return sorted(items, key=lambda r: r.source_id)


def _turns(rec: dict, where: str) -> list[dict]:
    turns = rec.get("conversations")
    problem = turn_problem(turns)
    if problem:
        reason = Reason.NO_DIALOGUE if problem.startswith("no question") else \
            Reason.BAD_ANNOTATION
        raise SampleError(reason, f"{where}: {problem}")
    if sum(t["value"].count("<image>") for t in turns) > 1:
        raise SampleError(Reason.BAD_ANNOTATION, f"{where}: more than one <image> tag")
    return turns


@dataclass(frozen=True, kw_only=True)
class LlavaReader:
    """Reads `llava_v1_5_mix665k.json` and its images (Sa2VA's `data/llava_data`)."""

    name: ClassVar[str] = "llava"
    root: str
    #: the conversation file, relative to root.
    file: str = "LLaVA-Instruct-150K/llava_v1_5_mix665k.json"
    #: image folder, relative to root.
    images: str = "llava_images"
    #: skip pure-text rows (Sa2VA v2's Qwen configs): they become `source_filter` rejects.
    skip_pure_text: bool = False

    def list_items(self) -> list[ItemRef]:
        return _items(self.root, self.file)

    def load(self, ref: ItemRef) -> RawSample:
        """An image row: the image bytes and the turns; a pure-text row: no image.

        Raises:
            SampleError: `bad_annotation`, `no_dialogue`, `missing_image`, `source_filter`
                (a pure-text row under `skip_pure_text`).
        """
        where = f"{Path(self.file).name}[{ref.data['index']}]"
        rec = json.loads(ref.data["record"])
        turns = _turns(rec, where)
        image = rec.get("image")
        meta = {"chat": self.name, "conversations": turns, "row_id": rec.get("id")}
        if image is None:
            if self.skip_pure_text:
                raise SampleError(Reason.SOURCE_FILTER, f"{where}: pure-text row skipped")
            return RawSample(source_id=ref.source_id, image=b"", image_name="", rles=(),
                             objects=(), meta={**meta, "text_only": True})
        if not isinstance(image, str):
            raise SampleError(Reason.BAD_ANNOTATION, f"{where}: image is not a file name")
        rel = f"{self.images}/{image}"
        data = read_data_file(Path(self.root) / self.images, image, shown=rel)
        return RawSample(source_id=ref.source_id, image=data, image_name=rel, rles=(),
                         objects=(), meta={**meta, "file_name": image})

    @staticmethod
    def synth(out_dir: Path, *, n_items: int = 24, seed: int = 0,
              faults: tuple[str, ...] = ()) -> Path:
        return _chat_synth.write_llava(Path(out_dir), n_items=n_items, seed=seed, faults=faults)


@dataclass(frozen=True, kw_only=True)
class ChatUniviReader:
    """Reads Chat-UniVi's `video_chat.json` and its videos (Sa2VA's `video_datas/chat_univi`)."""

    name: ClassVar[str] = "chatunivi"
    root: str
    file: str = "video_chat.json"
    videos: str = "Activity_Videos"
    #: frames kept per video, one per equal segment (the loader draws 5 per step).
    frames: int = 10
    #: decoded frame size budget (the build passes `image.max_pixels`).
    max_pixels: int = 4096 * 4096

    def __post_init__(self) -> None:
        if not isinstance(self.frames, int) or self.frames < 1:
            raise ConfigError(f"reader.options.frames must be a positive int, got "
                              f"{self.frames!r}")

    def list_items(self) -> list[ItemRef]:
        return _items(self.root, self.file)

    def _video_path(self, name: str) -> tuple[str, Path]:
        for candidate in (name, name.replace("mkv", "mp4")):
            path = data_path(Path(self.root) / self.videos, candidate, name="video")
            if os.path.lexists(path):
                return f"{self.videos}/{candidate}", path
        raise SampleError(Reason.MISSING_VIDEO, f"{self.videos}/{name}: no such file")

    def load(self, ref: ItemRef) -> RawClip:
        """`frames` frames of the video (RGB as stored) and the turns.

        Raises:
            SampleError: `bad_annotation`, `no_dialogue`, `missing_video`, `corrupt_video`,
                `image_too_large`.
        """
        where = f"{Path(self.file).name}[{ref.data['index']}]"
        rec = json.loads(ref.data["record"])
        turns = _turns(rec, where)
        if not isinstance(rec.get("video"), str):
            raise SampleError(Reason.BAD_ANNOTATION, f"{where}: video is not a file name")
        rel, path = self._video_path(rec["video"])
        check_regular(path, rel)  # PyAV would block on a FIFO
        frames, picked = _decode_spread(path, rel, self.frames, self.max_pixels)
        meta = {"chat": self.name, "conversations": turns, "file_name": rel}
        return RawClip(source_id=ref.source_id, frames=frames, frame_indices=tuple(picked),
                       rles=tuple(() for _ in picked), objects=(), meta=meta)

    @staticmethod
    def synth(out_dir: Path, *, n_items: int = 4, seed: int = 0,
              faults: tuple[str, ...] = ()) -> Path:
        return _chat_synth.write_chatunivi(Path(out_dir), n_items=n_items, seed=seed,
                                           faults=faults)


def segment_frames(total: int, n: int) -> list[int]:
    """One frame per equal segment of `total` frames (the middle one), all frames when the
    video has no more than `n` (Sa2VA's split points, with the middle instead of a random
    draw, which the loader makes per step)."""
    if total <= n:
        return list(range(total))
    edges = np.linspace(0, total, num=n + 1, dtype=int)
    return [int((a + b - 1) // 2) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _decode_spread(path: Path, rel: str, n: int, max_pixels: int) -> tuple[np.ndarray, list]:
    """Two decoding passes: count the frames (a header's count is not trusted), then keep
    only the segment frames (an ActivityNet video has thousands: never all in memory)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SampleError(Reason.CORRUPT_VIDEO, f"{rel}: no video stream")
            ctx = container.streams.video[0].codec_context
            if ctx.height * ctx.width > max_pixels:
                raise SampleError(Reason.IMAGE_TOO_LARGE,
                                  f"{rel}: frames {ctx.width}x{ctx.height} over max_pixels")
            total = sum(1 for _ in container.decode(video=0))
        picked = segment_frames(total, n)
        wanted, out = set(picked), {}
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    out[i] = frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise SampleError(Reason.CORRUPT_VIDEO, f"{rel}: {type(e).__name__}") from e
    if not picked or len(out) != len(picked):
        raise SampleError(Reason.CORRUPT_VIDEO, f"{rel}: {total} frames, "
                                                f"{len(out)} of {len(picked)} decodable")
    return np.stack([out[i] for i in picked]), picked
