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

import json
import pickle
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pycocotools import mask as mask_utils

from sa2va_shards import ops
from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.readers import _synth
from sa2va_shards.readers._safe_pickle import safe_load
from sa2va_shards.readers.coco import (
    annotation_problem,
    category_names,
    image_fields,
    image_files,
    is_id,
    load_instances,
    read_image,
    source_id_of,
)
from sa2va_shards.records import ItemRef, RawSample, bad_item
from sa2va_shards.safe_io import duplicate_keys, open_regular

__all__ = ["REFCOCO_FAULTS", "RefCocoReader"]

#: fault kinds `synth` can inject: one bad image each (ids 10000 + j, split train), except
#: `unsafe_pickle`, which replaces the whole refs file (the build then cannot start).
REFCOCO_FAULTS: tuple[str, ...] = (
    "missing_image", "corrupt_image", "size_mismatch", "bad_polygon", "bad_rle", "missing_ann",
    "unsafe_pickle",
)


@dataclass(frozen=True, kw_only=True)
class RefCocoReader:
    """Reads `<root>/<instances>` and `<root>/<refs_file>` (default `refs(<variant>).p`)."""

    name: ClassVar[str] = "refcoco"
    #: folder of one of refcoco, refcoco+, refcocog (Sa2VA: `data/ref_seg/<name>`).
    root: str
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
    def refs_path(self) -> Path:
        """The refs pickle this reader reads."""
        return Path(self.root) / (self.refs_file or f"refs({self.variant}).p")

    def _load_refs(self) -> list:
        path = self.refs_path
        try:
            with open_regular(path) as f:
                refs = safe_load(f, name=path.name)
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: refs file not found (check reader.root and "
                              "reader.options.variant / refs_file)") from e
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the refs file: {e}") from e
        except SampleError as e:  # one pickle for the whole set: nothing can be built
            raise ConfigError(f"{path}: {e.reason.value}: {e.detail}") from e
        if not isinstance(refs, list):
            raise ConfigError(f"{path}: expected a list of refs, got {type(refs).__name__}")
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
        coco, dups = load_instances(Path(self.root) / self.instances)
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
        img, objects = ref.data["image"], ref.data["objects"]
        missing = [o["id"] for o in objects if o.get("missing")]
        if missing:
            raise SampleError(Reason.BAD_ANNOTATION,
                              f"refs name annotation ids {missing} not in {self.instances}")
        h, w, file_name = image_fields(img)
        rel, data = read_image(self.root, self.images, file_name)
        rles = ops.segmentations_to_rles([o["segmentation"] for o in objects], height=h, width=w)
        return RawSample(
            source_id=ref.source_id, image=data, image_name=rel, rles=tuple(rles),
            objects=tuple({k: v for k, v in o.items() if k != "segmentation"} for o in objects),
            meta={"file_name": file_name, "image_id": img.get("id"), "split": ref.data["split"]},
        )

    @staticmethod
    def synth(out_dir: Path, *, n_items: int = 24, seed: int = 0,
              faults: tuple[str, ...] = ()) -> Path:
        """Write a RefCOCO-style set: `instances.json`, `refs(unc).p` (protocol 2, as the
        Python 2 era files) and `images/COCO_train2014_*.jpg`. Images rotate over the splits
        train, train, val, testA, testB; each has 1-4 objects, one of them never referred to,
        1-3 sentences per ref, one object referred to twice, a 2x2 object (K = 0) in every
        third image; plus one train image per fault kind (ids 10000 + j)."""
        unknown = set(faults) - set(REFCOCO_FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {REFCOCO_FAULTS}")
        rng = np.random.default_rng(seed)
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        doc: dict[str, list] = {"images": [], "annotations": [], "categories": [
            {"id": i + 1, "name": n, "supercategory": "thing"} for i, n in enumerate(_CATEGORIES)]}
        refs: list[dict] = []
        for i in range(n_items):
            _synth_image(doc, refs, out_dir, rng, image_id=i + 1)
        for j, fault in enumerate(f for f in faults if f != "unsafe_pickle"):
            _synth_fault(doc, refs, out_dir, rng, image_id=10_000 + j, fault=fault)
        (out_dir / "instances.json").write_text(json.dumps(doc))
        with open(out_dir / "refs(unc).p", "wb") as f:
            if "unsafe_pickle" in faults:
                f.write(_synth.exploit_pickle(f"touch {out_dir / 'PWNED'}"))
            else:
                pickle.dump(refs, f, protocol=2)
        return out_dir


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


# --- synth -------------------------------------------------------------------------------------

_CATEGORIES = ("person", "dog", "cat", "car", "chair", "cup")
_SPLITS = ("train", "train", "val", "testA", "testB")
_PHRASES = ("left {n}", "the {n} on the right", "{n} in the middle", "big {n}", "small {n}")


def _add_ann(doc: dict, image_id: int, seg: Any, h: int, w: int, cat: int) -> int:
    bbox = [0.0] * 4  # the injected bad polygon has none
    if seg is not _synth.BAD_POLYGON:
        rle = (mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if isinstance(seg, list)
               else mask_utils.frPyObjects(seg, h, w))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
    ann_id = len(doc["annotations"]) + 1
    doc["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": cat,
                               "segmentation": seg, "bbox": bbox, "area": bbox[2] * bbox[3],
                               "iscrowd": int(isinstance(seg, dict))})
    return ann_id


