"""SA-V clips in all three layouts: H.264 mp4 + `_manual.json` (train), the extracted 24 fps
JPEG frames, and the val / test release's per-object PNG masks; with injected faults."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from sa2va_shards import ops
from sa2va_shards.readers.sav import ANNOTATION_STEP
from sa2va_shards.synth import common

__all__ = ["PNG_FAULTS", "SAV_FAULTS", "break_png_layout", "encode_mp4", "write",
           "write_clip", "write_png_layout"]

#: fault kinds `write` can inject, one clip each (ids sav_900000 + j). `rotated`: 90 degree
#: display rotation with masks in display orientation; `rotated_180`: 180 degrees. The
#: extracted frames of both are written rotated (as ffmpeg does), so they match their masks.
#: `bad_masklet`: `masklet_id` one short of the masklet columns.
SAV_FAULTS: tuple[str, ...] = ("corrupt_video", "size_mismatch", "missing_video", "rotated",
                               "rotated_180", "bad_masklet")


def write(out_dir: Path, *, n_items: int = 3, seed: int = 0,
          faults: tuple[str, ...] = ()) -> Path:
    """Write SA-V clips: a real H.264 mp4 (PyAV) of moving shapes, the same frames as JPEGs
    (frames layout), and `_manual.json` masklets drawn from the same shapes at 6 fps;
    plus one broken clip per fault in SAV_FAULTS."""
    rng = np.random.default_rng(seed)
    ids = [f"sav_{i + 1:06d}" for i in range(n_items)]
    for i, video_id in enumerate(ids):
        write_clip(out_dir, video_id, rng, n_frames=24 + 8 * (i % 2))
    for j, fault in enumerate(faults):
        write_clip(out_dir, f"sav_{900_000 + j:06d}", rng, n_frames=16, fault=fault)
    refsav = {vid: {"video_path": f"{vid}.mp4", "anno_path": f"{vid}_manual.json",
                    "objects": {str(k): {"formated": f"The {name} box slides to the right.",
                                         "short_caps": [f"{name} box"]}
                                for k, name in enumerate(("red", "green", "tiny"))}}
              for vid in ids}
    (out_dir / "sam_v_final_v3.json").write_text(json.dumps(refsav))
    return out_dir


_SHAPE_COLORS = ((230, 40, 40), (40, 200, 60), (40, 80, 230))


def _clip_masks(t: int, h: int, w: int, n_obj: int) -> np.ndarray:
    """(n_obj, h, w) masks of boxes moving right, plus a 2x2 object no grid point hits."""
    masks = np.zeros((n_obj, h, w), np.uint8)
    u = h / 120  # sizes scale with the frame (the tests use 160x120)
    bh, bw = int(25 * u), int(35 * u)
    for k in range(n_obj - 1):
        y0 = int((10 + 30 * k) * u) % max(h - bh, 1)
        x0 = int((5 + 3 * t + 20 * k) * u) % max(w - bw, 1)
        masks[k, y0:y0 + bh, x0:x0 + bw] = 1
    masks[-1, 1:3, 1:3] = 1  # K = 0 under nearest (inside cell (0, 0), off its sample point)
    return masks


#: counter-clockwise display rotation (quarter turns) of the rotation faults.
_ROTATION_FAULTS = {"rotated": 1, "rotated_180": 2}


def _draw_clip(rng: np.random.Generator, n_frames: int, h: int, w: int, n_obj: int,
               fault: str | None) -> tuple[list[np.ndarray], list[list[dict]]]:
    """The stored frames and, every ANNOTATION_STEP frames, the masklet row (RLEs)."""
    frames, masklet = [], []
    for t in range(n_frames):
        masks = _clip_masks(t, h, w, n_obj)
        frame = common.make_image(rng, h, w) // 3
        for k in range(n_obj - 1):
            frame[masks[k] == 1] = _SHAPE_COLORS[k % len(_SHAPE_COLORS)]
        frames.append(frame)
        if t % ANNOTATION_STEP:
            continue
        if fault == "size_mismatch":
            masks = np.zeros((n_obj, h + 8, w), np.uint8)
        elif fault in _ROTATION_FAULTS:  # annotated as a player shows the video
            masks = np.ascontiguousarray(np.rot90(masks, _ROTATION_FAULTS[fault], axes=(1, 2)))
        masklet.append([{"size": r["size"], "counts": r["counts"]} for r in ops.rle_encode(masks)])
    return frames, masklet


def encode_mp4(frames: list[np.ndarray], rotation: int = 0) -> bytes:
    """H.264 mp4 at 24 fps (near-lossless), with a display rotation (degrees) if not 0."""
    import av

    h, w = frames[0].shape[:2]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        # the demo's inputs must be byte-reproducible: x264 differs from run to run with
        # threads, and (measured here) with its macroblock-tree lookahead even on one thread
        stream = container.add_stream("libx264", rate=24, options={
            "crf": "12", "x264-params": "threads=1:mbtree=0:rc-lookahead=0"})
        stream.codec_context.thread_count = 1
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)  # recent PyAV only; synth faults only
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def write_clip(out_dir: Path, video_id: str, rng: np.random.Generator, *, n_frames: int,
               fault: str | None = None, size: tuple[int, int] = (120, 160),
               n_obj: int = 3) -> None:
    """One clip: mp4, extracted JPEG frames and `_manual.json`, with `fault` injected."""
    frames, masklet = _draw_clip(rng, n_frames, *size, n_obj, fault)
    quarter = _ROTATION_FAULTS.get(fault, 0)
    data = encode_mp4(frames, 90 * quarter)
    if fault == "corrupt_video":
        data = data[: len(data) // 3]
    out_dir.mkdir(parents=True, exist_ok=True)
    if fault != "missing_video":
        (out_dir / f"{video_id}.mp4").write_bytes(data)
    frame_dir = out_dir / "JPEGImages_24fps" / video_id
    frame_dir.mkdir(parents=True, exist_ok=True)
    for t, f in enumerate(frames):  # extracted as ffmpeg does: display rotation applied
        f = np.ascontiguousarray(np.rot90(f, quarter))
        (frame_dir / f"{t:05d}.jpg").write_bytes(common.encode_image(f))
    ids = list(range(n_obj - 1 if fault == "bad_masklet" else n_obj))
    manual = _manual_json(video_id, masklet, ids, n_frames,
                          *np.rot90(frames[0], quarter).shape[:2])
    (out_dir / f"{video_id}_manual.json").write_text(json.dumps(manual))
    write_png_layout(out_dir, manual, video_id)  # the val / test release's masks


def _manual_json(video_id: str, masklet: list, ids: list[int], n_frames: int, h: int,
                 w: int) -> dict[str, Any]:
    """The SA-V `_manual.json` document (all published keys; only some are read)."""
    n_obj = len(masklet[0])
    return {
        "video_id": video_id, "video_duration": n_frames / 24, "video_frame_count": n_frames,
        "video_height": h, "video_width": w, "video_resolution": h * w,
        "video_environment": "Indoor", "video_split": "train", "masklet": masklet,
        "masklet_id": ids, "masklet_size_rel": [0.01] * n_obj,
        "masklet_size_abs": [float(mask_utils.area(masklet[0][k])) for k in range(n_obj)],
        "masklet_size_bucket": ["small"] * n_obj, "masklet_visibility_changes": [0] * n_obj,
        "masklet_first_appeared_frame": [0.0] * n_obj,
        "masklet_frame_count": [len(masklet)] * n_obj,
        "masklet_edited_frame_count": [0] * n_obj, "masklet_type": ["manual"] * n_obj,
        "masklet_stability_score": [[1.0] * len(masklet)] * n_obj, "masklet_num": n_obj}


#: faults `break_png_layout` can inject into a synthesised PNG layout (one video each).
PNG_FAULTS: tuple[str, ...] = ("missing_png", "corrupt_png", "two_objects_in_png",
                               "png_size_mismatch", "missing_frame", "bad_frame_name")


def write_png_layout(out_dir: Path, manual: dict, video_id: str) -> None:
    """The val/test annotation of one synthesised clip, from its `_manual.json` document:
    one 0/255 PNG per masklet column and annotated frame."""
    for t, row in enumerate(manual["masklet"]):
        for col, rle in enumerate(row):
            path = out_dir / "Annotations_6fps" / video_id / f"{col:03d}" / f"{4 * t:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            m = mask_utils.decode(rle) * 255
            path.write_bytes(ops.encode_png(m.astype(np.uint8)))


def break_png_layout(root: Path, video_id: str, fault: str) -> None:
    """Inject one of PNG_FAULTS into video `video_id` of a synthesised PNG layout."""
    obj = root / "Annotations_6fps" / video_id / "000"
    png = obj / "00004.png"
    if fault == "missing_png":
        png.unlink()
    elif fault == "corrupt_png":
        png.write_bytes(png.read_bytes()[:40])
    elif fault == "two_objects_in_png":
        a = np.asarray(Image.open(png)).copy()
        a[0, 0], a[0, 1] = 1, 2
        png.write_bytes(ops.encode_png(a))
    elif fault == "png_size_mismatch":
        a = np.asarray(Image.open(png))
        png.write_bytes(ops.encode_png(np.pad(a, ((0, 8), (0, 0)))))
    elif fault == "missing_frame":
        (root / "JPEGImages_24fps" / video_id / "00004.jpg").unlink()
    elif fault == "bad_frame_name":
        png.rename(obj / "frame4.png")
    else:
        raise ValueError(f"unknown fault {fault!r}; known: {PNG_FAULTS}")
