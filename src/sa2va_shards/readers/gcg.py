"""GLaMM's grounded-caption (GCG) files, as Sa2VA's four GCG datasets read them.

One build reads one file of `<root>/annotations/` (Sa2VA's `data/glamm_data`), in one of three
schemas (Sa2VA registers one dataset per file, with its own repeats):

- `grandf` (`GranDf_HA_GCG_train.json`, `OpenPsgGCG_train.json`): a list of
  `{file_name, height, width, caption, groundings: {phrase: {token_positives: [s, e],
  rle_masks: [RLE, ...]}}}`; a phrase's mask is the union of its RLEs.
- `refcocog` (`RefCOCOg_GCG_train.json`): a list of one-key dicts `{id: {img_file_name, caption,
  refs: [{sentence, bbox, segmentation (polygons)}]}}`; no image size in the record (masks are
  rasterised at the image's header size); a ref's span is where its sentence first occurs in
  the lower-cased caption, and the caption itself is lower-cased (Sa2VA trains on that text).
- `flickr` (`flickr_mergedGT_GCG_train.json`): COCO-style `images[{id, file_name, height,
  width, caption}]` + `annotations[{image_id, bbox, area, tokens_positive: [[s, e], ...],
  sam_mask: RLE, ignore?}]`; an annotation's first span grounds its `sam_mask`. Images whose
  caption has fewer than 3 words, or whose short side is under 32 pixels, are `source_filter`
  rejects (Sa2VA drops them when it loads the file).

GranD-f and RefCOCOg captions are stripped of surrounding quotes and spaces first (the spans
index the stripped text, as in Sa2VA; Flickr's are used as stored). One sample = one image;
its objects are the grounded phrases sorted by span start (the k-th `[SEG]` of the caption is
the k-th object), each with `span` [s, e) into `meta["gcg"]["caption"]` and `phrase` = that
slice. A span that reaches into the next one is cut at the next phrase's start (Sa2VA v1 cuts
RefCOCOg spans one character more and leaves GranD-f ones overlapping; v2 cuts none, so its
tags nest). Phrases that cannot be
grounded (a RefCOCOg sentence not in the caption, a Flickr annotation Sa2VA ignores, a null
grounding, a span emptied by the cut) are kept, raw, in `meta["gcg"]["ungrounded"]` with a
reason: nothing is dropped silently. A sample with no grounded phrase is a `no_objects` reject
(Sa2VA replaces it by another sample).

Source id: `<file stem>_<index in the list, 7 digits>`; Flickr: `<file stem>_<image id>`.
"""

from __future__ import annotations

import io
import json
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from sa2va_shards import ops
from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.readers.base import BaseReader
from sa2va_shards.records import ItemRef, RawSample, bad_item
from sa2va_shards.safe_io import duplicate_keys, load_setup_json

__all__ = ["GCG_FILES", "GCG_SCHEMAS", "GcgReader", "find_span", "trim_spans"]

#: file stem -> (schema, image folder relative to root), as Sa2VA's configs wire them.
GCG_FILES: dict[str, tuple[str, str]] = {
    "GranDf_HA_GCG_train": ("grandf", "images/grandf/train"),
    "OpenPsgGCG_train": ("grandf", "images/coco2017"),
    "RefCOCOg_GCG_train": ("refcocog", "images/coco2014/train2014"),
    "flickr_mergedGT_GCG_train": ("flickr", "images/flickr30k/Flickr30K"),
}
GCG_SCHEMAS: tuple[str, ...] = ("grandf", "refcocog", "flickr")
#: Flickr images Sa2VA drops: captions of fewer words (split on ' '), shorter sides.
FLICKR_MIN_WORDS, FLICKR_MIN_SIDE = 3, 32
_INDEX_DIGITS = 7


