"""Incremental builds: a raw set grown by 10% recomputes only the shards its new inputs fall in.

One synthetic COCO-format set of n * (1 + grow) images is written once; the "old" set is its
instances.json without the grown share of images (the image files stay, untouched). Two ways
to grow:
- appended: the new images' ids sort after every old one (new downloads numbered on; a new
  split file), so they fall into new shards at the end;
- a block: the new ids are one run in the middle of the old ones (a new folder or source whose
  ids sort there); fixed slices would shift every shard after it, content-defined cuts do not;
- scattered: the new ids are spread uniformly over the old ones, so most shards receive one.
For each: build the old set, then the grown set into the same output folder (reusing the
store) and, for comparison, the grown set from scratch into an empty folder. Reports shards
computed vs reused and the seconds of each build (serial runner: one process, no Ray noise).

Usage: python benchmarks/bench_incremental.py [--n 1500] [--grow 0.1] [--per-shard 32]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from sa2va_shards.build.run import run_build
from sa2va_shards.config import parse_config
from sa2va_shards.manifest import file_sha256
from sa2va_shards.synth import synth_dataset


def _subset(doc: dict, drop: set[int]) -> dict:
    return {**doc, "images": [i for i in doc["images"] if i["id"] not in drop],
            "annotations": [a for a in doc["annotations"] if a["image_id"] not in drop]}


def _build(raw: Path, out: Path, per_shard: int):
    cfg = parse_config({"dataset": "bench_inc", "reader": {"format": "coco", "root": str(raw)},
                        "shards": {"samples_per_shard": per_shard}, "out": str(out)})
    t = time.perf_counter()
    result = run_build(cfg, runner="serial", progress=False)
    return result, time.perf_counter() - t


def _same_bytes(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.suffix in (".tar", ".parquet"))
    return names == sorted(p.relative_to(b) for p in b.rglob("*")
                           if p.suffix in (".tar", ".parquet")) \
        and all(file_sha256(a / n) == file_sha256(b / n) for n in names)


def _scenario(name: str, raw: Path, full: dict, drop: set[int], tmp: Path,
              per_shard: int) -> None:
    ann = raw / "annotations" / "instances.json"
    ann.write_text(json.dumps(_subset(full, drop)))
    old, t_old = _build(raw, tmp / name, per_shard)
    ann.write_text(json.dumps(full))
    grown, t_grown = _build(raw, tmp / name, per_shard)
    scratch, t_scratch = _build(raw, tmp / f"{name}_scratch", per_shard)
    assert grown.version == scratch.version and _same_bytes(grown.build_dir, scratch.build_dir)
    total = grown.built_shards + grown.reused_shards
    print(f"{name:>9}: old {old.counts['written']} samples in {old.built_shards} shards "
          f"({t_old:.1f} s); grown by {len(drop)}: computed {grown.built_shards} of {total} "
          f"shards ({100 * grown.built_shards / total:.0f}%), reused {grown.reused_shards}, "
          f"{t_grown:.1f} s vs {t_scratch:.1f} s from scratch "
          f"({100 * t_grown / t_scratch:.0f}%); bytes equal to the scratch build")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1500, help="images in the old set")
    ap.add_argument("--grow", type=float, default=0.1, help="share of new images")
    ap.add_argument("--per-shard", type=int, default=32, help="shards.samples_per_shard")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    new = round(args.n * args.grow)
    with tempfile.TemporaryDirectory() as tmp:
        raw = synth_dataset("coco", Path(tmp) / "raw", n_items=args.n + new, seed=0)
        full = json.loads((raw / "annotations" / "instances.json").read_text())
        ids = sorted(i["id"] for i in full["images"])
        _scenario("appended", raw, full, set(ids[-new:]), Path(tmp), args.per_shard)
        middle = len(ids) // 2
        _scenario("block", raw, full, set(ids[middle:middle + new]), Path(tmp), args.per_shard)
        scattered = set(random.Random(0).sample(ids, new))
        _scenario("scattered", raw, full, scattered, Path(tmp), args.per_shard)


if __name__ == "__main__":
    main()
