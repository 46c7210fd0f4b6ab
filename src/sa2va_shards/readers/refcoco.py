"""RefCOCO / RefCOCO+ / RefCOCOg: `instances.json` (COCO) + `refs(<variant>).p`.

`refs(unc).p` (refcocog: `refs(umd).p`) is a pickle list of refs `{ref_id, ann_id, image_id,
split, sentences: [{raw, sent, sent_id, ...}]}`; it is read with the restricted unpickler (plain
data only). One sample = one image with every annotation referred to in the chosen split, and
ALL sentences of every ref to it (Sa2VA picks one at random at construction; the loader can).
Images: `<root>/<images>/<file_name>`. Masks are decoded at the image record's height/width
and merged per object (union; Sa2VA sums polygons, which only differs where polygons of one
object overlap).

Source id: the COCO image id, zero-padded to 12 digits.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.readers.base import BaseReader
from sa2va_shards.readers.coco import (
    annotation_problem,
    category_names,
    image_files,
    image_sample,
    is_id,
    load_instances,
    source_id_of,
)
from sa2va_shards.records import ItemRef, RawSample, bad_item
from sa2va_shards.safe_io import duplicate_keys

__all__ = ["RefCocoReader"]


@dataclass(frozen=True, kw_only=True)
class RefCocoReader(BaseReader):
    """Reads `<root>/<instances>` and `<root>/<refs_file>` (default `refs(<variant>).p`);
    root is the folder of one of refcoco, refcoco+, refcocog (Sa2VA: `data/ref_seg/<name>`)."""

    name: ClassVar[str] = "refcoco"
    #: refs file suffix: `unc` (refcoco, refcoco+), `umd` or `google` (refcocog).
    variant: str = "unc"
    #: refs file name relative to root; empty means `refs(<variant>).p`.
    refs_file: str = ""
    #: COCO instances file relative to root.
    instances: str = "instances.json"
    #: image folder relative to root, or absolute (Sa2VA: `.../coco2014/train2014`).
    images: str = "images"
    #: which refs to read: train, val, testA, testB, or test = every test split (testA +
    #: testB; refer.py's rule: a ref is in `test` when its split contains "test").
    split: str = "train"
    #: store sentences as Sa2VA feeds them (lower-cased, one trailing '.' removed) instead of
    #: as written; the loader lower-cases its referring phrases either way.
    lowercase: bool = False

    @property
    def refs_name(self) -> str:
        """The refs pickle this reader reads, relative to root."""
        return self.refs_file or f"refs({self.variant}).p"

    @property
    def refs_path(self) -> Path:
        """The refs pickle this reader reads."""
        return self.path(self.refs_name)

    def _load_refs(self) -> list:
        refs = self.setup_pickle(self.refs_name, unreadable="cannot read the refs file",
                                 missing="refs file not found (check reader.root and "
                                         "reader.options.variant / refs_file)")
        if not isinstance(refs, list):
            raise ConfigError(f"{self.refs_path}: expected a list of refs, got "
                              f"{type(refs).__name__}")
        return refs

    def _split_refs(self, refs: list) -> list[tuple[int, Any]]:
        """(index in the file, ref) of the refs in `split`; records that are not dicts are
        kept (they may belong to the split: `_index_refs` rejects them)."""
        chosen = [(i, r) for i, r in enumerate(refs)
                  if not isinstance(r, dict) or _in_split(r.get("split"), self.split)]
        if not chosen:
            present = sorted({str(r.get("split")) for r in refs if isinstance(r, dict)})
            raise ConfigError(f"{self.refs_path}: no refs in split {self.split!r}; the file "
                              f"has {', '.join(present) or 'no refs'}")
        return chosen

    def list_items(self) -> list[ItemRef]:
        """One `ItemRef` per image with refs in `split`: its image record and the referred
        objects (segmentation, sentences) inline, so `load` reads no annotation file. A ref,
        image or annotation record of the wrong shape rejects the image it belongs to (or,
        when it names no usable image, is a reject of its own)."""
        refs = self._split_refs(self._load_refs())
        coco, dups = load_instances(self, self.instances)
        anns = {a["id"]: a for a in coco.get("annotations", [])
                if isinstance(a, dict) and is_id(a.get("id"))}
        cats = category_names(coco.get("categories", []))
        images = {img["id"]: img for img in coco["images"]
                  if isinstance(img, dict) and is_id(img.get("id"))}
        objects, problems, items = _index_refs(refs, anns, cats)
        if self.lowercase:
            for objs in objects.values():
                for o in objs.values():
                    o["sentences"] = [_sa2va_phrase(t) for t in o["sentences"]]
        for image_id, objs in objects.items():
            sid, img = source_id_of(image_id), images.get(image_id)
            if img is None:
                problems[image_id].append(f"image id {image_id!r} is not in {self.instances}")
            elif dups and (repeated := duplicate_keys([img, *(anns.get(a) for a in objs)])):
                problems[image_id].append(f"its image or annotation records repeat keys "
                                          f"{list(repeated)}")
            if problems.get(image_id):
                items.append(bad_item(sid, Reason.BAD_ANNOTATION,
                                      "; ".join(problems[image_id][:3])))
                continue
            items.append(ItemRef(source_id=sid, data={
                "image_id": image_id, "image": img, "split": self.split,
                "objects": list(objs.values())}))  # in ref order
        return sorted(items, key=lambda r: r.source_id)

    def index_files(self) -> list[str]:
        """The refs pickle and the instances file `list_items` reads."""
        return [self.refs_name, self.instances]

    def item_files(self, ref: ItemRef) -> list[str]:
        """The files `load` reads, relative to root: a shard is reused by an incremental build
        only while they are unchanged (`build/store.py`)."""
        return image_files(ref.data.get("image"), self.images)

    def load(self, ref: ItemRef) -> RawSample:
        """Read the image and turn each referred object's segmentation into an RLE.

        Raises:
            SampleError: `bad_annotation` (annotation missing from instances.json, malformed
                image record), `missing_image`, `unsafe_path`, `bad_segmentation`.
        """
        missing = [o["id"] for o in ref.data["objects"] if o.get("missing")]
        if missing:
            raise SampleError(Reason.BAD_ANNOTATION,
                              f"refs name annotation ids {missing} not in {self.instances}")
        return image_sample(self, ref, self.images, split=ref.data["split"])


def _in_split(value: Any, split: str) -> bool:
    """refer.py's `getRefIds(split=...)`: `test` takes every test split, `testA` / `testB` /
    `testC` any split naming that letter (testAB), the others only themselves."""
    if not isinstance(value, str):
        return False
    if split in ("testA", "testB", "testC"):
        return split[-1] in value
    return "test" in value if split == "test" else value == split


def _sa2va_phrase(text: str) -> str:
    """A sentence as Sa2VA's RefCOCO dataset makes its phrase: lower-cased, one trailing '.'
    removed."""
    text = text.lower()
    return text[:-1] if text.endswith(".") else text


def _ref_problem(ref: Any) -> str | None:
    """Why a ref record cannot be used, or None (every field it is read for, typed)."""
    if not isinstance(ref, dict):
        return f"ref is {type(ref).__name__}, not a dict"
    for key in ("ref_id", "ann_id", "image_id"):
        if not is_id(ref.get(key)):
            return f"ref {key} {ref.get(key)!r} is not an int or a string"
    sents = ref.get("sentences") or []
    if not isinstance(sents, list) or not all(
            isinstance(s, str) or isinstance(s, dict) and isinstance(s.get("raw", s.get("sent")),
                                                                     str) for s in sents):
        return f"ref {ref['ref_id']!r}: sentences must be a list of strings or {{raw: str}} dicts"
    return None


def _index_refs(refs: list[tuple[int, Any]], anns: dict, cats: dict
                ) -> tuple[dict[Any, dict[Any, dict]], dict[Any, list[str]], list[ItemRef]]:
    """image id -> ann id -> object, problems per image id, and bad items for refs that name
    no usable image id."""
    objects: dict[Any, dict[Any, dict]] = defaultdict(dict)
    problems: dict[Any, list[str]] = defaultdict(list)
    bad: list[ItemRef] = []
    for i, ref in sorted(refs, key=lambda x: _ref_order(x[1])):
        problem = _ref_problem(ref)
        if problem and not (isinstance(ref, dict) and is_id(ref.get("image_id"))):
            bad.append(bad_item(f"refs[{i}]", Reason.BAD_ANNOTATION, problem))
            continue
        if problem:
            problems[ref["image_id"]].append(f"refs[{i}]: {problem}")
            objects[ref["image_id"]]  # noqa: B018 - the image still needs its (reject) row
            continue
        ann = anns.get(ref["ann_id"])
        problem = annotation_problem(ann, cats, False) if ann is not None else None
        if problem:  # the referred annotation itself is malformed
            problems[ref["image_id"]].append(problem)
        obj = objects[ref["image_id"]].setdefault(ref["ann_id"],
                                                  _new_object(ref["ann_id"], anns, cats))
        obj["ref_ids"].append(ref["ref_id"])
        for s in ref.get("sentences") or []:
            obj["sentences"].append(s.get("raw", s.get("sent")) if isinstance(s, dict) else s)
            obj["sent_ids"].append(s.get("sent_id") if isinstance(s, dict) else None)
    return objects, problems, bad


def _ref_order(ref: Any) -> tuple[int, Any]:
    rid = ref.get("ref_id") if isinstance(ref, dict) else None
    return (0, rid) if isinstance(rid, int) and not isinstance(rid, bool) else (1, str(rid))


def _new_object(ann_id: Any, anns: dict, cats: dict) -> dict:
    """An object record for a referred annotation (flagged when instances.json lacks it)."""
    a = anns.get(ann_id)
    if a is None:
        return {"id": ann_id, "missing": True, "ref_ids": [], "sentences": [], "sent_ids": []}
    return {"id": ann_id, "category_id": a.get("category_id"),
            "category": cats.get(a.get("category_id")) if is_id(a.get("category_id")) else None,
            "bbox": a.get("bbox"),
            "iscrowd": a.get("iscrowd", 0), "segmentation": a.get("segmentation"),
            "ref_ids": [], "sentences": [], "sent_ids": []}


