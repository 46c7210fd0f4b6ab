"""Raw-dataset readers, one module per published format, and their registry.

A reader is a frozen, picklable dataclass (Ray ships it to workers) with:
- `list_items() -> list[ItemRef]`: the light index (annotations only, never pixels), sorted by
  source id; a structural problem (missing annotation file) raises `ConfigError`.
- `load(ref) -> RawSample`: one sample's image bytes and decoded masks; per-item problems raise
  `SampleError` with a reason.
- `synth(out_dir, *, n_items, seed, faults)`: writes a small dataset in the real on-disk format.
- optional `item_files(ref) -> list[str]`: every file `load(ref)` may read, relative to root;
  an incremental build reuses a shard only while those files are unchanged. Without it a
  shard's recipe holds the whole root's fingerprint (no reuse across any input file change).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Protocol

from sa2va_shards.config import ReaderConfig
from sa2va_shards.errors import ConfigError
from sa2va_shards.readers.coco import CocoReader
from sa2va_shards.readers.describe_anything import DescribeAnythingReader
from sa2va_shards.readers.osprey import OspreyReader
from sa2va_shards.readers.refcoco import RefCocoReader
from sa2va_shards.readers.refvideo import MevisReader, RefYtvosReader, RevosReader
from sa2va_shards.readers.sav import SavReader
from sa2va_shards.records import ItemRef, RawClip, RawSample

__all__ = ["READERS", "Reader", "get_reader", "synth_dataset"]


class Reader(Protocol):
    name: ClassVar[str]
    root: str

    def list_items(self) -> list[ItemRef]: ...

    def load(self, ref: ItemRef) -> RawSample | RawClip: ...


#: format name -> reader class (explicit, no import side effects).
READERS: dict[str, Any] = {
    CocoReader.name: CocoReader,
    DescribeAnythingReader.name: DescribeAnythingReader,
    OspreyReader.name: OspreyReader,
    RefCocoReader.name: RefCocoReader,
    MevisReader.name: MevisReader,
    RevosReader.name: RevosReader,
    RefYtvosReader.name: RefYtvosReader,
    SavReader.name: SavReader,
}


def _reader_class(name: str) -> Any:
    if name not in READERS:
        raise ConfigError(f"unknown reader format {name!r}; known: {', '.join(sorted(READERS))}")
    return READERS[name]


def get_reader(cfg: ReaderConfig, *, max_pixels: int | None = None) -> Reader:
    """Instantiate the reader for `cfg.format` with `cfg.root` and `cfg.options`; readers that
    decode pixels themselves (video) also get the image pixel budget."""
    cls = _reader_class(cfg.format)
    budget = ({"max_pixels": max_pixels} if max_pixels is not None
              and "max_pixels" in {f.name for f in dataclasses.fields(cls)} else {})
    try:
        return cls(root=cfg.root, **{**cfg.options, **budget})
    except TypeError as e:
        raise ConfigError(f"reader.options for {cfg.format}: {e}") from e


def synth_dataset(name: str, out_dir: Path, *, n_items: int = 24, seed: int = 0,
                  faults: tuple[str, ...] = ()) -> Path:
    """Write a small raw dataset of format `name` under `out_dir`; returns its root."""
    return _reader_class(name).synth(Path(out_dir), n_items=n_items, seed=seed, faults=faults)
