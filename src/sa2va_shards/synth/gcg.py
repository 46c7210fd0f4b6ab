"""Synthetic GLaMM GCG files in their three published schemas (for `GcgReader.synth`).

Captions are built from phrases whose spans are known, so tests can derive every expected
answer and mask from the raw JSON alone. Features exercised: a phrase with two overlapping RLEs
(union), a caption wrapped in quotes (spans index the stripped text), a RefCOCOg sentence with a
capital letter (found case-insensitively), overlapping RefCOCOg spans, a Flickr annotation with
`ignore`, and one element per fault kind in the file whose schema has it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sa2va_shards.synth import common as _synth

__all__ = ["FAULT_FILE", "GCG_FAULTS", "write"]

#: fault kind -> the file (stem) it is appended to.
FAULT_FILE: dict[str, str] = {
    "missing_image": "GranDf_HA_GCG_train", "corrupt_image": "GranDf_HA_GCG_train",
    "bad_rle": "GranDf_HA_GCG_train", "size_mismatch": "GranDf_HA_GCG_train",
    "bad_span": "GranDf_HA_GCG_train", "no_grounding": "GranDf_HA_GCG_train",
    "empty_mask": "GranDf_HA_GCG_train", "bad_record": "GranDf_HA_GCG_train",
    "bad_polygon": "RefCOCOg_GCG_train", "unmatched_phrase": "RefCOCOg_GCG_train",
    "short_caption": "flickr_mergedGT_GCG_train", "small_image": "flickr_mergedGT_GCG_train",
    "ignored_ann": "flickr_mergedGT_GCG_train",
}
GCG_FAULTS: tuple[str, ...] = tuple(FAULT_FILE)
_FOLDERS = {"GranDf_HA_GCG_train": "images/grandf/train", "OpenPsgGCG_train": "images/coco2017",
            "RefCOCOg_GCG_train": "images/coco2014/train2014",
            "flickr_mergedGT_GCG_train": "images/flickr30k/Flickr30K"}
_COLORS = ("red", "blue", "green", "grey", "yellow", "brown")
_NOUNS = ("dog", "person", "cup", "chair", "car", "cat", "tree")
#: no image smaller than Flickr's 32-pixel side, except the small_image fault.
_SIZES = _synth.SIZES[:-1]


def _caption(phrases: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """'A photo of P1 next to P2 and P3.' and the [start, end) span of each phrase."""
    text, spans = "A photo of ", []
    for j, p in enumerate(phrases):
        if j:
            text += " next to " if j == 1 else " and "
        spans.append((len(text), len(text) + len(p)))
        text += p
    return text + ".", spans


def _phrases(rng: np.random.Generator, n: int) -> list[str]:
    return [f"a {rng.choice(_COLORS)} {_NOUNS[j]}" for j in range(n)]


def _rle(kind: str, shape: tuple, h: int, w: int) -> dict:
    return _synth.segmentation(kind, shape, h, w, style=1)


def _image(out: Path, stem: str, name: str, rng: np.random.Generator, h: int, w: int,
           data: bytes | None = None) -> None:
    folder = out / _FOLDERS[stem]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data if data is not None else
                                _synth.encode_image(_synth.make_image(rng, h, w)))


def _grandf(out: Path, stem: str, rng: np.random.Generator, i: int) -> dict:
    h, w = _SIZES[i % len(_SIZES)]
    name = f"sa_{1000 + i}.jpg" if stem.startswith("GranDf") else f"{1000 + i:012d}.jpg"
    _image(out, stem, name, rng, h, w)
    shapes = _synth.random_objects(rng, h, w, 2 + i % 2)
    caption, spans = _caption(_phrases(rng, len(shapes)))
    groundings = {}
    for j, ((kind, shape), (s, e)) in enumerate(zip(shapes, spans, strict=True)):
        masks = [_rle(kind, shape, h, w)]
        if j == 0:  # a phrase with two overlapping parts: its mask is their union
            masks.append(_rle("box", (0, 0, h // 2 + 1, w // 3 + 1), h, w))
        groundings[caption[s:e]] = {"token_positives": [s, e], "rle_masks": masks}
    if i % 2:  # groundings listed out of caption order: phrases are sorted by span
        groundings = dict(reversed(groundings.items()))
    return {"file_name": name, "height": h, "width": w, "image_id": 1000 + i,
            "caption": f'"{caption}"' if i % 3 == 0 else caption, "groundings": groundings}


def _refcocog(out: Path, rng: np.random.Generator, i: int) -> dict:
    h, w = _SIZES[i % len(_SIZES)]
    name = f"COCO_train2014_{2000 + i:012d}.jpg"
    _image(out, "RefCOCOg_GCG_train", name, rng, h, w)
    n = 2 + i % 2
    caption, spans = _caption(_phrases(rng, n))
    refs = []
    for j, (s, e) in enumerate(spans):
        cx, cy = w * (j + 1) / (n + 1), h / 2
        sentence = caption[s:e]
        if j == 0 and i % 2 == 0:  # a capital letter: Sa2VA's search misses it, ours does not
            sentence = sentence[0].upper() + sentence[1:]
        refs.append({"sentence": sentence, "bbox": [cx - 10, cy - 10, 20, 20],
                     "segmentation": [_synth.ellipse_polygon(cx, cy, w / (2 * n + 2), h / 4)]})
    if i % 3 == 1:  # a sentence starting inside phrase 1 and covering phrase 2: spans are cut
        s1, s2 = spans[0][0] + 2, spans[1][1]
        refs.append({"sentence": caption[s1:s2], "bbox": [0, 0, 10, 10],
                     "segmentation": [_synth.ellipse_polygon(w / 2, h / 3, w / 5, h / 6)]})
    return {str(3000 + i): {"img_file_name": name, "caption": caption.upper()[:1] + caption[1:],
                            "refs": refs}}


def _flickr(out: Path, rng: np.random.Generator, i: int, doc: dict) -> None:
    h, w = _SIZES[i % len(_SIZES)]
    image_id, name = 4000 + i, f"{4000 + i}.jpg"
    _image(out, "flickr_mergedGT_GCG_train", name, rng, h, w)
    shapes = _synth.random_objects(rng, h, w, 2)
    caption, spans = _caption(_phrases(rng, 2))
    doc["images"].append({"id": image_id, "file_name": name, "height": h, "width": w,
                          "caption": caption})
    for (kind, shape), span in zip(shapes, spans, strict=True):
        _flickr_ann(doc, image_id, _synth.shape_mask(kind, shape, h, w), span,
                    _rle(kind, shape, h, w))


def _flickr_ann(doc: dict, image_id: int, mask: np.ndarray, span: tuple[int, int],
                rle: dict, **extra: Any) -> None:
    ys, xs = np.nonzero(mask)
    box = [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)] \
        if len(xs) else [0.0, 0.0, 0.0, 0.0]
    doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id,
                               "bbox": box, "area": float(mask.sum()),
                               "tokens_positive": [list(span)], "sam_mask": rle, **extra})


def _grandf_fault(out: Path, rng: np.random.Generator, fault: str) -> dict:
    stem, h, w = "GranDf_HA_GCG_train", 240, 320
    name = f"fault_{fault}.jpg"
    good = _synth.encode_image(_synth.make_image(rng, h, w))
    if fault != "missing_image":
        _image(out, stem, name, rng, h, w, good[: len(good) // 3]
               if fault == "corrupt_image" else good)
    caption, spans = _caption(["a red dog", "a blue cup"])
    rles = [_rle("box", (20, 30, 120, 200), h, w), _rle("box", (130, 40, 200, 90), h, w)]
    if fault == "bad_rle":
        rles[1] = _synth.truncated_rle(rles[1])
    elif fault == "empty_mask":  # written, with the empty phrase dropped as an object reject
        rles[1] = _rle("box", (0, 0, 0, 0), h, w)
    groundings = {caption[s:e]: {"token_positives": [s, e], "rle_masks": [r]}
                  for (s, e), r in zip(spans, rles, strict=True)}
    if fault == "bad_span":
        groundings["a blue cup"]["token_positives"] = [spans[1][0], len(caption) + 5]
    elif fault == "no_grounding":
        groundings = {k: None for k in groundings}
    elem = {"file_name": name, "height": h + 10 if fault == "size_mismatch" else h,
            "width": w, "image_id": 0, "caption": caption, "groundings": groundings}
    if fault == "bad_record":
        del elem["caption"]
    return elem


def _refcocog_fault(out: Path, rng: np.random.Generator, fault: str) -> dict:
    h, w, name = 240, 320, f"fault_{fault}.jpg"
    _image(out, "RefCOCOg_GCG_train", name, rng, h, w)
    caption = "a man holding a red cup beside a tree."
    refs = [{"sentence": "a man", "bbox": [0, 0, 5, 5],
             "segmentation": [_synth.ellipse_polygon(100, 100, 40, 60)]},
            {"sentence": "a tree" if fault == "bad_polygon" else "a green bicycle",
             "bbox": [0, 0, 5, 5], "segmentation": _synth.BAD_POLYGON if fault == "bad_polygon"
             else [_synth.ellipse_polygon(250, 100, 30, 50)]}]
    return {f"fault_{fault}": {"img_file_name": name, "caption": caption, "refs": refs}}


def _flickr_fault(out: Path, rng: np.random.Generator, fault: str, doc: dict, k: int) -> None:
    h, w = (20, 300) if fault == "small_image" else (240, 320)
    image_id, name = 9000 + k, f"fault_{fault}.jpg"
    _image(out, "flickr_mergedGT_GCG_train", name, rng, h, w)
    caption, spans = _caption(["a red dog", "a blue cup"])
    doc["images"].append({"id": image_id, "file_name": name, "height": h, "width": w,
                          "caption": "two dogs" if fault == "short_caption" else caption})
    for j, span in enumerate(spans):
        m = _synth.box_mask(h, w, 2 + 5 * j, 2, 9 + 5 * j, 40)
        extra = {"ignore": True} if fault == "ignored_ann" and j == 1 else {}
        _flickr_ann(doc, image_id, m, span, _rle("box", (2 + 5 * j, 2, 9 + 5 * j, 40), h, w),
                    **extra)


def write(out: Path, *, n_items: int, seed: int, faults: tuple[str, ...]) -> Path:
    """The four GCG files under `<out>/annotations/` and their images; returns `out`."""
    unknown = set(faults) - set(GCG_FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {GCG_FAULTS}")
    rng = np.random.default_rng(seed)
    docs: dict[str, Any] = {stem: [] for stem in _FOLDERS}
    flickr: dict[str, list] = {"images": [], "annotations": [], "categories": []}
    for i in range(n_items):
        docs["GranDf_HA_GCG_train"].append(_grandf(out, "GranDf_HA_GCG_train", rng, i))
        docs["OpenPsgGCG_train"].append(_grandf(out, "OpenPsgGCG_train", rng, i))
        docs["RefCOCOg_GCG_train"].append(_refcocog(out, rng, i))
        _flickr(out, rng, i, flickr)
    for k, fault in enumerate(faults):
        stem = FAULT_FILE[fault]
        if stem == "GranDf_HA_GCG_train":
            docs[stem].append(_grandf_fault(out, rng, fault))
        elif stem == "RefCOCOg_GCG_train":
            docs[stem].append(_refcocog_fault(out, rng, fault))
        else:
            _flickr_fault(out, rng, fault, flickr, k)
    docs["flickr_mergedGT_GCG_train"] = flickr
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for stem, doc in docs.items():
        (out / "annotations" / f"{stem}.json").write_text(json.dumps(doc))
    return out