@dataclass(frozen=True, kw_only=True)
class GcgReader(BaseReader):
    """Reads one GLaMM GCG file under `<root>/<annotations>` and its images."""

    name: ClassVar[str] = "gcg"
    #: the GCG file (`.json` may be left off); its stem picks the schema and image folder.
    file: str = "GranDf_HA_GCG_train.json"
    #: grandf, refcocog or flickr; "" = from the file name (`GCG_FILES`).
    schema: str = ""
    #: image folder relative to root; "" = Sa2VA's folder for this file.
    images: str = ""
    #: folder of the JSON files, relative to root.
    annotations: str = "annotations"

    def __post_init__(self) -> None:
        file = self.file if self.file.endswith(".json") else f"{self.file}.json"
        known = GCG_FILES.get(Path(file).stem)
        schema = self.schema or (known[0] if known else "")
        if schema not in GCG_SCHEMAS:
            raise ConfigError(f"reader.options: {file!r} is not a known GCG file; set schema "
                              f"to one of {', '.join(GCG_SCHEMAS)}")
        images = self.images or (known[1] if known else "")
        if not images:
            raise ConfigError(f"reader.options.images: name the image folder of {file!r}")
        object.__setattr__(self, "file", file)
        object.__setattr__(self, "schema", schema)
        object.__setattr__(self, "images", images)

    @property
    def stem(self) -> str:
        return Path(self.file).stem

    def _read(self) -> tuple[Any, bool]:
        path = Path(self.root) / self.annotations / self.file
        return load_setup_json(path, unreadable="cannot read GCG annotations",
                               missing="GCG file not found (check reader.root and "
                                       "reader.options.file)")

    def index_files(self) -> list[str]:
        """The GCG file `list_items` reads."""
        return [f"{self.annotations}/{self.file}"]

    def list_items(self) -> list[ItemRef]:
        """One `ItemRef` per list element (Flickr: per image), carrying its record as compact
        JSON so `load` never re-reads the file."""
        data, dups = self._read()
        if self.schema == "flickr":
            items = _flickr_items(self.stem, data, self.file)
        else:
            if not isinstance(data, list):
                raise ConfigError(f"{self.file}: expected a top-level JSON list, got "
                                  f"{type(data).__name__}")
            items = [_list_item(self.stem, self.file, self.schema, i, rec, dups)
                     for i, rec in enumerate(data)]
        return sorted(items, key=lambda r: r.source_id)

    def item_files(self, ref: ItemRef) -> list[str]:
        """The image `load` reads, relative to root (none for a record rejected from its
        JSON alone)."""
        try:
            parsed = _PARSERS[self.schema](json.loads(ref.data["record"]), self.file)
        except SampleError:
            return []
        name = parsed.file_name
        return [f"{self.images}/{name}"] if isinstance(name, str) else []

    def load(self, ref: ItemRef) -> RawSample:
        """The image and one mask per grounded phrase (union of its masks) at the image size.

        Raises:
            SampleError: `bad_annotation`, `missing_image`, `corrupt_image` (RefCOCOg: the
                header gives the mask size), `bad_segmentation`, `mask_size_mismatch`,
                `no_objects` (no phrase grounded).
        """
        where = f"{self.file}[{ref.data['index']}]"
        rec = json.loads(ref.data["record"])
        parsed = _PARSERS[self.schema](rec, where)
        rel, data = self.read_data(self.images, parsed.file_name)
        h, w = parsed.size or _header_size(data, rel)
        phrases, ungrounded = trim_spans(parsed.phrases)
        if not phrases:
            n = len(parsed.ungrounded) + len(ungrounded)
            raise SampleError(Reason.NO_OBJECTS, f"{where}: no phrase of the caption is "
                                                 f"grounded ({n} ungrounded)")
        rles = tuple(_union(p.segs, h, w) for p in phrases)
        objects = tuple({**p.extra, "id": i + 1, "span": list(p.span),
                         "phrase": parsed.caption[p.span[0]:p.span[1]]}
                        for i, p in enumerate(phrases))
        meta = {"file_name": parsed.file_name, "task": self.stem,
                "gcg": {"caption": parsed.caption, "schema": self.schema,
                        "ungrounded": [*parsed.ungrounded, *ungrounded]}}
        return RawSample(source_id=ref.source_id, image=data, image_name=rel, rles=rles,
                         objects=objects, meta=meta)



