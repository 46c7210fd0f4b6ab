"""The device side on a GPU: `to_device` and Sa2VA's model input dict made on CUDA vs on the CPU,
from the same shards, and loader throughput with each; image decode on the GPU
(`image_decode`, nvJPEG through torchvision) vs in the workers. The shards are built
beforehand (a GPU machine may lack Ray / PyAV); the check needs only the loader's packages.

    python benchmarks/gpu_check.py build OUT     # COCO + SA-V (Ref-SAV) synth builds
    python benchmarks/gpu_check.py check OUT     # on the GPU machine: compare, time, print JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sa2va_shards.loader import (  # noqa: E402
    LoaderConfig,
    ShardDataset,
    ShardLoader,
    gpu_decode,  # noqa: E402
)
from sa2va_shards.loader.batch import IMAGENET_STD  # noqa: E402
from sa2va_shards.loader.encode import Encoder  # noqa: E402
from tests.helpers.tokenizer import tiny_tokenizer  # noqa: E402

TASKS = ("mask_to_caption", "caption_to_mask")


def build(out: Path) -> None:
    from sa2va_shards.build.run import run_build
    from sa2va_shards.config import parse_config
    from sa2va_shards.synth import synth_dataset

    for fmt, n, options in (("coco", 48, {}), ("sav", 4, {"expressions": "sam_v_final_v3.json"})):
        raw = synth_dataset(fmt, out / "raw" / fmt, n_items=n, seed=0)
        cfg = parse_config({"dataset": f"gpu_{fmt}", "reader": {"format": fmt, "root": str(raw),
                                                                "options": options},
                            "out": str(out / "shards"), "shards": {"samples_per_shard": 8}})
        run_build(cfg, runner="serial", progress=False)


def _levels(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference of two normalised images, in 8-bit levels."""
    std = torch.tensor(IMAGENET_STD, device=a.device).view(3, 1, 1) * 255
    return float(((a.float() - b.float().to(a.device)).abs() * std).max())


def _compare(a: dict, b: dict) -> dict:
    """CUDA batch `a` vs CPU batch `b`: exact keys and the image difference in levels."""
    exact = all(torch.equal(a[k].cpu(), b[k]) for k in ("input_ids", "labels", "attention_mask"))
    for key in ("prompt_masks", "g_pixel_values", "masks"):
        exact &= all(torch.equal(x.cpu(), y) for x, y in zip(a.get(key) or [], b.get(key) or [],
                                                              strict=True))
    pa, pb = a["pixel_values"], b["pixel_values"]
    pa, pb = (list(pa), list(pb)) if isinstance(pa, list) else ([pa], [pb])
    return {"exact": bool(exact), "levels": max(_levels(x, y) for x, y in zip(pa, pb,
                                                                              strict=True))}


def _rate(ds: ShardDataset, device: str, workers: int) -> float:
    loader = ShardLoader(ds, batch_size=8, num_workers=workers, device=device)
    it = iter(loader)
    next(it)
    t0, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch["input_ids"])
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def _decode_check(build_dir: Path, encoder: Encoder, task: str, device: str = "cuda") -> dict:
    """Image decode on the device (`image_decode="device"`: nvJPEG on CUDA when torchvision is
    installed) vs in the workers, both moving batches to `device`: the largest SAM2-input and
    `pixel_values` differences in levels, and samples/s of each."""
    cfgs = {m: LoaderConfig(gt_masks="full", task=task, max_tiles=6, shuffle=False,
                            image_decode=m) for m in ("device", "worker")}
    on_device, in_workers = (ShardLoader(ShardDataset(build_dir, cfgs[m], encoder=encoder),
                                         batch_size=4, num_workers=0, device=device)
                             for m in ("device", "worker"))
    sam = pix = 0.0
    for a, b in zip(on_device, in_workers, strict=True):
        for x, y in zip(a.get("g_pixel_values") or [], b.get("g_pixel_values") or [],
                        strict=True):
            sam = max(sam, float((x.float() - y.float()).abs().max()))
        pa, pb = a["pixel_values"], b["pixel_values"]
        pa, pb = (list(pa), list(pb)) if isinstance(pa, list) else ([pa], [pb])
        pix = max(pix, *(_levels(x, y) for x, y in zip(pa, pb, strict=True)))
    return {"torchvision": gpu_decode.torchvision_decode_jpeg() is not None,
            "sam2_max_levels": sam, "pixel_values_max_levels": pix,
            "samples_per_s": {m: round(_rate(ShardDataset(build_dir, cfgs[m], encoder=encoder),
                                             device, 4), 1) for m in cfgs}}


def check(out: Path) -> dict:
    encoder = Encoder(tiny_tokenizer(), "phi3_chat")
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for build_dir in sorted((out / "shards").iterdir()):
        for task in TASKS:
            cfg = LoaderConfig(gt_masks="full", task=task, max_tiles=6, shuffle=False)
            cuda, cpu = (ShardLoader(ShardDataset(build_dir, cfg, encoder=encoder),
                                     batch_size=4, num_workers=0, device=dev)
                         for dev in ("cuda", "cpu"))
            pairs = [_compare(a, b) for a, b in zip(cuda, cpu, strict=True)]
            ds = ShardDataset(build_dir, cfg, encoder=encoder)
            report[f"{build_dir.name}/{task}"] = {
                "batches": len(pairs), "exact": all(p["exact"] for p in pairs),
                "max_levels": max(p["levels"] for p in pairs),
                "samples_per_s": {dev: round(_rate(ds, dev, 4), 1) for dev in ("cpu", "cuda")},
                "image_decode": _decode_check(build_dir, encoder, task)}
    return report


if __name__ == "__main__":
    verb, where = sys.argv[1], Path(sys.argv[2])
    if verb == "build":
        build(where)
    else:
        print(json.dumps(check(where), indent=1))
