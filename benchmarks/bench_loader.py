"""Loader throughput: `ShardLoader` over built shards vs a Sa2VA-style on-the-fly Dataset.

Both read the same synthesised COCO-style set, in one run, through a DataLoader with the same
workers and batch size. The baseline does per item what Sa2VA's datasets do with the RAW data:
PIL decode of the original, bicubic to 448 (ToTensor + Normalize, float in the worker) and to
1024 (SAM2 DirectResize), pycocotools decode of every segmentation at full resolution,
per-object F.interpolate(nearest) to 16x16, K, the Osprey prompt string; it ships the float
448 image, the uint8 1024 image and the full-resolution uint8 masks.

Each configuration runs `--repeats` epochs (fresh workers each) and the best rate is kept:
the machine is shared, so the best run is the one least disturbed by other processes.

The "Sa2VA model dict" runs include encode (a local byte-level BPE tokenizer, phi3 template),
`collate_sa2va` and `model_inputs` on the CPU (tiles, masks, flags): what a training step takes.

Usage: python benchmarks/bench_loader.py [--items 256] [--batch-size 8] [--workers 2] [--repeats 3]
       python benchmarks/bench_loader.py --items 64 --size 2048x1536 --objects 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset

from sa2va_shards.build.run import run_build
from sa2va_shards.config import parse_config
from sa2va_shards.loader import LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.loader.batch import IMAGENET_MEAN, IMAGENET_STD, to_device
from sa2va_shards.loader.encode import Encoder
from sa2va_shards.loader.prompts import image_prompt, regions_header
from sa2va_shards.synth import synth_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers.tokenizer import tiny_tokenizer  # noqa: E402 - a local BPE, no download

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


class Sa2VAStyleDataset(Dataset):
    """On-the-fly baseline over a COCO-style `instances.json` + image folder."""

    def __init__(self, root: Path) -> None:
        doc = json.loads((root / "annotations" / "instances.json").read_text())
        anns: dict[int, list] = {}
        for a in doc["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
        self.root = root
        self.items = [(img, anns[img["id"]]) for img in doc["images"] if img["id"] in anns]

    def __len__(self) -> int:
        return len(self.items)

    def _masks(self, anns: list, h: int, w: int) -> torch.Tensor:
        out = []
        for a in anns:  # Osprey annToMask: polygon list, uncompressed or compressed RLE
            seg = a["segmentation"]
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg["counts"], list):
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = seg
            out.append(mask_utils.decode(rle))
        return torch.from_numpy(np.stack(out))

    def __getitem__(self, i: int) -> dict:
        info, anns = self.items[i]
        image = Image.open(self.root / "images" / info["file_name"]).convert("RGB")
        thumb = np.asarray(image.resize((448, 448), Image.Resampling.BICUBIC))
        pixel_values = (torch.from_numpy(thumb).permute(2, 0, 1).float() / 255 - _MEAN) / _STD
        g = np.asarray(image.resize((1024, 1024), Image.Resampling.BICUBIC))
        masks = self._masks(anns, info["height"], info["width"])
        prompt = torch.cat([F.interpolate(m[None, None].float(), size=(16, 16), mode="nearest")[0]
                            for m in masks]).bool()
        k = prompt.flatten(1).sum(1)
        text = image_prompt(256) + "\n" + regions_header(k.tolist()) + "Describe region1."
        return {"pixel_values": pixel_values, "masks": masks, "prompt_masks": prompt, "k": k,
                "g_pixel_values": torch.from_numpy(g).permute(2, 0, 1), "text": text}


def sa2va_collate(items: list[dict]) -> dict:
    """Stack the images, list the variable-size fields (as Sa2VA's collate does)."""
    return {"pixel_values": torch.stack([x["pixel_values"] for x in items]),
            "g_pixel_values": torch.stack([x["g_pixel_values"] for x in items]),
            **{k: [x[k] for x in items] for k in ("masks", "prompt_masks", "k", "text")}}


def _rate(batches: Iterable[dict], size_of: Callable[[dict], int]) -> tuple[float, int]:
    """Samples/s after the first batch (worker start-up excluded), and samples seen."""
    it = iter(batches)
    n = size_of(next(it))
    t0, counted = time.perf_counter(), 0
    for batch in it:
        counted += size_of(batch)
    return counted / (time.perf_counter() - t0), n + counted


def _best(make: Callable[[], Iterable[dict]], size_of: Callable[[dict], int],
          repeats: int) -> tuple[float, int]:
    return max(_rate(make(), size_of) for _ in range(repeats))


def _build(out: Path, items: int, size: str | None, objects: int) -> tuple[Path, Path]:
    if size:  # one fixed size, e.g. 2048x1536 with 20 objects (bench_build's generator)
        from bench_build import make_dataset

        w, h = map(int, size.split("x"))
        raw = make_dataset(out / "raw", items, h, w, objects)
    else:  # the COCO synth: mixed small sizes (<= 900x601), 1-6 objects
        raw = synth_dataset("coco", out / "raw", n_items=items, seed=0)
    cfg = parse_config({"dataset": "bench", "reader": {"format": "coco", "root": str(raw)},
                        "out": str(out / "shards"), "shards": {"samples_per_shard": 32}})
    return raw, run_build(cfg, runner="serial", progress=False).build_dir


def _ours(loader: ShardLoader, *, on_cpu: bool) -> Iterable[dict]:
    return (to_device(b, "cpu") for b in loader) if on_cpu else loader


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", help="WxH of every source image (default: the mixed COCO synth)")
    p.add_argument("--objects", type=int, default=20, help="objects per image with --size")
    args = p.parse_args()
    torch.set_num_threads(1)  # the main process must not fight the workers for the 2 cores
    with tempfile.TemporaryDirectory() as tmp:
        raw, build = _build(Path(tmp), args.items, args.size, args.objects)
        dl = dict(batch_size=args.batch_size, num_workers=args.workers)
        print(f"{args.size or 'mixed COCO-synth'}: {args.items} items, batch "
              f"{args.batch_size}, {args.workers} workers, best of "
              f"{args.repeats}; load average {os.getloadavg()[0]:.2f}")
        base_ds = Sa2VAStyleDataset(raw)
        base, n_base = _best(lambda: DataLoader(base_ds, collate_fn=sa2va_collate, **dl),
                             lambda b: len(b["k"]), args.repeats)
        print(f"{'baseline: Sa2VA-style, raw data':36s}  {base:7.1f} samples/s  ({n_base} samples)")
        encoder = Encoder(tiny_tokenizer(), "phi3_chat")
        runs = {"shards, full-res GT (like for like)": (LoaderConfig(gt_masks="full"), None),
                "shards, default (1024 GT, packed)": (LoaderConfig(), None),
                "shards, default + to_device(cpu)": (LoaderConfig(), None),
                "shards, Sa2VA model dict (cpu)": (LoaderConfig(gt_masks="full"), encoder),
                "shards, Sa2VA model dict, referring": (
                    LoaderConfig(gt_masks="full", task="caption_to_mask"), encoder)}
        for name, (cfg, enc) in runs.items():
            loader = ShardLoader(ShardDataset(build, cfg, encoder=enc), **dl)
            rate, n = _best(partial(_ours, loader, on_cpu="to_device" in name),
                            lambda b: len(b["input_ids"] if "input_ids" in b else b["keys"]),
                            args.repeats)
            print(f"{name:36s}  {rate:7.1f} samples/s  ({n} samples)  x{rate / base:.1f}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