# --- index ------------------------------------------------------------------------------------

def _compact(rec: Any) -> str:
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=False)


def _list_item(stem: str, file: str, schema: str, i: int, rec: Any, dups: bool) -> ItemRef:
    source_id = f"{stem}_{i:0{_INDEX_DIGITS}d}"
    where = f"{file}[{i}]"
    if schema == "refcocog":  # {id: record}: Sa2VA takes the first key and keeps it as `id`
        if not isinstance(rec, dict) or len(rec) != 1:
            return bad_item(source_id, Reason.BAD_ANNOTATION,
                            f"{where}: expected a one-key {{id: record}} object")
        (key, rec), = rec.items()
        if isinstance(rec, dict):
            rec = {**rec, "id": key}
    if not isinstance(rec, dict):
        return bad_item(source_id, Reason.BAD_ANNOTATION,
                        f"{where}: element is {type(rec).__name__}, not an object")
    if dups and duplicate_keys(rec):
        return bad_item(source_id, Reason.BAD_ANNOTATION,
                        f"{where}: repeats keys {list(duplicate_keys(rec))}")
    return ItemRef(source_id=source_id, data={"index": i, "record": _compact(rec)})


def _flickr_items(stem: str, data: Any, file: str) -> list[ItemRef]:
    """One item per COCO image with its annotations; Sa2VA's two image filters become
    `source_filter` rejects; repeated annotation ids stop the build (Sa2VA asserts)."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations", []), list):
        raise ConfigError(f"{file}: not a COCO-style file (images / annotations lists)")
    anns: dict[Any, list] = defaultdict(list)
    ann_ids = [a["id"] for a in data.get("annotations", []) if isinstance(a, dict)
               and isinstance(a.get("id"), int | str)]
    if len(ann_ids) != len(set(ann_ids)):
        raise ConfigError(f"{file}: annotation ids are not unique")
    for a in data.get("annotations", []):
        if isinstance(a, dict) and isinstance(a.get("image_id"), int | str):
            anns[a["image_id"]].append(a)
    return [_flickr_item(stem, file, i, img, anns) for i, img in enumerate(data["images"])]


def _flickr_item(stem: str, file: str, i: int, img: Any, anns: dict) -> ItemRef:
    image_id = img.get("id") if isinstance(img, dict) else None
    if not isinstance(image_id, int | str) or isinstance(image_id, bool):
        return bad_item(f"{stem}_row{i:0{_INDEX_DIGITS}d}", Reason.BAD_ANNOTATION,
                        f"{file} images[{i}]: no usable id")
    source_id = f"{stem}_{image_id:012d}" if isinstance(image_id, int) else f"{stem}_{image_id}"
    caption, h, w = img.get("caption"), img.get("height"), img.get("width")
    if not isinstance(caption, str) or not all(isinstance(v, int | float) for v in (h, w)):
        return bad_item(source_id, Reason.BAD_ANNOTATION,
                        f"{file} images[{i}]: caption / height / width missing or mistyped")
    if len(caption.split(" ")) < FLICKR_MIN_WORDS:
        return bad_item(source_id, Reason.SOURCE_FILTER,
                        f"caption {caption!r:.60} has under {FLICKR_MIN_WORDS} words")
    if min(h, w) < FLICKR_MIN_SIDE:
        return bad_item(source_id, Reason.SOURCE_FILTER,
                        f"image {w}x{h} has a side under {FLICKR_MIN_SIDE} pixels")
    rec = {**img, "ann_info": anns.get(image_id, [])}
    return ItemRef(source_id=source_id, data={"index": i, "record": _compact(rec)})


# --- parsing ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Phrase:
    span: tuple[int, int]
    #: the phrase's segmentations (polygons or RLEs), merged by union.
    segs: list
    #: raw fields kept on the object (label, bbox, annotation id).
    extra: dict


@dataclass(frozen=True)
class _Parsed:
    file_name: str
    caption: str
    #: (H, W) from the record, or None: read from the image header.
    size: tuple[int, int] | None
    phrases: list[_Phrase]
    ungrounded: list[dict]


def _bad(where: str, detail: str) -> SampleError:
    return SampleError(Reason.BAD_ANNOTATION, f"{where}: {detail}")


def _caption(rec: dict, key: str, where: str, *, strip: bool = True) -> str:
    """The caption the spans index: GranD-f / RefCOCOg strip quotes and spaces first (as
    Sa2VA does); Flickr's spans index the caption as stored."""
    caption = rec.get(key)
    if not isinstance(caption, str):
        raise _bad(where, f"{key} is {type(caption).__name__}, not text")
    return caption.strip('"').strip() if strip else caption