def _add_ref(refs: list, rng: np.random.Generator, *, image_id: int, ann_id: int, cat: int,
             split: str, file_name: str) -> None:
    noun = _CATEGORIES[cat - 1]
    sents = []
    for _ in range(int(rng.integers(1, 4))):
        raw = str(rng.choice(_PHRASES)).format(n=noun).capitalize()
        sents.append({"tokens": raw.lower().split(), "raw": raw, "sent_id": 1000 + len(refs) * 4
                      + len(sents), "sent": raw.lower()})
    refs.append({"ref_id": len(refs) + 1, "ann_id": ann_id, "image_id": image_id, "split": split,
                 "sentences": sents, "sent_ids": [s["sent_id"] for s in sents],
                 "category_id": cat, "file_name": file_name[:-4] + f"_{len(refs) + 1}.jpg"})


def _add_image(doc: dict, out_dir: Path, image_id: int, data: bytes, h: int, w: int) -> str:
    name = f"COCO_train2014_{image_id:012d}.jpg"
    (out_dir / "images" / name).write_bytes(data)
    doc["images"].append({"id": image_id, "file_name": name, "height": h, "width": w})
    return name


def _synth_image(doc: dict, refs: list, out_dir: Path, rng: np.random.Generator, *,
                 image_id: int) -> None:
    h, w = _synth.SIZES[image_id % len(_synth.SIZES)]
    name = _add_image(doc, out_dir, image_id, _synth.encode_image(_synth.make_image(rng, h, w)),
                      h, w)
    shapes = _synth.random_objects(rng, h, w, int(rng.integers(2, 5)))
    if image_id % 3 == 0:
        shapes.append(("box", _synth.tiny_box(h, w)))
    split = _SPLITS[image_id % len(_SPLITS)]
    for j, (kind, shape) in enumerate(shapes):
        # RefCOCO objects are polygons; a box is a 4-point polygon, a few are crowd RLE
        if kind == "box":
            y0, x0, y1, x1 = shape
            seg: Any = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        else:
            seg = _synth.segmentation(kind, shape, h, w, style=0 if j % 4 else 2)
        cat = int(rng.integers(1, len(_CATEGORIES) + 1))
        ann_id = _add_ann(doc, image_id, seg, h, w, cat)
        if j == 1:
            continue  # an object nobody refers to: not in the sample
        for _ in range(2 if j == 0 and image_id % 4 == 2 else 1):  # sometimes referred twice
            _add_ref(refs, rng, image_id=image_id, ann_id=ann_id, cat=cat, split=split,
                     file_name=name)


def _synth_fault(doc: dict, refs: list, out_dir: Path, rng: np.random.Generator, *,
                 image_id: int, fault: str) -> None:
    h, w = 240, 320
    good = _synth.encode_image(_synth.make_image(rng, h, w))
    name = _add_image(doc, out_dir, image_id,
                      good[: len(good) // 3] if fault == "corrupt_image" else good, h, w)
    seg: Any = [_synth.ellipse_polygon(160, 120, 60, 40)]
    if fault == "missing_image":
        (out_dir / "images" / name).unlink()
    elif fault == "size_mismatch":
        doc["images"][-1]["height"] = h + 10
    elif fault == "bad_polygon":
        seg = _synth.BAD_POLYGON
    ann_id = _add_ann(doc, image_id, seg, doc["images"][-1]["height"], w, cat=1)
    if fault == "bad_rle":  # a crowd RLE cut short
        good_rle = _synth.segmentation("box", (20, 30, 120, 200), h, w, style=1)
        doc["annotations"][-1]["segmentation"] = _synth.truncated_rle(good_rle)
    elif fault == "missing_ann":
        ann_id = 99_000 + image_id
    _add_ref(refs, rng, image_id=image_id, ann_id=ann_id, cat=1, split="train", file_name=name)
