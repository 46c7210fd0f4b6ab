"""Build throughput vs a Sa2VA-style per-sample baseline and vs the codec floor, in one run.

All run on the same synthetic COCO-format data in one run: one process, one torch thread
(samples/s per core), then the build on a 2-CPU local Ray with 1 and 2 workers (scaling) and the
workers' peak RSS. Results go to docs/benchmarks.md.

    python benchmarks/bench_build.py [--quick]
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

from sa2va_shards.build.run import run_build
from sa2va_shards.config import parse_config
from sa2va_shards.synth import common


def make_dataset(root: Path, n: int, h: int, w: int, n_obj: int, seed: int = 0) -> Path:
    """COCO-format set: n photo-like JPEGs (q90) with n_obj ellipse polygons / box RLEs each."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i in range(n):
        (root / "images" / f"{i:06d}.jpg").write_bytes(
            common.encode_image(common.make_image(rng, h, w)))
        doc["images"].append({"id": i, "file_name": f"{i:06d}.jpg", "height": h, "width": w})
        for j, (kind, shape) in enumerate(common.random_objects(rng, h, w, n_obj)):
            if kind == "ellipse":
                seg = [common.ellipse_polygon(*shape)]
            else:
                m = common.box_mask(h, w, *shape)
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


def ours(root: Path, out: Path, *, runner: str, backend: str = "torch",
         cpus_per_task: float = 1.0, shard_size: int = 4) -> tuple[float, float]:
    """samples/s of a build (shard phase only) and the peak RSS of its workers (MiB)."""
    cfg = parse_config({"dataset": f"bench_{runner}_{backend}_{int(cpus_per_task * 10)}",
                        "reader": {"format": "coco", "root": str(root)},
                        "image": {"resize_backend": backend},
                        "shards": {"samples_per_shard": shard_size}, "out": str(out)})
    result = run_build(cfg, runner=runner, progress=False, cpus_per_task=cpus_per_task)
    t = result.timings
    return result.counts["read"] / t["shards_s"], t["max_worker_rss_mb"]