def _span(value: Any, caption: str, where: str) -> tuple[int, int]:
    """A [start, end) character span inside the caption, checked."""
    if (not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise _bad(where, f"span {value!r:.40} is not [start, end]")
    s, e = value
    if not 0 <= s < e <= len(caption):
        raise _bad(where, f"span [{s}, {e}] is outside the {len(caption)}-character caption")
    return s, e


def _size(rec: dict, where: str) -> tuple[int, int]:
    try:
        return ops.strict_dim(rec["height"]), ops.strict_dim(rec["width"])
    except (KeyError, TypeError, ValueError) as e:
        raise _bad(where, f"height/width: {type(e).__name__}: {e}") from e


def _file_name(rec: dict, key: str, where: str) -> str:
    name = rec.get(key)
    if not isinstance(name, str):
        raise _bad(where, f"{key} is {type(name).__name__}, not a file name")
    return name


def _parse_grandf(rec: dict, where: str) -> _Parsed:
    caption = _caption(rec, "caption", where)
    groundings = rec.get("groundings")
    if not isinstance(groundings, dict):
        raise _bad(where, "groundings is not a {phrase: grounding} object")
    phrases, ungrounded = [], []
    for label, g in groundings.items():
        if g is None:  # Sa2VA skips null groundings
            ungrounded.append({"label": label, "reason": "null_grounding"})
            continue
        if not isinstance(g, dict) or not isinstance(g.get("rle_masks"), list):
            raise _bad(where, f"grounding {label!r:.40} has no rle_masks list")
        phrases.append(_Phrase(_span(g.get("token_positives"), caption, where),
                               g["rle_masks"], {"label": label}))
    return _Parsed(_file_name(rec, "file_name", where), caption, _size(rec, where), phrases,
                   ungrounded)


def find_span(sentence: str, caption: str) -> tuple[int, int] | None:
    """Where a RefCOCOg-GCG ref's sentence first occurs in the (lower-cased) caption, both
    compared lower-cased. Sa2VA v1 tests `sentence.lower() in caption` but then searches the
    sentence as written, so a sentence with a capital letter gets span (-1, -1) there; v2
    searches the lower-cased sentence, as here."""
    needle = sentence.lower()
    at = caption.find(needle) if needle else -1
    return None if at < 0 else (at, at + len(needle))


def _parse_refcocog(rec: dict, where: str) -> _Parsed:
    raw = _caption(rec, "caption", where)
    caption = raw.lower()
    if len(caption) != len(raw):  # a few Unicode letters change length when lower-cased
        raise _bad(where, "caption changes length when lower-cased: spans would not align")
    refs = rec.get("refs")
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise _bad(where, "refs is not a list of objects")
    phrases, ungrounded = [], []
    for j, ref in enumerate(refs):
        sentence = ref.get("sentence")
        if not isinstance(sentence, str):
            raise _bad(where, f"refs[{j}].sentence is not text")
        span = find_span(sentence, caption)
        extra = {k: v for k, v in ref.items() if k != "segmentation"}
        if span is None:
            ungrounded.append({**extra, "reason": "sentence_not_in_caption"})
            continue
        seg = ref.get("segmentation")
        phrases.append(_Phrase(span, [seg], {**extra, "ref": j}))
    return _Parsed(_file_name(rec, "img_file_name", where), caption, None, phrases, ungrounded)


def _flickr_skip(ann: dict, h: int, w: int) -> str | None:
    """Why Sa2VA ignores this annotation (its flag, or a box outside / degenerate), or None."""
    if ann.get("ignore", False):
        return "ignore_flag"
    try:
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        area = float(ann["area"])
    except (KeyError, TypeError, ValueError):
        return "bad_bbox"
    inter_w = max(0.0, min(x + bw, w) - max(x, 0.0))
    inter_h = max(0.0, min(y + bh, h) - max(y, 0.0))
    if inter_w * inter_h == 0 or area <= 0 or bw < 1 or bh < 1:
        return "degenerate_bbox"
    return None


def _parse_flickr(rec: dict, where: str) -> _Parsed:
    caption = _caption(rec, "caption", where, strip=False)
    h, w = _size(rec, where)
    phrases, ungrounded = [], []
    for ann in rec.get("ann_info", []):
        extra = {k: v for k, v in ann.items() if k not in ("sam_mask", "segmentation")}
        skip = _flickr_skip(ann, h, w)
        spans = ann.get("tokens_positive")
        if skip is None and (not isinstance(spans, list) or not spans):
            skip = "no_tokens_positive"
        if skip:
            ungrounded.append({**extra, "reason": skip})
            continue
        phrases.append(_Phrase(_span(spans[0], caption, where), [ann.get("sam_mask")],
                               {k: v for k, v in extra.items() if k != "tokens_positive"}
                               | {"ann_id": ann.get("id")}))
    return _Parsed(_file_name(rec, "file_name", where), caption, (h, w), phrases, ungrounded)


_PARSERS = {"grandf": _parse_grandf, "refcocog": _parse_refcocog, "flickr": _parse_flickr}


def trim_spans(phrases: list[_Phrase]) -> tuple[list[_Phrase], list[dict]]:
    """Phrases in caption order with no two spans overlapping: a span reaching into the next
    one ends where the next begins; one left empty (same start) is ungrounded."""
    ordered = sorted(phrases, key=lambda p: p.span[0])  # stable: ties keep file order
    kept, ungrounded = [], []
    for i, p in enumerate(ordered):
        s, e = p.span
        if i + 1 < len(ordered):
            e = min(e, ordered[i + 1].span[0])
        if e <= s:
            ungrounded.append({**p.extra, "span": list(p.span), "reason": "overlaps_next_phrase"})
            continue
        kept.append(_Phrase((s, e), p.segs, p.extra))
    return kept, ungrounded


def _header_size(data: bytes, name: str) -> tuple[int, int]:
    """(H, W) from the image header (no pixels decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            w, h = Image.open(io.BytesIO(data)).size
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on garbage headers
        raise SampleError(Reason.CORRUPT_IMAGE, f"{name}: {type(e).__name__}") from e
    return h, w


def _union(segs: list, h: int, w: int) -> dict:
    """One phrase's mask: the union of its segmentations as a compressed RLE (str counts);
    no segmentation gives an empty mask (the transform then drops the phrase)."""
    rles = ops.segmentations_to_rles(segs, height=h, width=w)
    rles = [{"size": [h, w], "counts": r["counts"].encode("ascii")
             if isinstance(r["counts"], str) else r["counts"]} for r in rles]
    if not rles:
        return ops.rle_encode(np.zeros((1, h, w), np.uint8))[0]
    merged = rles[0] if len(rles) == 1 else mask_utils.merge(rles, intersect=False)
    return {"size": [h, w], "counts": merged["counts"].decode("ascii")}
