"""What a root on an object store relies on: `list_items` opens exactly the reader's
`index_files` (every other file of the driver's view is a placeholder of zeros), and
`item_files` lists only the folders `item_folders` names (a shard job lists just those)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pipeline.demo import DEMO_SETS
from sa2va_shards.readers import READERS, get_reader
from sa2va_shards.readers.base import BaseReader
from tests.helpers import make_config

_SEEN: list[tuple[str, str]] | None = None


def _audit(event: str, args: tuple) -> None:
    if _SEEN is not None and event in ("open", "os.listdir", "os.scandir") \
            and isinstance(args[0], (str, bytes, Path)):
        _SEEN.append((event, os.fsdecode(args[0])))


sys.addaudithook(_audit)  # records only while a test sets _SEEN

#: the demo's sets (their options and faults) and the other layouts the readers take.
_LAYOUTS = [(fmt, options, faults) for fmt, _, _, faults, options in DEMO_SETS] + [
    ("sav", {"layout": "frames"}, ()), ("sav", {"layout": "png"}, ()),
    ("sav", {"layout": "png", "video_list": "sav_val.txt"}, ()),
    ("gcg", {"file": "flickr_mergedGT_GCG_train"}, ()),
    ("gcg", {"file": "RefCOCOg_GCG_train.json"}, ())]


def _watching(fn, *args) -> tuple[object, list[tuple[str, str]]]:
    global _SEEN
    _SEEN = []
    try:
        return fn(*args), _SEEN
    finally:
        _SEEN = None


def _under(root: Path, seen: list[tuple[str, str]], events: tuple[str, ...]) -> set[Path]:
    paths = {Path(p).resolve() for e, p in seen if e in events}
    return {p for p in paths if p.is_relative_to(root)}


@pytest.mark.parametrize("fmt,options,faults", _LAYOUTS,
                         ids=[f"{f}-{'-'.join(map(str, o.values())) or 'default'}"
                              for f, o, _ in _LAYOUTS])
def test_list_items_opens_exactly_the_index_files(fmt, options, faults, synth, tmp_path):
    root = synth(fmt, n_items=4, seed=4, faults=faults)
    if options.get("video_list"):
        names = sorted(p.name for p in (root / "Annotations_6fps").iterdir())
        (root / "sav_val.txt").write_text("\n".join(names) + "\n")
    reader = get_reader(make_config(root, tmp_path, reader={
        "format": fmt, "root": str(root), "options": options}).reader)
    real = root.resolve()
    named = {(real / p).resolve() for p in reader.index_files()}
    items, seen = _watching(reader.list_items)
    assert items
    assert _under(real, seen, ("open",)) == named


@pytest.mark.parametrize("fmt,options", [("sav", {"layout": "frames"}), ("sav", {}),
                                         ("sav", {"layout": "png"}), ("coco", {}),
                                         ("osprey", {}), ("chatunivi", {})])
def test_item_files_lists_only_the_item_folders(fmt, options, synth, tmp_path):
    root = synth(fmt, n_items=4, seed=4)
    reader = get_reader(make_config(root, tmp_path, reader={
        "format": fmt, "root": str(root), "options": options}).reader)
    real, listed_any = root.resolve(), False
    for item in reader.list_items():
        _, seen = _watching(reader.item_files, item)
        listed = _under(real, seen, ("os.listdir", "os.scandir"))
        assert listed <= {(real / f).resolve() for f in reader.item_folders(item)}
        listed_any |= bool(listed)
    assert listed_any == (options.get("layout") == "frames")  # the one reader that lists


def test_every_reader_declares_its_index_files_and_a_new_one_must():
    assert all(cls.index_files is not BaseReader.index_files for cls in READERS.values())
    with pytest.raises(NotImplementedError):
        BaseReader(root="x").index_files()
