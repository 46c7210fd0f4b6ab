"""COCO-style instance sets: `instances.json` + an image folder.

Segmentations may be polygons, compressed RLE or uncompressed RLE (`iscrowd` objects). One
sample = one image with all its annotations, in annotation-id order. Masks are decoded at the
image record's height/width and checked against the real image later (a mismatch is a reject).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pycocotools import mask as mask_utils

from sa2va_shards import ops
from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.readers import _synth
from sa2va_shards.records import ItemRef, RawSample, bad_item
from sa2va_shards.safe_io import (
    DuplicateKeyDict,
    duplicate_keys,
    load_setup_json,
    read_data_file,
)

__all__ = ["CocoReader", "annotation_problem", "category_names", "group_annotations",
           "image_fields", "is_id", "load_instances", "read_image", "source_id_of"]

#: fault kinds `synth` can inject (each adds one bad image next to the good ones).
COCO_FAULTS = (
    "corrupt_image", "random_bytes", "zero_byte", "missing_image", "size_mismatch", "bad_rle",
    "bad_polygon", "polygon_outside", "no_objects", "duplicate_id", "empty_mask", "too_large",
    "mode_p", "mode_la", "mode_i16", "mode_cmyk", "exif_rotated", "text_control",
)


def image_fields(img: Any) -> tuple[int, int, str]:
    """(height, width, file_name) of an image record, strictly typed: a float size that is
    not whole, a string size or a missing field is `bad_annotation`, never truncated."""
    try:
        if not isinstance(img, dict):
            raise TypeError(f"image record is {type(img).__name__}")
        h, w = ops.strict_dim(img["height"]), ops.strict_dim(img["width"])
        file_name = img["file_name"]
        if not isinstance(file_name, str):
            raise TypeError(f"file_name {file_name!r} is not a string")
    except (KeyError, TypeError, ValueError) as e:
        raise SampleError(Reason.BAD_ANNOTATION,
                          f"image record {str(img)[:200]}: {type(e).__name__}: {e}") from e
    return h, w, file_name


def image_files(img: Any, folder: str) -> list[str]:
    """`[<folder>/<file_name>]` of an image record (nothing for a malformed one: `load` rejects
    it from the record alone)."""
    name = img.get("file_name") if isinstance(img, dict) else None
    return [f"{folder}/{name}"] if isinstance(name, str) else []


def read_image(root: str | Path, folder: str, file_name: Any) -> tuple[str, bytes]:
    """Read `<root>/<folder>/<file_name>` where `file_name` comes from the data: it must stay
    inside the folder and be a regular file (`safe_io.read_data_file`). Returns the name used
    in reject details (relative to root, so rows do not depend on where the dataset lives)
    and the bytes."""
    rel = f"{folder}/{file_name}"
    return rel, read_data_file(Path(root) / folder, file_name, shown=rel)


def load_instances(path: Path) -> tuple[dict[str, Any], bool]:
    """A COCO instances JSON and whether any object in it repeats a key; anything unreadable
    stops the build (`ConfigError`): it indexes the whole set."""
    data, dups = load_setup_json(path, unreadable="cannot read annotations",
                                 missing="annotation file not found (check reader.root)")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ConfigError(f"{path}: not a COCO instances file (no 'images' list)")
    if isinstance(data, DuplicateKeyDict):
        raise ConfigError(f"{path}: top-level keys repeated: {', '.join(data.duplicates)}")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise ConfigError(f"{path}: '{key}' is not a list")
    return data, dups


def is_id(value: Any) -> bool:
    """Ids in index files are ints or strings (never bools, floats, lists or null)."""
    return isinstance(value, str) or isinstance(value, int) and not isinstance(value, bool)


def source_id_of(image_id: Any) -> str:
    """Stable, sortable id: integers zero-padded to 12 digits (as COCO file names), else str."""
    return f"{image_id:012d}" if isinstance(image_id, int) else str(image_id)


def _id_order(value: Any) -> tuple[int, Any]:
    # ints before strings: a file mixing both still sorts, deterministically
    return (0, value) if isinstance(value, int) else (1, str(value))


def category_names(categories: list) -> dict[Any, Any]:
    """category id -> name; records without a usable id are left out (nothing can refer to
    them: an annotation naming an unknown category rejects its image)."""
    return {c["id"]: c.get("name", str(c["id"])) for c in categories
            if isinstance(c, dict) and is_id(c.get("id"))}


def _image_records(images: list) -> tuple[list[tuple[Any, dict]], list[ItemRef]]:
    """(id, image record) of every usable record (a repeated id is kept: the plan rejects
    it as `duplicate_id`), and a bad item for each record that cannot be an input."""
    good: list[tuple[Any, dict]] = []
    bad: list[ItemRef] = []
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not is_id(img.get("id")):
            what = (f"image record is {type(img).__name__}, not an object"
                    if not isinstance(img, dict) else f"image id {img.get('id')!r} is not an "
                    "int or a string")
            bad.append(bad_item(f"images[{i}]", Reason.BAD_ANNOTATION, what))
            continue
        good.append((img["id"], img))
    return good, bad


def annotation_problem(a: dict, cats: dict, dups: bool) -> str | None:
    """Why an annotation record cannot be used, or None (id, category, repeated keys)."""
    if not is_id(a.get("id")):
        return f"annotation id {a.get('id')!r} is not an int or a string"
    cat = a.get("category_id")
    if not (cat is None and not cats or is_id(cat) and (not cats or cat in cats)):
        return f"annotation {a['id']!r}: category_id {a.get('category_id')!r} is not in categories"
    if dups and duplicate_keys(a):
        return f"annotation {a['id']!r} repeats keys {list(duplicate_keys(a))}"
    return None


def group_annotations(anns: list, images: set | dict, cats: dict, dups: bool
                      ) -> tuple[dict[Any, list], dict[Any, list[str]], list[ItemRef]]:
    """Annotations per image id, problems per image id, and a bad item for each annotation
    that names no usable image (orphans grouped per missing image id: never silently lost)."""
    by_image: dict[Any, list] = defaultdict(list)
    problems: dict[Any, list[str]] = defaultdict(list)
    orphans: dict[Any, list] = defaultdict(list)
    bad: list[ItemRef] = []
    for j, a in enumerate(anns):
        if not isinstance(a, dict) or not is_id(a.get("image_id")):
            what = (f"annotation is {type(a).__name__}, not an object" if not isinstance(a, dict)
                    else f"image_id {a.get('image_id')!r} is not an int or a string")
            bad.append(bad_item(f"annotations[{j}]", Reason.BAD_ANNOTATION, what))
            continue
        (by_image if a["image_id"] in images else orphans)[a["image_id"]].append(a)
        problem = annotation_problem(a, cats, dups)
        if problem:
            problems[a["image_id"]].append(problem)
    for image_id, group in orphans.items():
        ids = [a.get("id") for a in group[:5]]
        bad.append(bad_item(source_id_of(image_id), Reason.BAD_ANNOTATION,
                            f"{len(group)} annotation(s) (ids {ids}) refer to image id "
                            f"{image_id!r}, which is not in 'images'"))
    return by_image, problems, bad


@dataclass(frozen=True, kw_only=True)
class CocoReader:
    """Reads `<root>/<annotations>` and images from `<root>/<images>/<file_name>`."""

    name: ClassVar[str] = "coco"
    root: str
    annotations: str = "annotations/instances.json"
    images: str = "images"

    def list_items(self) -> list[ItemRef]:
        """One `ItemRef` per image record, with its annotations and category names; a record
        that cannot be an input (wrong types, repeated keys, orphan annotations) becomes a
        `bad_item`, rejected by the plan with its reason."""
        data, dups = load_instances(Path(self.root) / self.annotations)
        cats = category_names(data.get("categories", []))
        images, items = _image_records(data["images"])
        anns, problems, bad = group_annotations(data.get("annotations", []),
                                                {i for i, _ in images}, cats, dups)
        items += bad
        for image_id, img in images:
            sid = source_id_of(image_id)
            problem = problems.get(image_id) or (
                [f"image record repeats keys {list(duplicate_keys(img))}"]
                if dups and duplicate_keys(img) else None)
            if problem:
                items.append(bad_item(sid, Reason.BAD_ANNOTATION, "; ".join(problem[:3])))
                continue
            objs = sorted(anns.get(image_id, []), key=lambda a: _id_order(a["id"]))
            objects = [
                {"id": a["id"], "category": cats.get(a.get("category_id")),
                 "category_id": a.get("category_id"), "bbox": a.get("bbox"),
                 "iscrowd": a.get("iscrowd", 0), "segmentation": a.get("segmentation")}
                for a in objs
            ]
            items.append(ItemRef(source_id=sid, data={"image": img, "objects": objects}))
        return sorted(items, key=lambda r: r.source_id)

    def item_files(self, ref: ItemRef) -> list[str]:
        """The files `load` reads, relative to root: a shard is reused by an incremental build
        only while they are unchanged (`build/store.py`)."""
        return image_files(ref.data.get("image"), self.images)

    def load(self, ref: ItemRef) -> RawSample:
        """Read the image bytes and turn every segmentation into an RLE at the record's size."""
        img, objects = ref.data["image"], ref.data["objects"]
        h, w, file_name = image_fields(img)
        rel, data = read_image(self.root, self.images, file_name)
        rles = ops.segmentations_to_rles([o["segmentation"] for o in objects], height=h, width=w)
        return RawSample(
            source_id=ref.source_id,
            image=data,
            image_name=rel,
            rles=tuple(rles),
            objects=tuple({k: v for k, v in o.items() if k != "segmentation"} for o in objects),
            meta={"file_name": file_name, "image_id": img.get("id")},
        )

    @staticmethod
    def synth(out_dir: Path, *, n_items: int = 24, seed: int = 0,
              faults: tuple[str, ...] = ()) -> Path:
        """Write a COCO-style set: JPEGs of varied sizes and modes (RGB, L, CMYK), objects
        from large to a 2x2 box no grid point hits (K = 0), as polygons, compressed and
        uncompressed RLE; plus one bad image per fault kind in `faults`."""
        unknown = set(faults) - set(COCO_FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {COCO_FAULTS}")
        rng = np.random.default_rng(seed)
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
        doc = {"images": [], "annotations": [],
               "categories": [{"id": i + 1, "name": n} for i, n in enumerate(_CATEGORIES)]}
        for i in range(n_items):
            _synth_image(doc, out_dir, rng, image_id=i + 1)
        for j, fault in enumerate(faults):
            _synth_fault(doc, out_dir, rng, image_id=10_000 + j, fault=fault)
        (out_dir / "annotations" / "instances.json").write_text(json.dumps(doc))
        return out_dir


_CATEGORIES = ("person", "dog", "cat", "car", "chair", "cup")
_MODES = ("RGB", "RGB", "L", "RGB", "CMYK", "RGB")


def _segmentation(kind: str, shape: tuple, h: int, w: int, style: int) -> tuple[Any, list]:
    """A COCO segmentation of `shape` (see `_synth.segmentation`) and its bbox [x, y, w, h]."""
    seg = _synth.segmentation(kind, shape, h, w, style=style)
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
    h, w = _synth.SIZES[image_id % len(_synth.SIZES)]
    mode = _MODES[image_id % len(_MODES)]
    _add_image(doc, out_dir, image_id, _synth.encode_image(_synth.make_image(rng, h, w),
                                                           mode=mode), h, w)
    for j, (kind, shape) in enumerate(_synth.random_objects(rng, h, w, int(rng.integers(1, 6)))):
        seg, bbox = _segmentation(kind, shape, h, w, style=(image_id + j) % 3)
        _add_ann(doc, image_id, seg, bbox, cat=int(rng.integers(1, len(_CATEGORIES) + 1)),
                 crowd=int(isinstance(seg, dict) and isinstance(seg["counts"], list)))
    if image_id % 3 == 0:  # a few-pixel object: K = 0 under nearest
        seg, bbox = _segmentation("box", _synth.tiny_box(h, w), h, w, style=1)
        _add_ann(doc, image_id, seg, bbox, cat=1)


def _fault_image(rng: np.random.Generator, fault: str, h: int, w: int) -> tuple[bytes, str]:
    """The image file of a fault case: (bytes, file extension)."""
    rgb = _synth.make_image(rng, h, w)
    good = _synth.encode_image(rgb)
    if fault in ("mode_p", "mode_la", "mode_i16"):  # must be converted, not rejected
        return _synth.encode_image(rgb, mode={"mode_p": "P", "mode_la": "LA",
                                              "mode_i16": "I;16"}[fault], fmt="PNG"), "png"
    if fault == "exif_rotated":  # orientation 6 must be ignored: annotations are stored pixels
        return _synth.encode_image(rgb, exif_orientation=6), "jpg"
    return {"corrupt_image": good[: len(good) // 3], "random_bytes": rng.bytes(4096),
            "zero_byte": b"", "mode_cmyk": _synth.encode_image(rgb, mode="CMYK")
            }.get(fault, good), "jpg"


def _synth_fault(doc: dict, out_dir: Path, rng: np.random.Generator, *, image_id: int,
                 fault: str) -> None:
    """One image exercising `fault` (see COCO_FAULTS), with one good box object unless the
    fault is about the objects themselves."""
    h, w = (4200, 4200) if fault == "too_large" else (240, 320)
    data, ext = _fault_image(rng, fault, h, w) if fault != "too_large" else (
        _synth.encode_image(np.full((h, w, 3), 128, np.uint8)), "jpg")
    name = _add_image(doc, out_dir, image_id, data, h, w, ext=ext)
    seg, bbox = _segmentation("box", (20, 30, 120, 200), h, w, style=1)
    cat = 1
    if fault == "missing_image":
        (out_dir / "images" / name).unlink()
    elif fault == "size_mismatch":  # the record says 250 rows, the file has 240
        doc["images"][-1].update(height=h + 10)
        seg, bbox = [_synth.ellipse_polygon(100, 80, 50, 40)], [50.0, 40.0, 100.0, 80.0]
    elif fault == "bad_rle":
        seg = {"size": [h, w], "counts": seg["counts"][: len(seg["counts"]) // 2] + "zz"}
    elif fault == "bad_polygon":
        seg = [[10.0, 10.0, 50.0, 50.0]]
    elif fault == "duplicate_id":
        doc["images"].append(dict(doc["images"][-1]))
    elif fault in ("empty_mask", "polygon_outside"):  # an extra object with no pixels
        extra = ([_synth.ellipse_polygon(w + 100, h + 100, 30, 20)] if fault == "polygon_outside"
                 else {"size": [h, w], "counts": mask_utils.encode(
                     np.zeros((h, w), np.uint8, order="F"))["counts"].decode()})
        _add_ann(doc, image_id, extra, [0.0, 0.0, 0.0, 0.0], cat=2)
    elif fault == "text_control":  # control characters and an unpaired surrogate in a name
        doc["categories"].append({"id": 99, "name": "bad\x00\x1b[31m\u2028\ud800name"})
        cat = 99
    if fault != "no_objects":
        _add_ann(doc, image_id, seg, bbox, cat=cat)
