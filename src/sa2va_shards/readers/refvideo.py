"""Referring video segmentation as Sa2VA reads it: MeViS, ReVOS, Ref-YouTube-VOS.

On disk (paths relative to `root`, Sa2VA's `projects/llava_sam2/configs/sa2va_4b.py`):

- `mevis` (root `mevis/train`): `meta_expressions.json`, `mask_dict.json`,
  `JPEGImages/<video>/<frame>.jpg`;
- `revos` (root `revos`): `meta_expressions_train_.json`, `mask_dict.json`,
  `JPEGImages/<video>/<frame>.jpg` (Sa2VA's copy keeps the videos at the root: `frames_dir: .`);
- `refytvos` (root `rvos`): `meta_expressions/train/meta_expressions.json`, `mask_dict.pkl`,
  `train/JPEGImages/<video>/<frame>.jpg`.

The expression file is `{"videos": {video: {"frames": [name, ...], "expressions": {exp_id:
{"exp": text, "anno_id": [id, ...], "obj_id": [...]}}}}}`; the mask file maps a mask id (text)
to a list over the video's frames, in sorted frame-name order, of a COCO RLE or null where the
object is absent. The three differ:

- MeViS and ReVOS name the mask ids of an expression in `anno_id`; one expression can name
  several (a multi-object expression): its target is their union in every frame, as Sa2VA's
  `decode_mask` ORs them.
- Ref-YouTube-VOS expressions name no mask id, only `obj_id`: the mask id is a running count
  over every expression of the file, videos in sorted order and expression ids sorted as text
  (how VISA's `refytvos_utils` wrote `mask_dict.pkl`; Sa2VA counts in the file's own order,
  the same for the published, sorted file). Every expression of an object has its own copy of
  the object's masks; they must be equal (else `bad_annotation`). The mask file is a pickle,
  read with the restricted unpickler (plain data only).

One sample = one video with every distinct target: one object per set of mask ids (MeViS,
ReVOS) or per `obj_id` (Ref-YouTube-VOS), carrying all expressions that refer to it as
`expressions` (as written; the loader lower-cases). A multi-object expression is its own object
(the union mask), next to the objects of its members. Every frame of the list is stored (or
`max_frames` spread over the clip, as SA-V); the loader draws each step's frames. Object ids:
the mask ids joined by `+` (`12`, `12+13`), or the `obj_id` for Ref-YouTube-VOS.

Source id: the video name (ReVOS names hold `/`; the key replaces it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pycocotools import mask as mask_utils

from sa2va_shards import ops
from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.readers.base import BaseReader
from sa2va_shards.readers.sav import _spread
from sa2va_shards.records import ItemRef, RawClip, bad_item
from sa2va_shards.safe_io import DuplicateKeyDict, duplicate_keys

__all__ = ["LAYOUTS", "MevisReader", "RefYtvosReader", "RevosReader"]

#: per format: (expression file, mask file, frame folder), relative to root.
LAYOUTS: dict[str, tuple[str, str, str]] = {
    "mevis": ("meta_expressions.json", "mask_dict.json", "JPEGImages"),
    "revos": ("meta_expressions_train_.json", "mask_dict.json", "JPEGImages"),
    "refytvos": ("meta_expressions/train/meta_expressions.json", "mask_dict.pkl",
                 "train/JPEGImages"),
}


@dataclass(frozen=True, kw_only=True)
class _RefVideoReader(BaseReader):
    """Shared reader; the subclasses fix the format (`name`)."""

    #: expression file, mask file and frame folder relative to root; None: the format's layout.
    expressions: str | None = None
    masks: str | None = None
    frames_dir: str | None = None
    #: every frame (None, the default) or at most this many, spread over the whole clip.
    max_frames: int | None = None
    #: frame pixel budget; the build sets it from `image.max_pixels`.
    max_pixels: int = 100_000_000

    def __post_init__(self) -> None:
        if self.max_frames is not None and (not isinstance(self.max_frames, int)
                                            or self.max_frames < 1):
            raise ConfigError(f"{self.name} max_frames {self.max_frames!r} must be >= 1")
        for key, default in zip(("expressions", "masks", "frames_dir"), LAYOUTS[self.name],
                                strict=True):
            if getattr(self, key) is None:
                object.__setattr__(self, key, default)

    # --- index -------------------------------------------------------------------------------

    def list_items(self) -> list[ItemRef]:
        """One item per video of the expression file: its sorted frame names, its objects
        (mask ids, expressions) and, as compact JSON text, the mask lists they use."""
        videos = self._videos()
        masks = self._mask_dict()
        mask_ids = _count_mask_ids(videos) if self.name == "refytvos" else {}
        repeated = set(getattr(videos, "duplicates", ()))
        items = []
        for vid in sorted(videos):
            try:
                items.append(self._item(vid, videos[vid], masks, mask_ids.get(vid), repeated))
            except SampleError as e:
                items.append(bad_item(vid, e.reason, e.detail))
        return items

    def index_files(self) -> list[str]:
        """The expression file and the mask file `list_items` reads."""
        return [self.expressions, self.masks]

    def _videos(self) -> dict:
        path = self.path(self.expressions)
        doc, _ = self.setup_json(self.expressions, unreadable="cannot read the expression file",
                                 missing="expression file not found (check reader.root and "
                                         "reader.options.expressions)")
        videos = doc.get("videos") if isinstance(doc, dict) else None
        if "videos" in getattr(doc, "duplicates", ()):
            raise ConfigError(f"{path}: the key 'videos' is repeated; which one holds the set?")
        if not isinstance(videos, dict):
            raise ConfigError(f"{path}: expected {{'videos': {{video: ...}}}}")
        return videos

    def _mask_dict(self) -> dict:
        """mask id -> per-frame RLEs; one file for the whole set, so a bad one stops the build."""
        path = self.path(self.masks)
        how = {"unreadable": "cannot read the mask file",
               "missing": "mask file not found (check reader.options.masks)"}
        doc = (self.setup_pickle(self.masks, **how) if path.suffix in (".pkl", ".p", ".pickle")
               else self.setup_json(self.masks, **how)[0])
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: expected an object of mask ids, got {type(doc).__name__}")
        if all(isinstance(k, str) for k in doc):
            return doc
        # a pickle may key by int: ids are compared as text, so 7 and "7" would be one id
        keyed = {str(k): v for k, v in doc.items()}
        if len(keyed) != len(doc):
            raise ConfigError(f"{path}: mask ids repeat once written as text (7 and '7')")
        return keyed

    def _item(self, vid: str, entry: Any, masks: dict, counted: list | None,
              repeated: set) -> ItemRef:
        """The video's item; a malformed entry raises `SampleError` (made a reject row)."""
        if vid in repeated or duplicate_keys(entry):
            raise SampleError(Reason.BAD_ANNOTATION,
                              f"{self.expressions}: {vid}: repeated keys in its entry")
        frames = _frame_names(entry, vid)
        exps = _expressions(entry, vid)
        objects = (_objects_by_obj_id(exps, counted, masks, vid) if self.name == "refytvos"
                   else _objects_by_mask_ids(exps, vid))
        used = sorted({a for o in objects for a in o["mask_ids"]})
        for a in used:
            _check_mask_list(masks, a, len(frames), self.masks)
        return ItemRef(source_id=vid, data={
            "video": vid, "frames": frames, "objects": objects,
            "masks": _compact({a: [_plain_rle(r) for r in masks[a]] for a in used})})

    # --- load --------------------------------------------------------------------------------

    def item_files(self, ref: ItemRef) -> list[str]:
        """The files `load` reads, relative to root (every listed frame, picked or not): a
        shard is reused by an incremental build only while they are unchanged
        (`build/store.py`)."""
        return [f"{self.frames_dir}/{ref.data['video']}/{name}.jpg"
                for name in ref.data["frames"]]

    def load(self, ref: ItemRef) -> RawClip:
        """The picked frames and, per frame and object, the union of its mask ids' RLEs."""
        names = ref.data["frames"]
        picked = _spread(list(range(len(names))), self.max_frames)
        frames = self._frames(ref.data["video"], [names[i] for i in picked])
        h, w = frames.shape[1:3]
        masks = json.loads(ref.data["masks"])
        objects = ref.data["objects"]
        rles = tuple(_frame_row(masks, objects, t, h, w, f"{ref.data['video']}/{names[t]}")
                     for t in picked)
        return RawClip(
            source_id=ref.source_id, frames=frames, frame_indices=tuple(picked), rles=rles,
            objects=tuple(dict(o) for o in objects),
            meta={"video_id": ref.data["video"], "frame_names": [names[i] for i in picked],
                  "video_frame_count": len(names), "format": self.name})

    def _frames(self, vid: str, names: list[str]) -> np.ndarray:
        frames = []
        for name in names:
            shown, data = self.read_data(self.frames_dir, f"{vid}/{name}.jpg")
            frames.append(ops.decode_image(data, max_pixels=self.max_pixels, name=shown))
        if len({f.shape for f in frames}) != 1:
            sizes = sorted({f.shape[:2] for f in frames})
            raise SampleError(Reason.CORRUPT_VIDEO,
                              f"{self.frames_dir}/{vid}: frames differ in size {sizes}")
        return np.stack(frames)


