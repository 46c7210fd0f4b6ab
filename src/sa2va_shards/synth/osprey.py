"""An Osprey-724K set: the five `Osprey-724K/*.json` files and COCO image folders, with injected
faults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sa2va_shards.readers.osprey import COCO_IMAGE_DIRS, OSPREY_FILES
from sa2va_shards.synth import common

__all__ = ["OSPREY_FAULTS", "write"]

#: fault kinds `write` can inject (appended to osprey_conversation.json, file_name
#: `fault_<kind>.jpg`).
OSPREY_FAULTS: tuple[str, ...] = (
    "missing_image", "corrupt_image", "size_mismatch", "bad_rle", "bad_polygon", "no_objects",
    "bad_record", "empty_mask", "question_only", "answer_only",
)


def write(out_dir: Path, *, n_items: int = 24, seed: int = 0,
          faults: tuple[str, ...] = ()) -> Path:
    """Write an Osprey-724K-style set: the five JSON files (item i goes to file i % 5) with
    conversations / descriptions that name `<regionN>`, images spread over the four COCO
    folders (one name also in a later folder, at another size, so lookup order matters),
    polygons, compressed and uncompressed RLE, a 2x2 region (K = 0) in every third
    element; plus one element per fault kind, appended to osprey_conversation.json."""
    rng = np.random.default_rng(seed)
    for folder in COCO_IMAGE_DIRS:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    docs: dict[str, list] = {f: [] for f in OSPREY_FILES}
    for i in range(n_items):
        file = OSPREY_FILES[i % len(OSPREY_FILES)]
        docs[file].append(_synth_element(out_dir, rng, i, Path(file).stem))
    docs[OSPREY_FILES[0]] += [_synth_fault(out_dir, rng, f) for f in faults]
    (out_dir / "Osprey-724K").mkdir(parents=True, exist_ok=True)
    for file, doc in docs.items():
        (out_dir / "Osprey-724K" / file).write_text(json.dumps(doc))
    return out_dir


_COLORS = ("red", "blue", "green", "grey", "yellow", "brown")
_NOUNS = ("dog", "person", "cup", "chair", "car", "cat")


def _image_name(folder: str, image_id: int) -> str:
    # 2014 folders hold COCO_<split>_<id>.jpg, 2017 folders <id>.jpg, as downloaded
    split = folder.rsplit("/", 1)[-1]
    return f"COCO_{split}_{image_id:012d}.jpg" if split.endswith("2014") else f"{image_id:012d}.jpg"


def _texts(task: str, n: int, rng: np.random.Generator) -> dict[str, Any]:
    words = [f"{rng.choice(_COLORS)} {rng.choice(_NOUNS)}" for _ in range(n)]
    if task == "osprey_detail_description":
        return {"description": [f"<region{i + 1}>: A {w} seen from the side, partly in shadow."
                                for i, w in enumerate(words)]}
    question = {"osprey_short_form": "What is <region{r}>?",
                "osprey_part_level": "Which part of the object is <region{r}>?",
                "osprey_lvis_positive_negative": "Is <region{r}> a {w}?"}.get(
        task, "What can you tell me about <region{r}>?")
    turns = []
    for i, w in enumerate(words):
        q = question.format(r=i + 1, w=w)
        turns += [{"from": "human", "value": ("<image>\n" if i == 0 else "") + q},
                  {"from": "gpt", "value": f"It is a {w}." if "short" not in task else w}]
    return {"conversations": turns}


def _synth_regions(rng: np.random.Generator, h: int, w: int, i: int) -> list[dict]:
    shapes = common.random_objects(rng, h, w, int(rng.integers(1, 5)))
    if i % 3 == 0:  # a few-pixel region: K = 0 under nearest
        shapes.append(("box", common.tiny_box(h, w)))
    return [{"segmentation": common.segmentation(kind, shape, h, w, style=(i + j) % 3),
             "category_id": int(rng.integers(1, 81))}
            for j, (kind, shape) in enumerate(shapes)]


def _synth_element(out_dir: Path, rng: np.random.Generator, i: int, task: str) -> dict:
    h, w = common.SIZES[i % len(common.SIZES)]
    folder = COCO_IMAGE_DIRS[i % len(COCO_IMAGE_DIRS)]
    name = _image_name(folder, 100 + i)
    (out_dir / folder / name).write_bytes(common.encode_image(common.make_image(rng, h, w)))
    if i == 1:  # a same-named, differently sized file in a later folder must not be used
        decoy = common.encode_image(common.make_image(rng, h // 2 + 3, w // 2 + 5))
        (out_dir / COCO_IMAGE_DIRS[-1] / name).write_bytes(decoy)
    regions = _synth_regions(rng, h, w, i)
    return {"file_name": name, "height": h, "width": w, "annotation": regions,
            **_texts(task, len(regions), rng)}


def _synth_fault(out_dir: Path, rng: np.random.Generator, fault: str) -> dict:
    h, w = 240, 320
    name = f"fault_{fault}.jpg"
    good = common.encode_image(common.make_image(rng, h, w))
    if fault != "missing_image":
        data = good[: len(good) // 3] if fault == "corrupt_image" else good
        (out_dir / COCO_IMAGE_DIRS[2] / name).write_bytes(data)
    seg: Any = common.segmentation("box", (20, 30, 120, 200), h, w, style=1)
    regions = [{"segmentation": seg}]
    if fault == "bad_rle":
        regions = [{"segmentation": common.truncated_rle(seg)}]
    elif fault == "bad_polygon":
        regions = [{"segmentation": common.BAD_POLYGON}]
    elif fault == "no_objects":
        regions = []
    elif fault == "size_mismatch":  # a polygon: decoded at the JSON size, then rejected
        regions = [{"segmentation": [common.ellipse_polygon(100, 80, 50, 40)]}]
    elif fault == "empty_mask":  # written, with the empty region dropped as an object reject
        regions.append({"segmentation": common.segmentation("box", (0, 0, 0, 0), h, w, style=1)})
    elem = {"file_name": name, "height": h + 10 if fault == "size_mismatch" else h, "width": w,
            "annotation": regions, **_texts("osprey_conversation", max(len(regions), 1), rng)}
    if fault == "bad_record":
        del elem["height"]
    elif fault in ("question_only", "answer_only"):  # no complete turn pair
        elem["conversations"] = elem["conversations"][:1] if fault == "question_only" else \
            elem["conversations"][1:2]
    return elem
