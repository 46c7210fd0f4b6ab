"""Chat-UniVi video chat (`chatunivi`): videos and their conversations, no masks (see
`chat.py` for the layout and how such samples are stored)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.readers.base import BaseReader
from sa2va_shards.readers.chat import chat_items, chat_turns_checked
from sa2va_shards.records import ItemRef, RawClip
from sa2va_shards.safe_io import check_regular, data_path

__all__ = ["ChatUniviReader", "segment_frames"]


@dataclass(frozen=True, kw_only=True)
class ChatUniviReader(BaseReader):
    """Reads Chat-UniVi's `video_chat.json` and its videos (Sa2VA's `video_datas/chat_univi`)."""

    name: ClassVar[str] = "chatunivi"
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
        return chat_items(self.root, self.file)

    def index_files(self) -> list[str]:
        """The conversation file `list_items` reads."""
        return [self.file]

    def _video_path(self, name: str) -> tuple[str, Path]:
        for candidate in (name, name.replace("mkv", "mp4")):
            path = data_path(Path(self.root) / self.videos, candidate, name="video")
            if os.path.lexists(path):
                return f"{self.videos}/{candidate}", path
        raise SampleError(Reason.MISSING_VIDEO, f"{self.videos}/{name}: no such file")

    def item_files(self, ref: ItemRef) -> list[str]:
        """Both names `load` may open (the `.mkv` and its `.mp4` fallback): the one that
        exists decides the bytes, so an `.mkv` appearing later is a change too."""
        name = json.loads(ref.data["record"]).get("video")
        if not isinstance(name, str):
            return []
        return [f"{self.videos}/{c}" for c in dict.fromkeys((name, name.replace("mkv", "mp4")))]

    def load(self, ref: ItemRef) -> RawClip:
        """`frames` frames of the video (RGB as stored) and the turns.

        Raises:
            SampleError: `bad_annotation`, `no_dialogue`, `missing_video`, `corrupt_video`,
                `image_too_large`.
        """
        where = f"{Path(self.file).name}[{ref.data['index']}]"
        rec = json.loads(ref.data["record"])
        turns = chat_turns_checked(rec, where)
        if not isinstance(rec.get("video"), str):
            raise SampleError(Reason.BAD_ANNOTATION, f"{where}: video is not a file name")
        rel, path = self._video_path(rec["video"])
        check_regular(path, rel)  # PyAV would block on a FIFO
        frames, picked = _decode_spread(path, rel, self.frames, self.max_pixels)
        meta = {"chat": self.name, "conversations": turns, "file_name": rel}
        return RawClip(source_id=ref.source_id, frames=frames, frame_indices=tuple(picked),
                       rles=tuple(() for _ in picked), objects=(), meta=meta)



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
