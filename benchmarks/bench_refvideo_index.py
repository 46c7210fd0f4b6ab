"""Driver-side cost of the referring-video index (issue 15): the mask file is one JSON for the
whole split, parsed whole by `list_items`, and each video's masks travel in its item as text.

Synthesises a MeViS-format index (no frames: the index never reads pixels) with `--videos`
videos of `--objects` objects over `--frames` frames at 720x1280 (an ellipse per object and
frame as real compressed RLE, null in every fifth frame), then in a fresh child process
measures `list_items`, the input fingerprint and `plan_shards`, and the pickled size of one
shard plan (what one Ray task receives).

    python benchmarks/bench_refvideo_index.py [--videos 400] [--objects 5] [--frames 80]
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _ellipse_rles(n: int, h: int = 720, w: int = 1280) -> list[str]:
    """`n` distinct compressed RLE strings of ellipses (a real object's run structure)."""
    from pycocotools import mask as mask_utils

    y, x = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        cx, cy, rx, ry = 300 + 7 * i, 360, 120 + i % 40, 90 + i % 30
        m = (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1).astype(np.uint8)
        out.append(mask_utils.encode(np.asfortranarray(m))["counts"].decode())
    return out


def make_index(root: Path, *, videos: int, objects: int, frames: int) -> int:
    """Write meta_expressions.json and mask_dict.json (MeViS layout); returns the mask file's
    size in bytes."""
    rles = _ellipse_rles(64)
    meta, masks, next_id = {}, {}, 0
    for v in range(videos):
        exps = {}
        for o in range(objects):
            masks[str(next_id)] = [None if t % 5 == 4 else
                                   {"size": [720, 1280], "counts": rles[(v + o + t) % 64]}
                                   for t in range(frames)]
            for e in range(3):  # MeViS has ~3.5 expressions per object
                exps[str(len(exps))] = {"exp": f"the object number {o} moving left {e}",
                                        "obj_id": [o], "anno_id": [next_id]}
            next_id += 1
        meta[f"{v:08x}"] = {"frames": [f"{t:05d}" for t in range(frames)], "expressions": exps}
    (root / "meta_expressions.json").write_text(json.dumps({"videos": meta}))
    (root / "mask_dict.json").write_text(json.dumps(masks))
    return (root / "mask_dict.json").stat().st_size


def measure(root: str) -> dict:
    """In this (fresh) process: list_items, fingerprint and plan, with time and memory."""
    from sa2va_shards.build.plan import plan_shards
    from sa2va_shards.manifest import input_fingerprint
    from sa2va_shards.readers.refvideo import MevisReader

    base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    items = MevisReader(root=root).list_items()
    t1 = time.perf_counter()
    input_fingerprint(items)
    t2 = time.perf_counter()
    plans, _ = plan_shards(items, dataset="mevis", samples_per_shard=8)
    t3 = time.perf_counter()
    return {"items": len(items), "list_s": t1 - t0, "fingerprint_s": t2 - t1,
            "plan_s": t3 - t2, "base_mb": base, "peak_mb": _status_mb("VmHWM"),
            "held_mb": _status_mb("VmRSS"), "plan_kib": len(pickle.dumps(plans[0])) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=400)
    ap.add_argument("--objects", type=int, default=5)
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        size = make_index(Path(tmp), videos=args.videos, objects=args.objects,
                          frames=args.frames)
        out = subprocess.run([sys.executable, __file__, "--child", tmp], check=True,
                             capture_output=True, text=True).stdout
    r = json.loads(out)
    print(f"{args.videos} videos x {args.objects} objects x {args.frames} frames: mask_dict.json "
          f"{size / 2**20:.1f} MiB")
    print(f"list_items {r['list_s']:.2f} s, fingerprint {r['fingerprint_s']:.2f} s, "
          f"plan {r['plan_s']:.3f} s; RSS after imports {r['base_mb']:.0f} MiB, peak "
          f"{r['peak_mb']:.0f} MiB, held {r['held_mb']:.0f} MiB; one shard plan (8 videos) "
          f"{r['plan_kib']:.0f} KiB pickled")


if __name__ == "__main__":
    main()
