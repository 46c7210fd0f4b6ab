"""LLaVA-v1.5 mix665k (`llava`): image VQA rows and pure-text rows, no masks (see `chat.py`
for the layout and how such samples are stored)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sa2va_shards.errors import Reason, SampleError
from sa2va_shards.readers.base import BaseReader
from sa2va_shards.readers.chat import chat_items, chat_turns_checked
from sa2va_shards.records import ItemRef, RawSample
from sa2va_shards.safe_io import read_data_file

__all__ = ["LlavaReader"]


@dataclass(frozen=True, kw_only=True)
class LlavaReader(BaseReader):
    """Reads `llava_v1_5_mix665k.json` and its images (Sa2VA's `data/llava_data`)."""

    name: ClassVar[str] = "llava"
    #: the conversation file, relative to root.
    file: str = "LLaVA-Instruct-150K/llava_v1_5_mix665k.json"
    #: image folder, relative to root.
    images: str = "llava_images"
    #: skip pure-text rows (Sa2VA v2's Qwen configs): they become `source_filter` rejects.
    skip_pure_text: bool = False

    def list_items(self) -> list[ItemRef]:
        return chat_items(self.root, self.file)

    def index_files(self) -> list[str]:
        """The conversation file `list_items` reads."""
        return [self.file]

    def item_files(self, ref: ItemRef) -> list[str]:
        """The image an image row reads (none for a pure-text row), relative to root."""
        image = json.loads(ref.data["record"]).get("image")
        return [f"{self.images}/{image}"] if isinstance(image, str) else []

    def load(self, ref: ItemRef) -> RawSample:
        """An image row: the image bytes and the turns; a pure-text row: no image.

        Raises:
            SampleError: `bad_annotation`, `no_dialogue`, `missing_image`, `source_filter`
                (a pure-text row under `skip_pure_text`).
        """
        where = f"{Path(self.file).name}[{ref.data['index']}]"
        rec = json.loads(ref.data["record"])
        turns = chat_turns_checked(rec, where)
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

