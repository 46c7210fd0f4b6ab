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
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pycocotools import mask as mask_utils

from sa2va_shards import ops
from sa2va_shards.errors import ConfigError, Reason, SampleError
from sa2va_shards.readers import _synth
from sa2va_shards.readers._safe_pickle import safe_load
from sa2va_shards.readers.sav import _spread
from sa2va_shards.records import ItemRef, RawClip, bad_item
from sa2va_shards.safe_io import (
    DuplicateKeyDict,
    duplicate_keys,
    load_json,
    load_setup_json,
    open_regular,
    read_data_file,
)

__all__ = ["REFVIDEO_FAULTS", "MevisReader", "RefYtvosReader", "RevosReader"]

#: per format: (expression file, mask file, frame folder), relative to root.
LAYOUTS: dict[str, tuple[str, str, str]] = {
    "mevis": ("meta_expressions.json", "mask_dict.json", "JPEGImages"),
    "revos": ("meta_expressions_train_.json", "mask_dict.json", "JPEGImages"),
    "refytvos": ("meta_expressions/train/meta_expressions.json", "mask_dict.pkl",
                 "train/JPEGImages"),
}
#: fault kinds `synth` can inject: one video each, named `fault_<kind>`.
REFVIDEO_FAULTS: tuple[str, ...] = (
    "missing_frame", "corrupt_frame", "frame_sizes", "bad_rle", "size_mismatch",
    "missing_mask_id", "mask_length", "bad_expression", "no_expressions", "unsafe_frame_name",
)


