"""Builds on object storage: what the store path costs over local disks, on the same inputs.

One synthetic COCO-format set is built four ways with the serial runner (one process):
local -> local, local -> store (`out: s3://`), store -> local (`reader.root: s3://`) and
store -> store, against moto's S3 server on localhost through the real s3fs client. Every
build is checked to give the same shard bytes. Then the incremental case: the store -> store
build again after one image object changed (one shard recomputed, the rest copied on the
store). A localhost server has no network latency or bandwidth limit: the figures are the
client-side cost (listing, staging, uploads, moto's own request handling), a floor for a
real store.

Usage: python benchmarks/bench_object_store.py [--n 400] [--per-shard 32]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from sa2va_shards.build.run import run_build
from sa2va_shards.config import parse_config
from sa2va_shards.synth import synth_dataset
from tests.helpers.s3 import moto_s3


def _build(root: str, out: str, per_shard: int):
    cfg = parse_config({"dataset": "bench_os", "reader": {"format": "coco", "root": root},
                        "shards": {"samples_per_shard": per_shard}, "out": out})
    t = time.perf_counter()
    result = run_build(cfg, runner="serial", progress=False)
    return result, time.perf_counter() - t


def _shard_hashes(fs, result) -> list[str]:
    if result.url:
        fs.invalidate_cache()
        paths = sorted(fs.glob(f"{result.url.removeprefix('s3://')}/shards/*.tar"))
        return [hashlib.sha256(fs.cat_file(p)).hexdigest() for p in paths]
    return [hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((result.build_dir / "shards").glob("*.tar"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--per-shard", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, moto_s3() as fs:
        os.environ["SA2VA_SHARDS_CACHE"] = f"{tmp}/cache"
        raw = synth_dataset("coco", Path(tmp) / "raw", n_items=args.n, seed=0)
        fs.put(str(raw), "bucket/raw", recursive=True)
        fs.invalidate_cache()
        ways = {"local -> local": (str(raw), f"{tmp}/out"),
                "local -> store": (str(raw), "s3://bucket/out1"),
                "store -> local": ("s3://bucket/raw", f"{tmp}/out2"),
                "store -> store": ("s3://bucket/raw", "s3://bucket/out3")}
        rows, hashes = {}, set()
        for name, (root, out) in ways.items():
            result, seconds = _build(root, out, args.per_shard)
            hashes.add(tuple(_shard_hashes(fs, result)))
            rows[name] = {"seconds": round(seconds, 2), "shards": result.built_shards}
        base = rows["local -> local"]["seconds"]
        for row in rows.values():
            row["x_local"] = round(row["seconds"] / base, 2)
        image = sorted((raw / "images").glob("*.jpg"))[0]
        fs.pipe_file(f"bucket/raw/images/{image.name}", image.read_bytes() + b"\0")  # new ETag
        fs.invalidate_cache()
        result, seconds = _build("s3://bucket/raw", "s3://bucket/out3", args.per_shard)
        rows["store -> store, one object changed"] = {
            "seconds": round(seconds, 2), "shards": result.built_shards,
            "copied": result.reused_shards, "x_local": round(seconds / base, 2)}
        print(json.dumps({"n": args.n, "per_shard": args.per_shard,
                          "same_bytes_every_way": len(hashes) == 1, "builds": rows}, indent=2))


if __name__ == "__main__":
    main()
