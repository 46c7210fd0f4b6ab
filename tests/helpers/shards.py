"""Reading a finished build back with stock tools, and the independent oracle for prompt masks:
pycocotools on the raw annotation, then torch `interpolate(mode='nearest')`. None of it goes
through sa2va_shards code paths."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from sa2va_shards.format import iter_samples

GRID = 16


def read_shards(build_dir: Path) -> dict[str, dict[str, bytes]]:
    """key -> {member suffix: bytes} over every shard of a build."""
    return {key: members for tar_path in sorted((Path(build_dir) / "shards").glob("*.tar"))
            for key, members in iter_samples(tar_path)}


def read_rejects(build_dir: Path) -> list[dict]:
    """Rows of rejects.parquet."""
    return pq.read_table(Path(build_dir) / "rejects.parquet").to_pylist()


def decode_raw(seg: Any, h: int, w: int) -> np.ndarray:
    """(h, w) uint8 mask of a raw COCO segmentation, the way Sa2VA's `annToMask` does it."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        counts = seg["counts"]
        rle = {"size": list(seg["size"]),
               "counts": counts.encode() if isinstance(counts, str) else counts}
    return mask_utils.decode(rle)


def torch_prompt(mask: np.ndarray) -> np.ndarray:
    """(16, 16) bool: torch legacy nearest on the full-resolution mask."""
    t = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
    return F.interpolate(t, size=(GRID, GRID), mode="nearest")[0, 0].numpy() != 0


def check_prompt_masks(build_dir: Path,
                       raw_mask: Callable[[dict, dict], np.ndarray]) -> tuple[int, int]:
    """Compare every written object's prompt mask and K with the oracle.

    Args:
        raw_mask: (sample json, object record) -> the object's full-resolution mask decoded
            independently from the raw annotation.

    Returns:
        (objects checked, objects with K = 0).
    """
    checked = k_zero = 0
    for key, m in read_shards(build_dir).items():
        meta = json.loads(m["json"])
        prompt = np.load(io.BytesIO(m["prompt_masks.npy"]), allow_pickle=False)
        k = np.load(io.BytesIO(m["k.npy"]), allow_pickle=False)
        assert prompt.shape == (len(meta["objects"]), GRID, GRID) and k.shape == prompt.shape[:1]
        for i, obj in enumerate(meta["objects"]):
            mask = raw_mask(meta, obj)
            assert mask.shape == (meta["height"], meta["width"]), (key, obj["id"])
            expected = torch_prompt(mask)
            np.testing.assert_array_equal(prompt[i], expected, err_msg=f"{key} obj {obj['id']}")
            assert k[i] == expected.sum(), (key, obj["id"])
            checked += 1
            k_zero += int(k[i] == 0)
    return checked, k_zero


def check_faults(result: Any, expected: dict[str, str], object_faults: dict[str, str]
                 ) -> None:
    """read == written + rejected; each faulty source id rejected with its reason; objects
    dropped from written samples recorded at object level.

    Args:
        expected: source id -> sample-level reason.
        object_faults: source id -> object-level reason (the sample itself is written).
    """
    c = result.counts
    assert c["read"] == c["written"] + c["rejected"]
    rows = read_rejects(result.build_dir)
    samples = {r["source_id"]: r for r in rows if r["level"] == "sample"}
    assert {sid: samples[sid]["reason"] for sid in expected if sid in samples} == expected
    assert c["rejected"] == len(expected) == len(samples)
    for sid, reason in object_faults.items():
        assert sid not in samples
        assert [r["reason"] for r in rows if r["source_id"] == sid] == [reason]


def resign_shard(tar_path: Path) -> None:
    """Record a hand-edited shard's new sha256 and size in shards.parquet, and its samples'
    new content hashes in samples.parquet, as if it had been built that way: tests of the
    loader's decoder edit members and must get past the loader's hash checks to reach it."""
    import hashlib

    import pyarrow as pa

    from sa2va_shards.format import content_hash

    tar_path = Path(tar_path)
    build = tar_path.parent.parent
    data = tar_path.read_bytes()
    members = dict(iter_samples(tar_path))

    def update(name: str, edit: Callable[[dict], None]) -> None:
        path = build / name
        rows = pq.read_table(path).to_pylist()
        for row in rows:
            edit(row)
        pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)

    def shard_row(row: dict) -> None:
        if row["file"] == tar_path.name:
            row.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))

    def sample_row(row: dict) -> None:
        if row["shard"] == tar_path.name and row["key"] in members:
            row["sha256"] = content_hash(members[row["key"]])

    update("shards.parquet", shard_row)
    update("samples.parquet", sample_row)
    card = json.loads((build / "dataset.json").read_text())
    card["manifests"] = {name: hashlib.sha256((build / name).read_bytes()).hexdigest()
                         for name in card.get("manifests", {})}
    (build / "dataset.json").write_text(json.dumps(card))
