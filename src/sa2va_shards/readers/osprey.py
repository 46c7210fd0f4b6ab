"""Osprey-724K: region-level instruction data, as Sa2VA's five Osprey VP datasets read it.

On disk: `<root>/Osprey-724K/<file>.json`, each a top-level list; one element = one sample =
`{file_name, height, width, annotation: [{segmentation, ...}], conversations: [{from, value}]}`
(`description: [str]`, one per region, in `osprey_detail_description.json`). Images are looked
up by the raw `file_name` in the COCO folders, first hit wins (as Sa2VA does; Osprey's own
loader strips the `COCO_train2014_` prefix, Sa2VA does not). Masks are decoded at the JSON
height/width (Sa2VA does the same); the transform rejects a mismatch with the real image.

Source id: `<file stem>_<index in the list, 7 digits>`, e.g. `osprey_conversation_0000042`.
Region i of a sample is "region{i+1}" in its text; objects carry that as `region`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sa2va_shards import ops
from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.readers.base import BaseReader
from sa2va_shards.records import ItemRef, RawSample, bad_item
from sa2va_shards.safe_io import data_path, duplicate_keys

__all__ = ["COCO_IMAGE_DIRS", "OSPREY_FILES", "OspreyReader"]

#: the five published files (Sa2VA registers one dataset per file).
OSPREY_FILES: tuple[str, ...] = (
    "osprey_conversation.json",
    "osprey_detail_description.json",
    "osprey_short_form.json",
    "osprey_part_level.json",
    "osprey_lvis_positive_negative.json",
)
#: Sa2VA's image folders, searched in this order.
COCO_IMAGE_DIRS: tuple[str, ...] = (
    "coco/train2014", "coco/val2014", "coco/train2017", "coco/val2017",
)
#: digits of the list index in a source id (the largest file has ~200k elements).
_INDEX_DIGITS = 7
#: sample-level text fields kept as published (the loader builds the Sa2VA prompts from them).
_TEXT_FIELDS = ("conversations", "description")


def _as_tuple(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"reader.options.{what}: expected a list of strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True, kw_only=True)
class OspreyReader(BaseReader):
    """Reads the Osprey-724K JSON files under `<root>/<annotations>` and COCO images; root is
    the folder holding `Osprey-724K/` and `coco/` (Sa2VA's `data/osprey-724k`)."""

    name: ClassVar[str] = "osprey"
    #: which JSON files to read (names in `annotations`; `.json` may be left off).
    files: tuple[str, ...] = OSPREY_FILES
    #: folder of the JSON files, relative to root.
    annotations: str = "Osprey-724K"
    #: image folders relative to root (or absolute), searched in order; the first hit wins.
    image_dirs: tuple[str, ...] = COCO_IMAGE_DIRS

    def __post_init__(self) -> None:
        # YAML gives lists; tuples keep the frozen reader hashable and its repr stable
        files = tuple(f if f.endswith(".json") else f"{f}.json"
                      for f in _as_tuple(self.files, "files"))
        if not files:
            raise ConfigError("reader.options.files: empty; name at least one Osprey JSON file")
        if len({Path(f).stem for f in files}) != len(files):
            raise ConfigError(f"reader.options.files: repeated file in {list(files)}")
        image_dirs = _as_tuple(self.image_dirs, "image_dirs")
        if not image_dirs:
            raise ConfigError("reader.options.image_dirs: empty; name the COCO image folders")
        object.__setattr__(self, "files", files)
        object.__setattr__(self, "image_dirs", image_dirs)

    def _read_list(self, file: str) -> tuple[list, bool]:
        """The file's elements and whether any object in it repeats a key."""
        rel = Path(self.annotations) / file
        data, dups = self.setup_json(rel, unreadable="cannot read Osprey annotations",
                                     missing="Osprey file not found (check reader.root and "
                                             "reader.options.files)")
        if not isinstance(data, list):
            raise ConfigError(f"{self.path(rel)}: expected a top-level JSON list, got "
                              f"{type(data).__name__}")
        return data, dups

    def list_items(self) -> list[ItemRef]:
        """One `ItemRef` per JSON element of every selected file.

        Each ref carries its whole element, so `load` never re-reads the (large) JSON; as
        compact JSON text, because parsed polygons and turns take ~4x the memory of their
        text, in the driver's index and in every shard plan shipped to a worker.
        """
        items = []
        for file in self.files:  # one file parsed at a time
            stem = Path(file).stem
            records, dups = self._read_list(file)
            items += [_item(f"{stem}_{i:0{_INDEX_DIGITS}d}", file, i, rec, dups)
                      for i, rec in enumerate(records)]
        return sorted(items, key=lambda r: r.source_id)

    def index_files(self) -> list[str]:
        """The selected JSON files `list_items` reads."""
        return [f"{self.annotations}/{file}" for file in self.files]

    def _read_image(self, file_name: str) -> tuple[str, bytes]:
        for folder in self.image_dirs:
            # checked before the lookup: a '..' name must not probe other folders either
            if os.path.lexists(data_path(self.path(folder), file_name)):
                return self.read_data(folder, file_name)
        raise SampleError(Reason.MISSING_IMAGE,
                          f"{file_name}: not in any of {', '.join(self.image_dirs)}")

    def item_files(self, ref: ItemRef) -> list[str]:
        """The files `load` reads, relative to root (every folder the lookup may try, since a
        new file in an earlier one changes which is read): a shard is reused by an incremental build
        only while they are unchanged (`build/store.py`)."""
        try:
            file_name = _parse_record(json.loads(ref.data["record"]), "")[0]
        except (SampleError, KeyError, TypeError, ValueError):
            return []  # rejected from the record alone
        return [f"{folder}/{file_name}" for folder in self.image_dirs]

    def load(self, ref: ItemRef) -> RawSample:
        """Read the image (first folder that has it) and the regions' masks as RLEs at the
        JSON height/width.

        Raises:
            SampleError: `bad_annotation` (malformed element), `missing_image`,
                `bad_segmentation`, `mask_size_mismatch` (an RLE whose size is not the JSON's).
        """
        where = f"{ref.data['file']}[{ref.data['index']}]"
        rec = json.loads(ref.data["record"])
        file_name, h, w, anns = _parse_record(rec, where)
        rel, data = self._read_image(file_name)
        rles = ops.segmentations_to_rles([a.get("segmentation") for a in anns], height=h, width=w)
        meta = {"file_name": file_name, "task": Path(ref.data["file"]).stem,
                **{k: rec[k] for k in _TEXT_FIELDS if k in rec}}
        return RawSample(source_id=ref.source_id, image=data, image_name=rel, rles=tuple(rles),
                         objects=tuple(_region(i, a) for i, a in enumerate(anns)), meta=meta)


def _compact(rec: Any) -> str:
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=False)


