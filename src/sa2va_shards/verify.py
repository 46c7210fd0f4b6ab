"""Check a build against its manifests: hashes, counts, decodability, prompt masks and K."""

from __future__ import annotations

import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from sa2va_shards import ops
from sa2va_shards.manifest import CARD, file_sha256, read_card
from sa2va_shards.schema import decode_npy, decode_sample_json

__all__ = ["VerifyReport", "verify_build"]


@dataclass
class VerifyReport:
    """What `verify_build` checked and every problem it found."""

    build_dir: Path
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _members(tar_path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(tar_path) as tar:
        for m in tar:
            key, _, suffix = m.name.partition(".")
            samples[key][suffix] = tar.extractfile(m).read()
    return samples


def _check_sample(key: str, members: dict[str, bytes], grid: int, size: int) -> list[str]:
    try:
        prompt = decode_npy(members["prompt_masks.npy"])
        k = decode_npy(members["k.npy"])
        meta = decode_sample_json(members["json"])
        rles_1024 = decode_sample_json(members["masks_1024.json"])
        gt = decode_sample_json(members["gt_masks.json"])
        images = [v for name, v in sorted(members.items()) if name.endswith("jpg")]
        for data in images:
            ops.decode_image(data, max_pixels=size * size, name=key)
    except Exception as e:  # noqa: BLE001 - verify reports, it does not stop
        return [f"{key}: member does not decode: {type(e).__name__}: {e}"]
    if meta.get("kind") == "video":  # frames axis first: flatten (T, n) to T * n
        rles_1024, gt = [r for f in rles_1024 for r in f], [r for f in gt for r in f]
    n_obj = len(meta["objects"])
    masks = ops.rle_decode(rles_1024, height=size, width=size)
    flat_prompt = prompt.reshape(-1, grid, grid)
    problems = []
    if not np.array_equal(ops.pool_masks(masks, grid=grid), flat_prompt) and not any(
            o.get("k_fallback") for o in meta["objects"]):
        problems.append(f"{key}: prompt masks differ from those re-derived from masks_1024")
    if not np.array_equal(ops.count_k(prompt), k):
        problems.append(f"{key}: K {k.tolist()} != prompt-mask sums {ops.count_k(prompt).tolist()}")
    if not (len(gt) == len(masks) == flat_prompt.shape[0] == k.size
            and prompt.shape[-3] == n_obj and len(images) == k.size // max(n_obj, 1)):
        problems.append(f"{key}: object or frame counts differ across members")
    return problems


def verify_build(build_dir: str | Path, *, deep: bool = True,
                 progress: bool = False) -> VerifyReport:
    """Re-hash every shard against shards.parquet, check the counts add up and (deep) that every
    member decodes and prompt masks / K re-derive from the stored 1024 masks."""
    build_dir = Path(build_dir)
    report = VerifyReport(build_dir=build_dir)
    if not (build_dir / CARD).exists():
        report.problems.append(f"{build_dir}: no {CARD} (incomplete build)")
        return report
    card = read_card(build_dir)
    grid, size = card["preprocessing"]["grid"], card["preprocessing"]["image_size"]
    shards = pq.read_table(build_dir / "shards.parquet").to_pylist()
    samples = pq.read_table(build_dir / "samples.parquet").to_pylist()
    rejects = pq.read_table(build_dir / "rejects.parquet").to_pylist()
    by_shard = defaultdict(set)
    for s in samples:
        by_shard[s["shard"]].add(s["key"])
    for rec in tqdm(shards, desc="verify", unit="shard", disable=not progress):
        path = build_dir / "shards" / rec["file"]
        report.shards += 1
        if not path.exists():
            report.problems.append(f"{rec['file']}: missing")
            continue
        if file_sha256(path) != rec["sha256"]:
            report.problems.append(f"{rec['file']}: sha256 mismatch (file changed or corrupt)")
            continue
        members = _members(path)
        report.samples += len(members)
        if set(members) != by_shard[rec["file"]] or len(members) != rec["samples"]:
            report.problems.append(f"{rec['file']}: samples differ from samples.parquet")
        if deep:
            for key, m in members.items():
                found = _check_sample(key, m, grid, size)
                report.problems += [f"{rec['file']}: {p}" for p in found]
    counts = card["counts"]
    n_rejected = sum(r["level"] == "sample" for r in rejects)
    if counts["written"] != len(samples) or counts["rejected"] != n_rejected:
        report.problems.append("dataset.json counts differ from samples/rejects.parquet")
    if counts["read"] != len(samples) + n_rejected:
        report.problems.append(f"read {counts['read']} != written {len(samples)} + rejected "
                               f"{n_rejected}")
    return report
