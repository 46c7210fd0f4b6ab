"""A COCO-style instance set (`annotations/instances.json` + `images/`) with injected faults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sa2va_shards import ops
from sa2va_shards.synth import common

__all__ = ["CATEGORIES", "COCO_FAULTS", "write"]

#: fault kinds `write` can inject (each adds one bad image next to the good ones).
COCO_FAULTS = (
    "corrupt_image", "random_bytes", "zero_byte", "missing_image", "size_mismatch", "bad_rle",
    "bad_polygon", "polygon_outside", "no_objects", "duplicate_id", "empty_mask", "too_large",
    "mode_p", "mode_la", "mode_i16", "mode_cmyk", "exif_rotated", "text_control",
)


def write(out_dir: Path, *, n_items: int = 24, seed: int = 0,
          faults: tuple[str, ...] = ()) -> Path:
    """Write a COCO-style set: JPEGs of varied sizes and modes (RGB, L, CMYK), objects
    from large to a 2x2 box no grid point hits (K = 0), as polygons, compressed and
    uncompressed RLE; plus one bad image per fault kind in `faults`."""
    rng = np.random.default_rng(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    doc = {"images": [], "annotations": [],
           "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CATEGORIES)]}
    for i in range(n_items):
        _synth_image(doc, out_dir, rng, image_id=i + 1)
    for j, fault in enumerate(faults):
        _synth_fault(doc, out_dir, rng, image_id=10_000 + j, fault=fault)
    (out_dir / "annotations" / "instances.json").write_text(json.dumps(doc))
    return out_dir


#: category names; a category's id is its index + 1.
CATEGORIES = ("person", "dog", "cat", "car", "chair", "cup")
_MODES = ("RGB", "RGB", "L", "RGB", "CMYK", "RGB")


def _segmentation(kind: str, shape: tuple, h: int, w: int, style: int) -> tuple[Any, list]:
    """A COCO segmentation of `shape` (see `common.segmentation`) and its bbox [x, y, w, h]."""
    seg = common.segmentation(kind, shape, h, w, style=style)
    rle = ops.segmentations_to_rles([seg], height=h, width=w)[0]
    return seg, [float(v) for v in mask_utils.toBbox(rle)]


def _add_image(doc: dict, out_dir: Path, image_id: int, data: bytes, h: int, w: int,
               ext: str = "jpg") -> str:
    name = f"{image_id:012d}.{ext}"
    (out_dir / "images" / name).write_bytes(data)
    doc["images"].append({"id": image_id, "file_name": name, "height": h, "width": w})
    return name


def _add_ann(doc: dict, image_id: int, seg: Any, bbox: list, cat: int, crowd: int = 0) -> None:
    doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id,
                               "category_id": cat, "segmentation": seg, "bbox": bbox,
                               "iscrowd": crowd, "area": float(bbox[2] * bbox[3])})


def _synth_image(doc: dict, out_dir: Path, rng: np.random.Generator, *, image_id: int) -> None:
    h, w = common.SIZES[image_id % len(common.SIZES)]
    mode = _MODES[image_id % len(_MODES)]
    _add_image(doc, out_dir, image_id, common.encode_image(common.make_image(rng, h, w),
                                                           mode=mode), h, w)
    for j, (kind, shape) in enumerate(common.random_objects(rng, h, w, int(rng.integers(1, 6)))):
        seg, bbox = _segmentation(kind, shape, h, w, style=(image_id + j) % 3)
        _add_ann(doc, image_id, seg, bbox, cat=int(rng.integers(1, len(CATEGORIES) + 1)),
                 crowd=int(isinstance(seg, dict) and isinstance(seg["counts"], list)))
    if image_id % 3 == 0:  # a few-pixel object: K = 0 under nearest
        seg, bbox = _segmentation("box", common.tiny_box(h, w), h, w, style=1)
        _add_ann(doc, image_id, seg, bbox, cat=1)


def _fault_image(rng: np.random.Generator, fault: str, h: int, w: int) -> tuple[bytes, str]:
    """The image file of a fault case: (bytes, file extension)."""
    rgb = common.make_image(rng, h, w)
    good = common.encode_image(rgb)
    if fault in ("mode_p", "mode_la", "mode_i16"):  # must be converted, not rejected
        return common.encode_image(rgb, mode={"mode_p": "P", "mode_la": "LA",
                                              "mode_i16": "I;16"}[fault], fmt="PNG"), "png"
    if fault == "exif_rotated":  # orientation 6 must be ignored: annotations are stored pixels
        return common.encode_image(rgb, exif_orientation=6), "jpg"
    return {"corrupt_image": good[: len(good) // 3], "random_bytes": rng.bytes(4096),
            "zero_byte": b"", "mode_cmyk": common.encode_image(rgb, mode="CMYK")
            }.get(fault, good), "jpg"


def _synth_fault(doc: dict, out_dir: Path, rng: np.random.Generator, *, image_id: int,
                 fault: str) -> None:
    """One image exercising `fault` (see COCO_FAULTS), with one good box object unless the
    fault is about the objects themselves."""
    h, w = (4200, 4200) if fault == "too_large" else (240, 320)
    data, ext = _fault_image(rng, fault, h, w) if fault != "too_large" else (
        common.encode_image(np.full((h, w, 3), 128, np.uint8)), "jpg")
    name = _add_image(doc, out_dir, image_id, data, h, w, ext=ext)
    seg, bbox = _segmentation("box", (20, 30, 120, 200), h, w, style=1)
    cat = 1
    if fault == "missing_image":
        (out_dir / "images" / name).unlink()
    elif fault == "size_mismatch":  # the record says 250 rows, the file has 240
        doc["images"][-1].update(height=h + 10)
        seg, bbox = [common.ellipse_polygon(100, 80, 50, 40)], [50.0, 40.0, 100.0, 80.0]
    elif fault == "bad_rle":
        seg = common.truncated_rle(seg)
    elif fault == "bad_polygon":
        seg = common.BAD_POLYGON
    elif fault == "duplicate_id":
        doc["images"].append(dict(doc["images"][-1]))
    elif fault in ("empty_mask", "polygon_outside"):  # an extra object with no pixels
        extra = ([common.ellipse_polygon(w + 100, h + 100, 30, 20)] if fault == "polygon_outside"
                 else {"size": [h, w], "counts": mask_utils.encode(
                     np.zeros((h, w), np.uint8, order="F"))["counts"].decode()})
        _add_ann(doc, image_id, extra, [0.0, 0.0, 0.0, 0.0], cat=2)
    elif fault == "text_control":  # control characters and an unpaired surrogate in a name
        doc["categories"].append({"id": 99, "name": "bad\x00\x1b[31m\u2028\ud800name"})
        cat = 99
    if fault != "no_objects":
        _add_ann(doc, image_id, seg, bbox, cat=cat)