@dataclass(frozen=True, kw_only=True)
class MevisReader(_RefVideoReader):
    """MeViS (`mevis/train` or `valid_u`): multi-object expressions name several mask ids."""

    name: ClassVar[str] = "mevis"


@dataclass(frozen=True, kw_only=True)
class RevosReader(_RefVideoReader):
    """ReVOS: the MeViS structure; expressions may be questions (reasoning segmentation)."""

    name: ClassVar[str] = "revos"


@dataclass(frozen=True, kw_only=True)
class RefYtvosReader(_RefVideoReader):
    """Ref-YouTube-VOS: one object per expression, mask ids counted over the file."""

    name: ClassVar[str] = "refytvos"


# --- index helpers ----------------------------------------------------------------------------


def _is_id(x: Any) -> bool:
    return isinstance(x, str) and bool(x) or isinstance(x, int) and not isinstance(x, bool)


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _frame_names(entry: Any, vid: str) -> list[str]:
    frames = entry.get("frames") if isinstance(entry, dict) else None
    if not isinstance(frames, list) or not frames or not all(
            isinstance(f, str) and f for f in frames):
        raise SampleError(Reason.BAD_ANNOTATION, f"{vid}: 'frames' must be a non-empty list of "
                                                 "frame names")
    if len(set(frames)) != len(frames):
        raise SampleError(Reason.BAD_ANNOTATION, f"{vid}: repeated frame names")
    return sorted(frames)  # the mask lists follow sorted frame names (Sa2VA, MeViS)


