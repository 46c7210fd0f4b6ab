"""A RefCOCO-style set (`instances.json`, `refs(unc).p`, `images/`) with injected faults."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sa2va_shards.synth import common

__all__ = ["REFCOCO_FAULTS", "write"]

#: fault kinds `write` can inject: one bad image each (ids 10000 + j, split train), except
#: `unsafe_pickle`, which replaces the whole refs file (the build then cannot start).
REFCOCO_FAULTS: tuple[str, ...] = (
    "missing_image", "corrupt_image", "size_mismatch", "bad_polygon", "bad_rle", "missing_ann",
    "unsafe_pickle",
)


def write(out_dir: Path, *, n_items: int = 24, seed: int = 0,
          faults: tuple[str, ...] = ()) -> Path:
    """Write a RefCOCO-style set: `instances.json`, `refs(unc).p` (protocol 2, as the
    Python 2 era files) and `images/COCO_train2014_*.jpg`. Images rotate over the splits
    train, train, val, testA, testB; each has 1-4 objects, one of them never referred to,
    1-3 sentences per ref, one object referred to twice, a 2x2 object (K = 0) in every
    third image; plus one train image per fault kind (ids 10000 + j)."""
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
            f.write(common.refused_pickle(refs))
        else:
            pickle.dump(refs, f, protocol=2)
    return out_dir


_CATEGORIES = ("person", "dog", "cat", "car", "chair", "cup")
_SPLITS = ("train", "train", "val", "testA", "testB")
_PHRASES = ("left {n}", "the {n} on the right", "{n} in the middle", "big {n}", "small {n}")


def _add_ann(doc: dict, image_id: int, seg: Any, h: int, w: int, cat: int) -> int:
    bbox = [0.0] * 4  # the injected bad polygon has none
    if seg is not common.BAD_POLYGON:
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
    h, w = common.SIZES[image_id % len(common.SIZES)]
    name = _add_image(doc, out_dir, image_id, common.encode_image(common.make_image(rng, h, w)),
                      h, w)
    shapes = common.random_objects(rng, h, w, int(rng.integers(2, 5)))
    if image_id % 3 == 0:
        shapes.append(("box", common.tiny_box(h, w)))
    split = _SPLITS[image_id % len(_SPLITS)]
    for j, (kind, shape) in enumerate(shapes):
        # RefCOCO objects are polygons; a box is a 4-point polygon, a few are crowd RLE
        if kind == "box":
            y0, x0, y1, x1 = shape
            seg: Any = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        else:
            seg = common.segmentation(kind, shape, h, w, style=0 if j % 4 else 2)
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
    good = common.encode_image(common.make_image(rng, h, w))
    name = _add_image(doc, out_dir, image_id,
                      good[: len(good) // 3] if fault == "corrupt_image" else good, h, w)
    seg: Any = [common.ellipse_polygon(160, 120, 60, 40)]
    if fault == "missing_image":
        (out_dir / "images" / name).unlink()
    elif fault == "size_mismatch":
        doc["images"][-1]["height"] = h + 10
    elif fault == "bad_polygon":
        seg = common.BAD_POLYGON
    ann_id = _add_ann(doc, image_id, seg, doc["images"][-1]["height"], w, cat=1)
    if fault == "bad_rle":  # a crowd RLE cut short
        good_rle = common.segmentation("box", (20, 30, 120, 200), h, w, style=1)
        doc["annotations"][-1]["segmentation"] = common.truncated_rle(good_rle)
    elif fault == "missing_ann":
        ann_id = 99_000 + image_id
    _add_ref(refs, rng, image_id=image_id, ann_id=ann_id, cat=1, split="train", file_name=name)