@dataclass(frozen=True, kw_only=True)
class _RefVideoReader:
    """Shared reader; the subclasses fix the format (`name`)."""

    name: ClassVar[str] = ""
    root: str
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

    def _videos(self) -> dict:
        path = Path(self.root) / self.expressions
        doc, _ = load_setup_json(path, unreadable="cannot read the expression file",
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
        path = Path(self.root) / self.masks
        try:
            with open_regular(path) as f:
                doc = (safe_load(f, name=path.name) if path.suffix in (".pkl", ".p", ".pickle")
                       else load_json(f)[0])
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: mask file not found (check reader.options.masks)") from e
        except (OSError, ValueError, pickle.UnpicklingError) as e:
            raise ConfigError(f"{path}: cannot read the mask file: {e}") from e
        except SampleError as e:  # an unsafe or expanding pickle
            raise ConfigError(f"{path}: {e.reason.value}: {e.detail}") from e
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
        base = Path(self.root) / self.frames_dir
        frames = []
        for name in names:
            rel = f"{vid}/{name}.jpg"
            data = read_data_file(base, rel, shown=f"{self.frames_dir}/{rel}")
            frames.append(ops.decode_image(data, max_pixels=self.max_pixels,
                                           name=f"{self.frames_dir}/{rel}"))
        if len({f.shape for f in frames}) != 1:
            sizes = sorted({f.shape[:2] for f in frames})
            raise SampleError(Reason.CORRUPT_VIDEO,
                              f"{self.frames_dir}/{vid}: frames differ in size {sizes}")
        return np.stack(frames)

    @classmethod
    def synth(cls, out_dir: Path, *, n_items: int = 6, seed: int = 0,
              faults: tuple[str, ...] = ()) -> Path:
        """Write a small set in this format's layout (see `_write_synth`)."""
        return _write_synth(cls.name, Path(out_dir), n_items=n_items, seed=seed, faults=faults)


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


# --- synth ------------------------------------------------------------------------------------

_COLOURS = ((230, 40, 40), (40, 200, 60), (40, 80, 230))
_NAMES = ("red", "green", "blue")


def _object_masks(t: int, h: int, w: int) -> np.ndarray:
    """(4, h, w): three boxes moving right (the blue one absent in odd frames) and a 2x2
    object no grid point hits."""
    m = np.zeros((4, h, w), np.uint8)
    bh, bw = h // 5, w // 5
    for k in range(3):
        if k == 2 and t % 2:
            continue
        y0, x0 = (10 + (bh + 8) * k) % (h - bh), (5 + 4 * t + 15 * k) % (w - bw)
        m[k, y0:y0 + bh, x0:x0 + bw] = 1
    m[3, 1:3, 1:3] = 1
    return m


def _draw_video(rng: np.random.Generator, n_frames: int, h: int, w: int
                ) -> tuple[list[bytes], np.ndarray]:
    """JPEG frames and the (T, 4, h, w) masks drawn in them."""
    jpegs, masks = [], []
    for t in range(n_frames):
        m = _object_masks(t, h, w)
        frame = _synth.make_image(rng, h, w) // 3
        for k, colour in enumerate(_COLOURS):
            frame[m[k] == 1] = colour
        jpegs.append(_synth.encode_image(frame))
        masks.append(m)
    return jpegs, np.stack(masks)


#: (object columns, expression) per video: columns are masks of `_object_masks`; two columns
#: make a multi-object expression (MeViS / ReVOS only).
_EXPRESSIONS = (((0,), "The red box moving right."), ((1,), "green box"),
                ((0,), "the box that leads"), ((2,), "A blue box that blinks"),
                ((0, 1), "the red and the green boxes"), ((3,), "the tiny dot"),
                ((2,), "what blinks on and off?"))


class _SynthSet:
    """The expression and mask documents being written."""

    def __init__(self, fmt: str) -> None:
        self.fmt, self.videos, self.masks, self.next_id = fmt, {}, {}, 0

    def add_mask(self, per_frame: list[dict | None]) -> int:
        self.masks[str(self.next_id)] = per_frame
        self.next_id += 1
        return self.next_id - 1


def _rle_list(masks: np.ndarray, as_bytes: bool) -> list[dict | None]:
    """(T, h, w) -> per frame a compressed RLE, or None where the mask is empty."""
    out = []
    for r, m in zip(ops.rle_encode(masks), masks, strict=True):
        c = r["counts"].encode() if as_bytes else r["counts"]
        out.append({"size": list(r["size"]), "counts": c} if m.any() else None)
    return out


def _frame_names_for(fmt: str, n: int) -> list[str]:
    step = 5 if fmt == "refytvos" else 1  # Ref-YouTube-VOS keeps every 5th frame of 30 fps
    return [f"{i * step:05d}" for i in range(n)]


def _synth_video(s: _SynthSet, out: Path, frames_dir: str, vid: str, rng: np.random.Generator,
                 n_frames: int, fault: str | None) -> None:
    h, w = (120, 160) if n_frames % 2 else (96, 128)
    jpegs, masks = _draw_video(rng, n_frames, h, w)
    names = _frame_names_for(s.fmt, n_frames)
    for name, data in zip(names, jpegs, strict=True):
        path = out / frames_dir / vid / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    exps, per_col, tiny = {}, {}, ""
    for j, (cols, text) in enumerate(e for e in _EXPRESSIONS
                                     if not (s.fmt == "refytvos" and len(e[0]) > 1)):
        if s.fmt == "refytvos":  # a copy of the object's masks per expression
            ids = [s.add_mask(_rle_list(masks[:, cols[0]], as_bytes=True))]
            exps[str(j)] = {"exp": text, "obj_id": str(cols[0] + 1)}
        else:
            for c in cols:
                if c not in per_col:
                    per_col[c] = s.add_mask(_rle_list(masks[:, c], as_bytes=False))
            ids = [per_col[c] for c in cols]
            exps[str(j)] = {"exp": text, "obj_id": [c + 1 for c in cols], "anno_id": ids}
        tiny = str(ids[0]) if cols == (3,) else tiny
    s.videos[vid] = {"vid_id": len(s.videos), "frames": list(reversed(names)),
                     "expressions": exps}
    if fault:  # the mask faults hit the dot's masks (one expression refers to it)
        _inject(s, out, frames_dir, vid, names, fault, tiny)


def _inject(s: _SynthSet, out: Path, frames_dir: str, vid: str, names: list[str], fault: str,
            mid: str) -> None:
    """Break video `vid` in one way (`mid`: one of its mask ids)."""
    frame = out / frames_dir / vid / f"{names[1]}.jpg"
    exps = s.videos[vid]["expressions"]
    if fault == "missing_frame":
        frame.unlink()
    elif fault == "corrupt_frame":
        frame.write_bytes(frame.read_bytes()[:200])
    elif fault == "frame_sizes":
        frame.write_bytes(_synth.encode_image(np.zeros((50, 60, 3), np.uint8)))
    elif fault == "bad_rle":
        first = next(r for r in s.masks[mid] if r is not None)
        counts = first["counts"]
        first["counts"] = counts[: len(counts) // 2] + (b"zz" if isinstance(counts, bytes)
                                                        else "zz")
    elif fault == "size_mismatch":
        for r in s.masks[mid]:
            if r is not None:
                r["size"] = [r["size"][0] + 8, r["size"][1]]
    elif fault == "missing_mask_id":
        del s.masks[mid]
    elif fault == "mask_length":
        s.masks[mid].pop()
    elif fault == "bad_expression":
        exps["0"]["exp"] = 5
    elif fault == "no_expressions":
        exps.clear() if s.fmt != "refytvos" else exps["0"].update(exp="")
    elif fault == "unsafe_frame_name":
        s.videos[vid]["frames"][0] = "../../escape"


def _write_synth(fmt: str, out: Path, *, n_items: int, seed: int,
                 faults: tuple[str, ...]) -> Path:
    """Videos of 6-9 frames (two frame sizes) with three moving boxes (one absent in odd frames)
    and a 2x2 dot (K = 0), expressions with a repeated target, a multi-object expression
    (MeViS / ReVOS) and a question; frame lists written unsorted and videos in reverse order
    (the reader sorts both); plus one broken video per fault."""
    unknown = set(faults) - set(REFVIDEO_FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {REFVIDEO_FAULTS}")
    exp_file, mask_file, frames_dir = LAYOUTS[fmt]
    rng = np.random.default_rng(seed)
    s = _SynthSet(fmt)
    jobs = [(f"vid_{i:04d}", 6 + i % 4, None) for i in range(n_items)]
    jobs += [(f"fault_{f}", 6, f) for f in faults]
    for vid, n_frames, fault in sorted(jobs):  # mask ids count in sorted video order
        _synth_video(s, out, frames_dir, vid, rng, n_frames, fault)
    videos = dict(reversed(list(s.videos.items())))
    (out / exp_file).parent.mkdir(parents=True, exist_ok=True)
    (out / exp_file).write_text(json.dumps({"videos": videos}))
    if mask_file.endswith(".pkl"):
        with open(out / mask_file, "wb") as f:
            pickle.dump(s.masks, f, protocol=4)
    else:
        (out / mask_file).write_text(json.dumps(s.masks))
    return out