def _expressions(entry: dict, vid: str) -> list[tuple[str, dict]]:
    """(exp id, expression) sorted by id as text (Sa2VA's order), each checked."""
    exps = entry.get("expressions")
    if not isinstance(exps, dict):
        raise SampleError(Reason.BAD_ANNOTATION, f"{vid}: 'expressions' must be an object")
    if not exps:
        raise SampleError(Reason.NO_OBJECTS, f"{vid}: no expressions")
    for exp_id, e in exps.items():
        if not isinstance(e, dict) or not isinstance(e.get("exp"), str) or not e["exp"].strip():
            raise SampleError(Reason.BAD_ANNOTATION,
                              f"{vid}: expression {exp_id}: 'exp' must be non-empty text")
    return sorted(exps.items())


def _id_list(e: dict, key: str, vid: str, exp_id: str) -> list[str]:
    ids = e.get(key)
    if not isinstance(ids, list) or not ids or not all(_is_id(i) for i in ids):
        raise SampleError(Reason.BAD_ANNOTATION,
                          f"{vid}: expression {exp_id}: {key} {str(ids)[:60]} is not a list "
                          "of ids")
    return [str(i) for i in ids]


def _new_object(oid: str, mask_ids: list[str], obj_ids: Any) -> dict:
    return {"id": oid, "mask_ids": mask_ids, "obj_ids": obj_ids, "expressions": [],
            "exp_ids": []}


def _objects_by_mask_ids(exps: list[tuple[str, dict]], vid: str) -> list[dict]:
    """MeViS / ReVOS: one object per distinct set of mask ids, in first-expression order."""
    objects: dict[tuple[str, ...], dict] = {}
    for exp_id, e in exps:
        ids = tuple(sorted(set(_id_list(e, "anno_id", vid, exp_id)), key=_id_order))
        obj = objects.setdefault(ids, _new_object("+".join(ids), list(ids),
                                                  e.get("obj_id")))
        obj["expressions"].append(e["exp"])
        obj["exp_ids"].append(exp_id)
    return list(objects.values())


def _id_order(x: str) -> tuple[int, int | str]:
    return (0, int(x)) if x.isdigit() else (1, x)


