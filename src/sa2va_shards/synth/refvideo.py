"""Referring video sets in the MeViS, ReVOS and Ref-YouTube-VOS layouts (expression file, mask
file, frame folders), with injected faults."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from sa2va_shards import ops
from sa2va_shards.readers.refvideo import LAYOUTS
from sa2va_shards.synth import common

__all__ = ["REFVIDEO_FAULTS", "write"]

#: fault kinds `write` can inject: one video each, named `fault_<kind>`.
REFVIDEO_FAULTS: tuple[str, ...] = (
    "missing_frame", "corrupt_frame", "frame_sizes", "bad_rle", "size_mismatch",
    "missing_mask_id", "mask_length", "bad_expression", "no_expressions", "unsafe_frame_name",
)


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
        frame = common.make_image(rng, h, w) // 3
        for k, colour in enumerate(_COLOURS):
            frame[m[k] == 1] = colour
        jpegs.append(common.encode_image(frame))
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
        frame.write_bytes(common.encode_image(np.zeros((50, 60, 3), np.uint8)))
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


def write(fmt: str, out: Path, *, n_items: int = 6, seed: int = 0,
          faults: tuple[str, ...] = ()) -> Path:
    """A set in the layout of `fmt` (mevis, revos, refytvos): videos of 6-9 frames (two frame
    sizes) with three moving boxes (one absent in odd frames) and a 2x2 dot (K = 0),
    expressions with a repeated target, a multi-object expression (MeViS / ReVOS) and a
    question; frame lists written unsorted and videos in reverse order (the reader sorts
    both); plus one broken video per fault."""
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
