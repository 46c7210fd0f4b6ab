"""Resume cost, shuffle quality and mixture throughput of the loader, in one run.

- Resume: a loader is run to 10% (then 90%) of an epoch, its state saved, and a fresh loader
  restored from it; the figure is the time from `load_state_dict` to the first batch (what a
  restart waits for) and the shards the restored epoch opens.
- Shuffle quality: distinct shards per batch of 8, for `interleave` 1 (one shard at a time per
  worker) and 4, each without and with the shuffle buffer.
- Mixture: samples/s of a COCO build alone vs a COCO + Osprey mixture (repeat 2 + weight).

Usage: python benchmarks/bench_resume.py [--items 1024] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sa2va_shards.build.run import run_build
from sa2va_shards.config import parse_config
from sa2va_shards.loader import LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.loader.mixture import MixSource, Mixture
from sa2va_shards.synth import synth_dataset

#: the shuffle buffer is set to one shard's samples, the ratio of the defaults (256 : 256)
CFG = LoaderConfig(gt_masks="image", shuffle_buffer=64)
SHARD = 64


def _build(out: Path, fmt: str, items: int) -> Path:
    raw = synth_dataset(fmt, out / "raw" / fmt, n_items=items, seed=0)
    cfg = parse_config({"dataset": f"bench_{fmt}", "reader": {"format": fmt, "root": str(raw)},
                        "out": str(out / "shards"), "shards": {"samples_per_shard": SHARD}})
    return run_build(cfg, runner="serial", progress=False).build_dir


def _resume(build: Path, fraction: float, workers: int) -> tuple[float, int, int]:
    ds = ShardDataset(build, CFG)
    loader = ShardLoader(ds, batch_size=8, num_workers=workers)
    stop = max(1, int(len(loader) * fraction))
    for step, _ in enumerate(loader):
        if step + 1 == stop:
            break
    state = loader.state_dict()
    t0 = time.perf_counter()
    fresh = ShardDataset(build, CFG)
    fresh.load_state_dict(state)
    it = iter(ShardLoader(fresh, batch_size=8, num_workers=workers))
    next(it)
    first = time.perf_counter() - t0
    _, shard, _ = fresh._plan()
    opened = len(set(shard[fresh._remaining()].tolist()))
    return first, opened, len(ds.urls)


def _shards_per_batch(build: Path, interleave: int, buffer: int) -> float:
    ds = ShardDataset(build, replace(CFG, interleave=interleave, shuffle_buffer=buffer,
                                     gt_masks="none"))
    return float(np.mean([len(set(b["urls"])) for b in ShardLoader(ds, batch_size=8,
                                                                      num_workers=0)]))


def _rate(ds: ShardDataset, workers: int) -> float:
    it = iter(ShardLoader(ds, batch_size=8, num_workers=workers))
    next(it)  # worker start-up excluded
    t0, counted = time.perf_counter(), 0
    for batch in it:
        counted += len(batch["keys"])
    return counted / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1024)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        coco, osprey = _build(Path(tmp), "coco", args.items), _build(Path(tmp), "osprey",
                                                                     args.items // 2)
        print(f"COCO synth {args.items} items in {SHARD}-sample shards; {args.workers} workers, "
              f"shuffle buffer {CFG.shuffle_buffer}")
        for fraction in (0.1, 0.9):
            first, opened, total = _resume(coco, fraction, args.workers)
            print(f"resume at {fraction:.0%}: first batch after {first:.2f} s, "
                  f"the rest of the epoch opens {opened} of {total} shards")
        for interleave in (1, 4):
            for buffer in (0, SHARD):
                print(f"interleave {interleave}, shuffle buffer {buffer:3d}: "
                      f"{_shards_per_batch(coco, interleave, buffer):.2f} shards per batch of 8")
        single = _rate(ShardDataset(coco, CFG), args.workers)
        mix = Mixture(sources=(MixSource(build=coco, repeat=2),
                               MixSource(build=osprey, weight=1.0)),
                      samples_per_epoch=2 * args.items + args.items // 2)
        mixed = _rate(ShardDataset(mix, CFG), args.workers)
        print(f"single COCO build: {single:.1f} samples/s; COCO x2 + Osprey mixture: "
              f"{mixed:.1f} samples/s ({mixed / single:.2f}x)")


if __name__ == "__main__":
    main()