def _count_mask_ids(videos: dict) -> dict[str, list[str]]:
    """Ref-YouTube-VOS: video -> the mask id of each of its expressions (sorted exp ids),
    counted over videos in sorted order. A video whose expressions cannot be counted makes
    every later id unknowable, so it stops the build."""
    out, count = {}, 0
    for vid in sorted(videos):
        exps = videos[vid].get("expressions") if isinstance(videos[vid], dict) else None
        if not isinstance(exps, dict):
            raise ConfigError(f"{vid}: 'expressions' is not an object, so the mask ids of this "
                              "and every later video (a running count) are unknown")
        out[vid] = [str(count + i) for i in range(len(exps))]
        count += len(exps)
    return out


def _objects_by_obj_id(exps: list[tuple[str, dict]], counted: list[str], masks: dict,
                       vid: str) -> list[dict]:
    """Ref-YouTube-VOS: one object per obj_id; its expressions' mask copies must agree."""
    objects: dict[str, dict] = {}
    for (exp_id, e), mask_id in zip(exps, counted, strict=True):
        if not _is_id(e.get("obj_id")):
            raise SampleError(Reason.BAD_ANNOTATION,
                              f"{vid}: expression {exp_id}: obj_id {e.get('obj_id')!r} is not "
                              "an id")
        oid = str(e["obj_id"])
        obj = objects.setdefault(oid, _new_object(oid, [mask_id], [oid]))
        if mask_id != obj["mask_ids"][0] and masks.get(mask_id) != masks.get(obj["mask_ids"][0]):
            raise SampleError(Reason.BAD_ANNOTATION,
                              f"{vid}: expressions {obj['exp_ids'][0]} and {exp_id} refer to "
                              f"object {oid} but their masks ({obj['mask_ids'][0]}, {mask_id}) "
                              "differ")
        obj["expressions"].append(e["exp"])
        obj["exp_ids"].append(exp_id)
    return list(objects.values())


def _check_mask_list(masks: dict, mask_id: str, n_frames: int, name: str) -> None:
    if isinstance(masks, DuplicateKeyDict) and mask_id in masks.duplicates:
        raise SampleError(Reason.BAD_ANNOTATION, f"{name}: mask id {mask_id} is repeated")
    if mask_id not in masks:
        raise SampleError(Reason.BAD_ANNOTATION, f"mask id {mask_id} is not in {name}")
    lst = masks[mask_id]
    if duplicate_keys(lst):
        raise SampleError(Reason.BAD_ANNOTATION, f"{name}: mask id {mask_id}: an RLE repeats "
                                                 f"keys {list(duplicate_keys(lst))}")
    if not isinstance(lst, list) or len(lst) != n_frames:
        got = len(lst) if isinstance(lst, list) else type(lst).__name__
        raise SampleError(Reason.BAD_ANNOTATION,
                          f"{name}: mask id {mask_id} has {got} frame entries for {n_frames} "
                          "frames")


def _plain_rle(r: Any) -> Any:
    """A JSON-ready copy (the pickle's counts are bytes; latin-1 keeps every byte, so a
    non-ASCII one is still refused at load)."""
    if isinstance(r, dict) and isinstance(r.get("counts"), bytes):
        return {**r, "counts": r["counts"].decode("latin-1")}
    return r


# --- load helpers -----------------------------------------------------------------------------


def _empty_rle(h: int, w: int) -> dict:
    return mask_utils.frPyObjects({"size": [h, w], "counts": [h * w]}, h, w)


def _frame_row(masks: dict, objects: list[dict], t: int, h: int, w: int,
               where: str) -> tuple[dict, ...]:
    """Frame t's RLE per object: the union of its mask ids' RLEs (null: absent), every RLE
    checked against the frame size first (`mask_size_mismatch`, `bad_segmentation`)."""
    row = []
    for o in objects:
        segs = [masks[a][t] for a in o["mask_ids"] if masks[a][t] is not None]
        try:
            rles = ops.segmentations_to_rles(segs, height=h, width=w)
        except SampleError as e:
            raise SampleError(e.reason, f"{where}, object {o['id']}: {e.detail}",
                              stage=e.stage) from e
        row.append(_empty_rle(h, w) if not rles else rles[0] if len(rles) == 1
                   else mask_utils.merge(rles, intersect=False))
    return tuple(row)