def scenario(tmp: Path, n: int, h: int, w: int, n_obj: int, ray_on: bool) -> list[str]:
    """One data shape: every pipeline on the same files, in one run; markdown table rows."""
    root = make_dataset(tmp / f"raw{w}x{h}", n, h, w, n_obj)
    shard = max(1, n // 8)  # 8 shards: both Ray workers stay busy to the end
    rows = {"codec floor (decode src + encode 1024 JPEG)": (codec_floor(root), None),
            "Sa2VA-style per-sample baseline": (baseline(root), None)}
    rows["sa2va-shards, serial, torch resize"] = ours(root, tmp / "o1", runner="serial",
                                                      shard_size=shard)
    rows["sa2va-shards, serial, pillow resize"] = ours(root, tmp / "o2", runner="serial",
                                                       backend="pillow", shard_size=shard)
    for workers, cpus in ((1, 2.0), (2, 1.0)) if ray_on else ():
        # warm-up right before timing: a worker's first task imports torch and webdataset
        # (~5 s), and Ray retires workers that idle, so warm the exact shape being timed
        ours(root, tmp / f"warm{workers}", runner="ray", cpus_per_task=cpus, shard_size=shard)
        rows[f"sa2va-shards, Ray, {workers} worker{'s' if workers > 1 else ''}"] = ours(
            root, tmp / f"ray{workers}", runner="ray", cpus_per_task=cpus, shard_size=shard)
    floor = rows["codec floor (decode src + encode 1024 JPEG)"][0]
    base = rows["Sa2VA-style per-sample baseline"][0]
    out = [f"\n**{n} images {w}x{h}, {n_obj} objects each**\n",
           "| pipeline | samples/s | vs baseline | vs codec floor | peak worker RSS |",
           "|---|---|---|---|---|"]
    for name, (v, rss) in rows.items():
        rss_s = f"{rss:.0f} MiB" if rss else "-"
        out.append(f"| {name} | {v:.2f} | {v / base:.2f}x | {v / floor:.2f}x | {rss_s} |")
    if ray_on:
        one, two = rows["sa2va-shards, Ray, 1 worker"][0], rows["sa2va-shards, Ray, 2 workers"][0]
        out.append(f"\nRay scaling 1 -> 2 workers: {two / one:.2f}x")
    return out


def make_clips(root: Path, n: int, h: int, w: int, n_frames: int, n_obj: int) -> Path:
    """SA-V layout: H.264 mp4 + _manual.json per clip (the SA-V synthesiser, at this size)."""
    from sa2va_shards.synth.sav import write_clip

    rng = np.random.default_rng(0)
    for i in range(n):
        write_clip(root, f"sav_{i + 1:06d}", rng, n_frames=n_frames, size=(h, w), n_obj=n_obj)
    return root


def _video_frames(path: Path, last: int) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        out = []
        for i, f in enumerate(c.decode(video=0)):
            out.append(f.to_ndarray(format="rgb24"))
            if i >= last:
                break
    return out


def video_floor(root: Path, max_frames: int) -> float:
    """Decode the mp4 up to the last sampled frame + encode one 1024 JPEG per sampled frame."""
    clips = sorted(root.glob("*.mp4"))
    t0 = time.perf_counter()
    for clip in clips:
        frames = _video_frames(clip, 4 * (max_frames - 1))[::4]
        ready = np.asarray(Image.fromarray(frames[0]).resize((1024, 1024)))
        for _ in frames:
            Image.fromarray(ready).save(io.BytesIO(), format="JPEG", quality=95)
    return len(clips) / (time.perf_counter() - t0)


def video_baseline(root: Path, max_frames: int) -> float:
    """Sa2VA's VideoSAM2Dataset way: decode the whole mp4, take every 4th frame; per frame PIL
    bicubic to 1024 + JPEG; per frame and object decode the RLE, float F.interpolate to 16x16
    and 1024, K, RLE encode."""
    clips = sorted(root.glob("*.mp4"))
    t0 = time.perf_counter()
    for clip in clips:
        doc = json.loads(clip.with_name(clip.stem + "_manual.json").read_text())
        frames = _video_frames(clip, 10**9)[::4][:max_frames]
        for t, frame in enumerate(frames):
            Image.fromarray(frame).resize((1024, 1024), Image.Resampling.BICUBIC).save(
                io.BytesIO(), format="JPEG", quality=95)
            for rle in doc["masklet"][t]:
                m = torch.from_numpy(mask_utils.decode(rle))
                prompt = F.interpolate(m[None, None].float(), size=(16, 16), mode="nearest")
                int(prompt.bool().sum())
                m1024 = F.interpolate(m[None, None].float(), size=(1024, 1024), mode="nearest")
                mask_utils.encode(np.asfortranarray(m1024[0, 0].to(torch.uint8).numpy()))
    return len(clips) / (time.perf_counter() - t0)


def video_scenario(tmp: Path, n: int, n_frames: int, n_obj: int, max_frames: int) -> list[str]:
    """SA-V-like 1080p clips: floor, baseline and the serial build, in one run."""
    root = make_clips(tmp / "sav", n, 1080, 1920, n_frames, n_obj)
    cfg = parse_config({"dataset": "bench_sav", "reader": {
        "format": "sav", "root": str(root), "options": {"max_frames": max_frames}},
        "shards": {"samples_per_shard": 2}, "out": str(tmp / "osav")})
    floor, base = video_floor(root, max_frames), video_baseline(root, max_frames)
    result = run_build(cfg, runner="serial", progress=False)
    ours_rate = result.counts["read"] / result.timings["shards_s"]
    out = [f"\n**{n} SA-V-like clips 1920x1080, {n_frames} frames at 24 fps, {n_obj} objects, "
           f"{max_frames} annotated frames per sample**\n",
           "| pipeline | clips/s | vs baseline | vs codec floor |", "|---|---|---|---|"]
    for name, v in [("codec floor (decode mp4 + encode 1024 JPEGs)", floor),
                    ("Sa2VA-style per-clip baseline", base),
                    ("sa2va-shards, serial, torch resize", ours_rate)]:
        out.append(f"| {name} | {v:.2f} | {v / base:.2f}x | {v / floor:.2f}x |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer images, no Ray")
    args = ap.parse_args()
    torch.set_num_threads(1)  # per-core figures; Ray workers get one thread each too
    ray_on = not args.quick
    if ray_on:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    scale = 0.25 if args.quick else 1.0
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, h, w, n_obj in [(64, 480, 640, 7), (32, 1536, 2048, 20)]:
            lines += scenario(Path(tmp), max(8, int(n * scale)), h, w, n_obj, ray_on)
        lines += video_scenario(Path(tmp), max(2, int(4 * scale)), 32, 5, 8)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
