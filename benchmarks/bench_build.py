"""Build throughput vs a Sa2VA-style per-sample baseline and vs the codec floor, in one run.

All three run on the same synthetic COCO-format data, one process, one torch thread (samples/s
per core); the build is also run on a 2-CPU local Ray. Results go to docs/benchmarks.md.

    python benchmarks/bench_build.py [--n 40] [--size 2048x1536] [--objects 20]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.build import run_build
from sa2va_shards.config import parse_config
from sa2va_shards.readers import _synth


def make_dataset(root: Path, n: int, h: int, w: int, n_obj: int, seed: int = 0) -> Path:
    """COCO-format set: n photo-like JPEGs (q90) with n_obj ellipse polygons / box RLEs each."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i in range(n):
        (root / "images" / f"{i:06d}.jpg").write_bytes(
            _synth.encode_image(_synth.make_image(rng, h, w)))
        doc["images"].append({"id": i, "file_name": f"{i:06d}.jpg", "height": h, "width": w})
        for j, (kind, shape) in enumerate(_synth.random_objects(rng, h, w, n_obj)):
            if kind == "ellipse":
                seg = [_synth.ellipse_polygon(*shape)]
            else:
                m = _synth.box_mask(h, w, *shape)
                seg = mask_utils.encode(np.asfortranarray(m))
                seg = {"size": [h, w], "counts": seg["counts"].decode()}
            doc["annotations"].append({"id": i * 1000 + j, "image_id": i, "category_id": 1,
                                       "segmentation": seg, "bbox": [0, 0, 1, 1], "iscrowd": 0})
    (root / "annotations" / "instances.json").write_text(json.dumps(doc))
    return root


def _ann_to_mask(seg, h: int, w: int) -> np.ndarray:
    """Sa2VA's annToMask: one object at a time."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    else:
        rle = seg
    return mask_utils.decode(rle)


def baseline(root: Path) -> float:
    """Per sample, the way Sa2VA's dataset code does it: PIL decode + convert, PIL bicubic to
    1024 (DirectResize) and JPEG encode; per object annToMask, float F.interpolate nearest to
    16x16 (prompt mask) and to 1024, K, RLE encode of the GT and 1024 masks."""
    doc = json.loads((root / "annotations" / "instances.json").read_text())
    anns: dict[int, list] = {}
    for a in doc["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    t0 = time.perf_counter()
    for img in doc["images"]:
        image = Image.open(root / "images" / img["file_name"]).convert("RGB")
        g = image.resize((1024, 1024), Image.Resampling.BICUBIC)
        g.save(io.BytesIO(), format="JPEG", quality=95)
        for a in anns[img["id"]]:
            m = torch.from_numpy(_ann_to_mask(a["segmentation"], img["height"], img["width"]))
            prompt = F.interpolate(m[None, None].float(), size=(16, 16), mode="nearest")
            int(prompt.bool().sum())
            m1024 = F.interpolate(m[None, None].float(), size=(1024, 1024), mode="nearest")
            mask_utils.encode(np.asfortranarray(m.numpy()))
            mask_utils.encode(np.asfortranarray(m1024[0, 0].to(torch.uint8).numpy()))
    return len(doc["images"]) / (time.perf_counter() - t0)


def codec_floor(root: Path) -> float:
    """Decode the source JPEG + encode a 1024 JPEG q95: the cost no build can avoid."""
    files = sorted((root / "images").glob("*.jpg"))
    ready = np.asarray(Image.open(files[0]).convert("RGB").resize((1024, 1024)))
    t0 = time.perf_counter()
    for f in files:
        np.asarray(Image.open(f).convert("RGB"))
        Image.fromarray(ready).save(io.BytesIO(), format="JPEG", quality=95)
    return len(files) / (time.perf_counter() - t0)


def ours(root: Path, out: Path, *, runner: str, num_cpus: int | None = None,
         backend: str = "torch") -> float:
    cfg = parse_config({"dataset": f"bench_{runner}_{backend}",
                        "reader": {"format": "coco", "root": str(root)},
                        "image": {"resize_backend": backend},
                        "shards": {"samples_per_shard": 10}, "out": str(out)})
    result = run_build(cfg, runner=runner, num_cpus=num_cpus, progress=False)
    return result.counts["read"] / result.timings["shards_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--size", default="2048x1536", help="WxH of the source images")
    ap.add_argument("--objects", type=int, default=20)
    ap.add_argument("--ray", action="store_true", help="also time a 2-CPU local Ray build")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_dataset(Path(tmp) / "raw", args.n, h, w, args.objects)
        rows = {
            "codec floor (decode src + encode 1024 JPEG)": codec_floor(root),
            "Sa2VA-style per-sample baseline": baseline(root),
            "sa2va-shards build, serial (torch resize)": ours(root, Path(tmp) / "o1",
                                                              runner="serial"),
            "sa2va-shards build, serial (pillow resize)": ours(root, Path(tmp) / "o2",
                                                               runner="serial", backend="pillow"),
        }
        if args.ray:
            rows["sa2va-shards build, Ray 2 CPUs (torch resize)"] = ours(
                root, Path(tmp) / "o3", runner="ray", num_cpus=2)
    floor, base = rows["codec floor (decode src + encode 1024 JPEG)"], rows[
        "Sa2VA-style per-sample baseline"]
    print(f"\n{args.n} images {w}x{h}, {args.objects} objects each, 1 torch thread\n")
    print("| pipeline | samples/s | vs baseline | vs codec floor |\n|---|---|---|---|")
    for name, v in rows.items():
        print(f"| {name} | {v:.2f} | {v / base:.2f}x | {v / floor:.2f}x |")


if __name__ == "__main__":
    main()