def _item(source_id: str, file: str, i: int, rec: Any, dups: bool) -> ItemRef:
    """The element's item, or a `bad_item` when it is not an object or repeats a key."""
    if not isinstance(rec, dict):
        return bad_item(source_id, Reason.BAD_ANNOTATION,
                        f"{file}[{i}]: element is {type(rec).__name__}, not an object")
    if dups and duplicate_keys(rec):
        return bad_item(source_id, Reason.BAD_ANNOTATION,
                        f"{file}[{i}]: repeats keys {list(duplicate_keys(rec))}")
    return ItemRef(source_id=source_id, data={"file": file, "index": i, "record": _compact(rec)})


def _parse_record(rec: Any, where: str) -> tuple[str, int, int, list[dict]]:
    """(file_name, height, width, annotation list) of one element, checked (the file name is
    checked against the folders by `safe_io.data_path` when it is read)."""
    try:
        h, w = ops.strict_dim(rec["height"]), ops.strict_dim(rec["width"])
        file_name, anns = rec["file_name"], rec.get("annotation", [])
        if not isinstance(file_name, str):
            raise TypeError(f"file_name {file_name!r} is not a string")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SampleError(Reason.BAD_ANNOTATION, f"{where}: {type(e).__name__}: {e}") from e
    if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
        raise SampleError(Reason.BAD_ANNOTATION, f"{where}: annotation must be a list of dicts")
    problem = _text_problem(rec)
    if problem:
        raise SampleError(Reason.BAD_ANNOTATION, f"{where}: {problem}")
    if "conversations" in rec and not _has_turn_pair(rec["conversations"]):
        roles = [t["from"] for t in rec["conversations"]][:4]
        raise SampleError(Reason.NO_DIALOGUE,
                          f"{where}: conversations {roles} hold no question followed by an answer")
    return file_name, h, w, anns


def _has_turn_pair(turns: list[dict]) -> bool:
    """A human turn followed (later) by a gpt turn. Osprey's own loader skips elements with
    fewer than two turns; Sa2VA's pairs each question with the next answer and skips leading
    answers, so this is what leaves the loader something to train on."""
    roles = [t["from"] for t in turns]
    return "human" in roles and "gpt" in roles[roles.index("human"):]


def _text_problem(rec: dict) -> str | None:
    """Why the element's text cannot be kept as published, or None: `conversations` is a
    list of {from: str, value: str} turns, `description` a list of strings."""
    turns, desc = rec.get("conversations", []), rec.get("description", [])
    if not isinstance(turns, list) or not all(
            isinstance(t, dict) and isinstance(t.get("from"), str)
            and isinstance(t.get("value"), str) for t in turns):
        return "conversations must be a list of {from: text, value: text} turns"
    if not isinstance(desc, list) or not all(isinstance(d, str) for d in desc):
        return "description must be a list of text"
    return None


def _region(i: int, ann: dict) -> dict:
    """Object record of region i: its number as the text names it, plus the raw extra fields
    (bbox, category_id, ...); a raw `id` is kept as `ann_id` so `id` is the region number."""
    extra = {k: v for k, v in ann.items() if k != "segmentation"}
    if "id" in extra:
        extra["ann_id"] = extra.pop("id")
    return {**extra, "id": i + 1, "region": f"region{i + 1}"}


