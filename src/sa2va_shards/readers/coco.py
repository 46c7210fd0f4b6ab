"""COCO-style instance sets: `instances.json` + an image folder.

Segmentations may be polygons, compressed RLE or uncompressed RLE (`iscrowd` objects). One
sample = one image with all its annotations, in annotation-id order. Masks are decoded at the
image record's height/width and checked against the real image later (a mismatch is a reject).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

from sa2va_shards import ops
from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.readers.base import BaseReader
from sa2va_shards.records import ItemRef, RawSample, bad_item
from sa2va_shards.safe_io import DuplicateKeyDict, duplicate_keys

__all__ = ["CocoReader", "annotation_problem", "category_names", "group_annotations",
           "image_fields", "image_sample", "is_id", "load_instances", "source_id_of"]


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


def image_sample(reader: BaseReader, ref: ItemRef, images: str, **meta: Any) -> RawSample:
    """The load of the COCO-based readers: the image record's file from the `images` folder
    and every object's segmentation as an RLE at the record's height/width; `meta` adds to
    the file name and image id."""
    img, objects = ref.data["image"], ref.data["objects"]
    h, w, file_name = image_fields(img)
    rel, data = reader.read_data(images, file_name)
    rles = ops.segmentations_to_rles([o["segmentation"] for o in objects], height=h, width=w)
    return RawSample(
        source_id=ref.source_id,
        image=data,
        image_name=rel,
        rles=tuple(rles),
        objects=tuple({k: v for k, v in o.items() if k != "segmentation"} for o in objects),
        meta={"file_name": file_name, "image_id": img.get("id"), **meta},
    )


def load_instances(reader: BaseReader, rel: str) -> tuple[dict[str, Any], bool]:
    """The COCO instances JSON `<root>/<rel>` and whether any object in it repeats a key;
    anything unreadable stops the build (`ConfigError`): it indexes the whole set."""
    path = reader.path(rel)
    data, dups = reader.setup_json(rel, unreadable="cannot read annotations",
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
class CocoReader(BaseReader):
    """Reads `<root>/<annotations>` and images from `<root>/<images>/<file_name>`."""

    name: ClassVar[str] = "coco"
    annotations: str = "annotations/instances.json"
    images: str = "images"

    def list_items(self) -> list[ItemRef]:
        """One `ItemRef` per image record, with its annotations and category names; a record
        that cannot be an input (wrong types, repeated keys, orphan annotations) becomes a
        `bad_item`, rejected by the plan with its reason."""
        data, dups = load_instances(self, self.annotations)
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

    def index_files(self) -> list[str]:
        """The instances file `list_items` reads."""
        return [self.annotations]

    def item_files(self, ref: ItemRef) -> list[str]:
        """The files `load` reads, relative to root: a shard is reused by an incremental build
        only while they are unchanged (`build/store.py`)."""
        return image_files(ref.data.get("image"), self.images)

    def load(self, ref: ItemRef) -> RawSample:
        """Read the image bytes and turn every segmentation into an RLE at the record's size."""
        return image_sample(self, ref, self.images)
