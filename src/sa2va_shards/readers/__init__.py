"""Raw-dataset readers, one module per published format, and their registry.

A reader is a frozen, picklable dataclass on `base.BaseReader` (Ray ships it to workers), its
options are its fields (checked against `reader.options` by `config.reader_options`), with:
- `list_items() -> list[ItemRef]`: the light index (annotations only, never pixels), sorted by
  source id; a structural problem (missing annotation file) raises `ConfigError`.
- `load(ref) -> RawSample`: one sample's image bytes and decoded masks; per-item problems raise
  `SampleError` with a reason.
- optional `item_files(ref) -> list[str]`: every file `load(ref)` may read, relative to root;
  an incremental build reuses a shard only while those files are unchanged. Without it a
  shard's recipe holds the whole root's fingerprint (no reuse across any input file change).
- `index_files() -> list[str]`: every file `list_items` opens, relative to root; a root on an
  object store downloads only these to the driver (`build/inputs.py`), so a reader without it
  cannot read a store. `item_folders(ref)`: folders whose listing `item_files` reads (SA-V's
  frame folders), listed by a shard job on a store before it stages the files.

Small datasets in these formats, with injected faults, are written by `sa2va_shards.synth`.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, ClassVar, Protocol

from sa2va_shards.config import ReaderConfig, reader_options
from sa2va_shards.errors import ConfigError
from sa2va_shards.readers.chatunivi import ChatUniviReader
from sa2va_shards.readers.coco import CocoReader
from sa2va_shards.readers.describe_anything import DescribeAnythingReader
from sa2va_shards.readers.gcg import GcgReader
from sa2va_shards.readers.llava import LlavaReader
from sa2va_shards.readers.osprey import OspreyReader
from sa2va_shards.readers.refcoco import RefCocoReader
from sa2va_shards.readers.refvideo import MevisReader, RefYtvosReader, RevosReader
from sa2va_shards.readers.sav import SavReader
from sa2va_shards.records import ItemRef, RawClip, RawSample

__all__ = ["READERS", "Reader", "get_reader"]


class Reader(Protocol):
    name: ClassVar[str]
    root: str

    def list_items(self) -> list[ItemRef]: ...

    def load(self, ref: ItemRef) -> RawSample | RawClip: ...


#: format name -> reader class (explicit, no import side effects).
READERS: dict[str, Any] = {
    CocoReader.name: CocoReader,
    DescribeAnythingReader.name: DescribeAnythingReader,
    GcgReader.name: GcgReader,
    LlavaReader.name: LlavaReader,
    ChatUniviReader.name: ChatUniviReader,
    OspreyReader.name: OspreyReader,
    RefCocoReader.name: RefCocoReader,
    MevisReader.name: MevisReader,
    RevosReader.name: RevosReader,
    RefYtvosReader.name: RefYtvosReader,
    SavReader.name: SavReader,
}


def _reader_class(name: str) -> Any:
    if name not in READERS:
        close = difflib.get_close_matches(str(name), READERS, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(READERS))}"
        raise ConfigError(f"reader.format: unknown reader format {name!r}; {hint}")
    return READERS[name]


def get_reader(cfg: ReaderConfig, *, max_pixels: int | None = None) -> Reader:
    """Instantiate the reader for `cfg.format` with `cfg.root` and `cfg.options` (checked
    against its fields by `config.reader_options`); readers that decode pixels themselves
    (video) also get the image pixel budget."""
    cls = _reader_class(cfg.format)
    budget = ({"max_pixels": max_pixels} if max_pixels is not None
              and "max_pixels" in {f.name for f in dataclasses.fields(cls)} else {})
    return cls(root=cfg.root, **reader_options(cls, cfg.options), **budget)
