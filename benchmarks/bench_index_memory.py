"""Driver-side cost of the light index on a large Osprey-style annotation set (issue 3, item 6).

Synthesises Osprey-724K-format JSON files with `--objects` regions in total (no images: the
index never reads pixels), then, in a fresh child process so the peak RSS is the index's own:
- `OspreyReader.list_items()` (the driver reads every JSON once),
- the input fingerprint (the driver hashes the index for the version id),
- `plan_shards` (fixed slices of the sorted index),
and the pickled size of one shard plan (what one Ray task receives instead of the JSON).

    python benchmarks/bench_index_memory.py [--objects 100000] [--per-image 4]
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status in MiB (Linux): VmRSS now, VmHWM peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS, so later peaks are the index's own and not the
    imports' (torch, pyarrow): ru_maxrss cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _element(rng: np.random.Generator, i: int, per_image: int, rle: str) -> dict:
    """One Osprey element of a 640x480 image: ellipse polygons (24 points) and, for one region
    in four, a compressed RLE; a conversation of two turns per region."""
    anns = []
    for j in range(per_image):
        if j % 4 == 3:
            anns.append({"segmentation": {"size": [480, 640], "counts": rle}})
            continue
        cx, cy, rx, ry = rng.uniform(60, 580), rng.uniform(60, 420), *rng.uniform(8, 60, 2)
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        poly = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1).round(2).ravel().tolist()
        anns.append({"segmentation": [poly]})
    turns = []
    for j in range(per_image):
        turns += [{"from": "human", "value": f"<image>\nWhat is <region{j + 1}> doing in this "
                                             "picture? Please answer in one sentence."},
                  {"from": "gpt", "value": "A person in a red jacket is walking a small dog "
                                           "along the pavement next to a parked car."}]
    return {"file_name": f"COCO_train2014_{i:012d}.jpg", "height": 480, "width": 640,
            "annotation": anns, "conversations": turns}


def make_annotations(root: Path, *, objects: int, per_image: int) -> tuple[int, int]:
    """Write the five Osprey files under root/Osprey-724K; returns (elements, bytes)."""
    from pycocotools import mask as mask_utils

    from sa2va_shards.readers.osprey import OSPREY_FILES

    m = np.zeros((480, 640), np.uint8, order="F")
    m[100:300, 200:420] = 1
    m[150:200, 250:300] = 0
    rle = mask_utils.encode(m)["counts"].decode()
    rng = np.random.default_rng(0)
    n = objects // per_image
    (root / "Osprey-724K").mkdir(parents=True, exist_ok=True)
    docs = [[] for _ in OSPREY_FILES]
    for i in range(n):
        docs[i % len(docs)].append(_element(rng, i, per_image, rle))
    size = 0
    for file, doc in zip(OSPREY_FILES, docs, strict=True):
        path = root / "Osprey-724K" / file
        path.write_text(json.dumps(doc))
        size += path.stat().st_size
    return n, size


def measure(root: Path, samples_per_shard: int) -> dict:
    """Run in a fresh process: index, fingerprint, plan; peak RSS after each."""
    from sa2va_shards.build.plan import plan_shards
    from sa2va_shards.manifest import input_fingerprint
    from sa2va_shards.readers.osprey import OspreyReader

    gc.collect()
    _reset_peak()
    base = _status_mb("VmRSS")
    out: dict = {"rss_after_imports_mb": _rss_mb(), "rss_now_after_imports_mb": base}
    t0 = time.perf_counter()
    items = OspreyReader(root=str(root)).list_items()
    out.update(list_items_s=time.perf_counter() - t0, rss_after_list_items_mb=_rss_mb(),
               items=len(items), index_peak_mb=_status_mb("VmHWM") - base,
               index_held_mb=_status_mb("VmRSS") - base)
    t0 = time.perf_counter()
    input_fingerprint(items)
    out.update(fingerprint_s=time.perf_counter() - t0, rss_after_fingerprint_mb=_rss_mb(),
               fingerprint_peak_mb=_status_mb("VmHWM") - base)
    t0 = time.perf_counter()
    plans, _ = plan_shards(items, dataset="osprey", samples_per_shard=samples_per_shard)
    out.update(plan_s=time.perf_counter() - t0, rss_after_plan_mb=_rss_mb(), shards=len(plans),
               plan_peak_mb=_status_mb("VmHWM") - base)
    sizes = [len(pickle.dumps(p)) for p in plans]
    out.update(plan_pickle_mean_kb=sum(sizes) / len(sizes) / 1024,
               plan_pickle_max_kb=max(sizes) / 1024)
    return out


def _child(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=100_000)
    p.add_argument("--per-image", type=int, default=4)
    p.add_argument("--samples-per-shard", type=int, default=256)
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child: index + plan
    p.add_argument("--make", type=Path, help=argparse.SUPPRESS)  # child: synthesise
    args = p.parse_args()
    if args.make:
        n, size = make_annotations(args.make, objects=args.objects, per_image=args.per_image)
        print(json.dumps({"elements": n, "bytes": size}))
        return
    if args.measure:
        print(json.dumps(measure(args.measure, args.samples_per_shard)))
        return
    # each step in its own process: Linux keeps ru_maxrss across fork + exec, so a child
    # forked from a process that held the synthesised JSON would report that peak
    common = [f"--objects={args.objects}", f"--per-image={args.per_image}",
              f"--samples-per-shard={args.samples_per_shard}"]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        made = _child(["--make", tmp, *common])
        size = made["bytes"]
        print(f"synthesised {made['elements']} elements / {made['elements'] * args.per_image} "
              f"regions, {size / 2**20:.1f} MiB of JSON in {time.perf_counter() - t0:.1f} s")
        r = _child(["--measure", tmp, *common])
    print(f"after imports: peak RSS (getrusage) {r['rss_after_imports_mb']:.1f} MiB, "
          f"RSS now {r['rss_now_after_imports_mb']:.1f} MiB (baseline below)")
    print(f"list_items   {r['list_items_s']:6.2f} s  peak RSS {r['rss_after_list_items_mb']:7.1f} "
          f"MiB  peak above baseline {r['index_peak_mb']:6.1f} MiB, held after "
          f"{r['index_held_mb']:6.1f} MiB  ({r['items']} items)")
    print(f"fingerprint  {r['fingerprint_s']:6.2f} s  peak RSS "
          f"{r['rss_after_fingerprint_mb']:7.1f} MiB  peak above baseline "
          f"{r['fingerprint_peak_mb']:6.1f} MiB")
    print(f"plan_shards  {r['plan_s']:6.2f} s  peak RSS {r['rss_after_plan_mb']:7.1f} MiB  "
          f"peak above baseline {r['plan_peak_mb']:6.1f} MiB  ({r['shards']} shards of "
          f"{args.samples_per_shard})")
    print(f"one shard task receives {r['plan_pickle_mean_kb']:.0f} KiB pickled on average "
          f"(max {r['plan_pickle_max_kb']:.0f} KiB) instead of {size / 2**20:.1f} MiB of JSON")


if __name__ == "__main__":
    main()
