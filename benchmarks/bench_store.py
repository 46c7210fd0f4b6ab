"""`image.store` policies side by side, in one run: build samples/s (one core) and bytes per
sample, loader samples/s (one core, `to_device` on the CPU; thumbnail only, and tiles on), and
how far the model's images are from Pillow bicubic of the original (what Sa2VA computes from
the file).

Policies: `resized` (the S x S squash; tiles cut from it), `resized` + `image.tiles: 6`
(full-detail tile image and thumbnail stored too), `original`, `auto`. Data: COCO-format
photo-like JPEG q90 sources with 7 objects, in two size classes (640x480, 2250x1500).

    python benchmarks/bench_store.py [--small 48 --large 12 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sa2va_shards.build.run import run_build
from sa2va_shards.config import parse_config
from sa2va_shards.loader import LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.loader.batch import IMAGENET_MEAN, IMAGENET_STD
from sa2va_shards.ops.tiles import dynamic_grid

sys.path.insert(0, str(Path(__file__).parent))
from bench_build import make_dataset  # noqa: E402 - the same COCO-format synth as the build bench

MAX_TILES = 6
POLICIES = {"resized": {"store": "resized"},
            "resized + tiles 6": {"store": "resized", "tiles": MAX_TILES},
            "original": {"store": "original"}, "auto": {"store": "auto"}}


def build(root: Path, out: Path, name: str, image: dict, repeats: int) -> tuple[float, float,
                                                                                 Path]:
    """(samples/s of the shard phase, best of `repeats` fresh builds; bytes per sample; dir)."""
    best, build_dir = 0.0, None
    for r in range(repeats):
        cfg = parse_config({"dataset": f"{name.replace(' ', '').replace('+', '_')}_{r}",
                            "reader": {"format": "coco", "root": str(root)}, "image": image,
                            "shards": {"samples_per_shard": 16}, "out": str(out)})
        result = run_build(cfg, runner="serial", progress=False)
        best = max(best, result.counts["read"] / result.timings["shards_s"])
        build_dir = result.build_dir
    n = result.counts["written"]
    size = sum(p.stat().st_size for p in (build_dir / "shards").glob("*.tar"))
    return best, size / n, build_dir


def _loader(build_dir: Path, max_tiles: int = MAX_TILES) -> ShardLoader:
    cfg = LoaderConfig(gt_masks="image", max_tiles=max_tiles, shuffle=False)
    return ShardLoader(ShardDataset(build_dir, cfg), batch_size=8, num_workers=0, device="cpu")


def load_rate(build_dir: Path, repeats: int, max_tiles: int) -> float:
    best = 0.0
    for _ in range(repeats):
        t0, n = time.perf_counter(), 0
        for batch in _loader(build_dir, max_tiles):
            n += batch["batch_size"]
        best = max(best, n / (time.perf_counter() - t0))
    return best


def _levels(x: torch.Tensor) -> np.ndarray:
    std, mean = torch.tensor(IMAGENET_STD).view(3, 1, 1), torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    return ((x.double() * std + mean) * 255).permute(0, 2, 3, 1).numpy()


def _pillow(img: Image.Image, w: int, h: int) -> np.ndarray:
    return np.asarray(img.resize((w, h), Image.Resampling.BICUBIC)).astype(np.float64)


class _Diff:
    """Running mean / max of absolute level differences."""

    def __init__(self) -> None:
        self.total, self.n, self.max = 0.0, 0, 0.0

    def add(self, got: np.ndarray, want: np.ndarray) -> None:
        d = np.abs(got - want)
        self.total, self.n, self.max = self.total + d.sum(), self.n + d.size, max(self.max,
                                                                                 d.max())

    def __str__(self) -> str:
        return f"{self.total / max(self.n, 1):.2f} / {self.max:.0f}"


def differences(build_dir: Path, files: dict[str, Path]) -> tuple[_Diff, _Diff, _Diff]:
    """SAM2 input, thumbnail, tiles vs Pillow bicubic from the original (levels)."""
    sam, thumb, tiles = _Diff(), _Diff(), _Diff()
    for batch in _loader(build_dir):
        starts = np.cumsum([0, *batch["num_tiles"].tolist()])
        for b, key in enumerate(batch["keys"]):
            img = Image.open(files[key]).convert("RGB")
            sam.add(batch["g_pixel_values"][b].permute(1, 2, 0).numpy().astype(np.float64),
                    _pillow(img, 1024, 1024))
            want_thumb = _pillow(img, 448, 448)
            thumb.add(_levels(batch["pixel_values"][b:b + 1])[0], want_thumb)
            cols, rows = dynamic_grid(*img.size, max_num=MAX_TILES)
            big = _pillow(img, cols * 448, rows * 448)
            crops = [big[r * 448:(r + 1) * 448, c * 448:(c + 1) * 448] for r in range(rows)
                     for c in range(cols)]
            tiles.add(_levels(batch["tiles"][starts[b]:starts[b + 1] - 1]), np.stack(crops))
    return sam, thumb, tiles


def _files(root: Path) -> dict[str, Path]:
    doc = json.loads((root / "annotations" / "instances.json").read_text())
    return {str(i["id"]).zfill(12): root / "images" / i["file_name"] for i in doc["images"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=48)
    ap.add_argument("--large", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f}; one core (serial build, loader in-process, "
          f"batch 8, to_device on the CPU); best of {args.repeats}\n")
    rows, diffs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, n, h, w in (("640x480", args.small, 480, 640),
                               ("2250x1500", args.large, 1500, 2250)):
            root = make_dataset(tmp / f"raw{label}", n, h, w, 7)
            src = sum(p.stat().st_size for p in (root / "images").glob("*.jpg")) / n
            for name, image in POLICIES.items():
                rate, per, build_dir = build(root, tmp / "out", f"{label}{name}", image,
                                             args.repeats)
                plain = load_rate(build_dir, args.repeats, 0)
                tiled = load_rate(build_dir, args.repeats, MAX_TILES)
                rows.append(f"| {label} | {name} | {rate:.1f} | {per / 1024:.0f} KiB "
                            f"({per / src:.2f}x source) | {plain:.1f} | {tiled:.1f} |")
                sam, thumb, tiles = differences(build_dir, _files(root))
                diffs.append(f"| {label} | {name} | {sam} | {thumb} | {tiles} |")
    print("| sources | policy | build samples/s | bytes per sample | loader samples/s, "
          f"thumbnail only | loader samples/s, max_tiles {MAX_TILES} |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n| sources | policy | SAM2 input (mean / max) | thumbnail | tiles |")
    print("|---|---|---|---|---|")
    print("\n".join(diffs))


if __name__ == "__main__":
    main()
