"""Check a build against its manifests: hashes, counts, decodability, prompt masks and K."""

from __future__ import annotations

import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sa2va_shards import ops
from sa2va_shards.errors import ConfigError
from sa2va_shards.format import (
    GT_MASKS,
    MASKS,
    META,
    PROMPT_MASKS,
    THUMB,
    TILE_MEMBERS,
    K,
    content_hash,
    decode_json,
    decode_npy,
    image_members,
    iter_samples,
)
from sa2va_shards.manifest import (
    CARD,
    LEGACY_SHARD_SCHEMA,
    REJECT_SCHEMA,
    SAMPLE_SCHEMA,
    SHARD_SCHEMA,
    file_sha256,
    read_card,
    read_manifest,
)

__all__ = ["MANIFESTS", "VerifyReport", "verify_build"]

#: the tables whose sha256 the card records (in this order).
MANIFESTS = ("samples.parquet", "shards.parquet", "rejects.parquet")


@dataclass
class VerifyReport:
    """What `verify_build` checked and every problem it found."""

    build_dir: Path
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)
    #: what could not be checked (not a failure): e.g. an older card without table hashes.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _members(tar_path: Path) -> dict[str, dict[str, bytes]]:
    samples = list(iter_samples(tar_path))
    members = dict(samples)
    if len(members) != len(samples):
        raise ValueError("a sample key appears twice")
    return members


def _check_row(key: str, members: dict[str, bytes], row: dict) -> list[str]:
    """samples.parquet's row against the sample itself: content hash, and what `diff`,
    `stats` and users read from the table (source id, size, object count, K, frames)."""
    if content_hash(members) != row["sha256"]:
        return [f"{key}: samples.parquet sha256 differs from the sample's members"]
    try:
        k = decode_npy(members[K])
        meta = decode_json(members[META])
        ids = (meta["source_id"], meta["height"], meta["width"])
    except Exception as e:  # noqa: BLE001 - reported by _check_sample too
        return [f"{key}: k.npy or json does not decode: {type(e).__name__}"]
    k_obj = k.max(axis=0) if k.ndim == 2 else k
    table = (row["source_id"], row["height"], row["width"], row["n_obj"], list(row["k"]),
             row["k_zero"], row["frames"])
    real = (*ids, int(k_obj.size), [int(v) for v in k_obj], int((k_obj == 0).sum()),
            int(k.shape[0]) if k.ndim == 2 else 1)
    return [] if table == real else [f"{key}: samples.parquet row (source_id, height, width, "
                                     f"n_obj, k, k_zero, frames) {table} != the sample's {real}"]


def _check_sample(key: str, members: dict[str, bytes], grid: int, size: int) -> list[str]:
    try:
        prompt = decode_npy(members[PROMPT_MASKS])
        k = decode_npy(members[K])
        meta = decode_json(members[META])
        rles = decode_json(members[MASKS])
        gt = decode_json(members[GT_MASKS])
        images = [members[name] for name in image_members(members)]
        for data in images:
            _check_image(data, meta, size, key)
        for name in TILE_MEMBERS & set(members):  # full-detail tiles: their own geometry
            _check_tiles(name, members[name], meta)
    except Exception as e:  # noqa: BLE001 - verify reports, it does not stop
        return [f"{key}: member does not decode: {type(e).__name__}: {e}"]
    if meta.get("chat"):
        return _check_chat(key, meta, prompt, k, rles, gt, len(images))
    if meta.get("kind") == "video":  # frames axis first: flatten (T, n) to T * n
        rles, gt = [r for f in rles for r in f], [r for f in gt for r in f]
    n_obj = len(meta["objects"])
    masks = ops.rle_decode(rles, height=size, width=size)
    flat_prompt = prompt.reshape(-1, grid, grid)
    problems = []
    if not np.array_equal(ops.pool_masks(masks, grid=grid), flat_prompt) and not any(
            o.get("k_fallback") for o in meta["objects"]):
        problems.append(f"{key}: prompt masks differ from those re-derived from the stored masks")
    if not np.array_equal(ops.count_k(prompt), k):
        problems.append(f"{key}: K {k.tolist()} != prompt-mask sums {ops.count_k(prompt).tolist()}")
    if not (len(gt) == len(masks) == flat_prompt.shape[0] == k.size
            and prompt.shape[-3] == n_obj and len(images) == k.size // max(n_obj, 1)):
        problems.append(f"{key}: object or frame counts differ across members")
    return problems


def _check_chat(key: str, meta: dict, prompt: np.ndarray, k: np.ndarray, rles: list,
                gt: list, n_images: int) -> list[str]:
    """A conversation-only sample: no objects, empty mask members, and its pictures (none
    for pure text, one for an image, one per frame for a video)."""
    frames = int(meta.get("frames", 0)) if meta.get("kind") == "video" else 1
    want = {"text": 0, "image": 1, "video": frames}.get(meta.get("kind"), -1)
    empty = [[] for _ in range(frames)] if meta.get("kind") == "video" else []
    ok = (meta["objects"] == [] and prompt.size == 0 and k.size == 0 and rles == empty
          and gt == empty and n_images == want)
    return [] if ok else [f"{key}: conversation-only sample has objects, masks or "
                          f"{n_images} pictures for kind {meta.get('kind')!r}"]


def _check_image(data: bytes, meta: dict, size: int, key: str) -> None:
    """The image member decodes at its size: S x S, or, for a kept source (`image.store`),
    the original's height x width the json records."""
    if meta.get("image_store") != "original":
        ops.decode_image(data, max_pixels=size * size, name=key)
        return
    h, w = int(meta["height"]), int(meta["width"])
    a = ops.decode_image(data, max_pixels=h * w, name=key)
    if a.shape[:2] != (h, w):
        raise ValueError(f"kept source is {a.shape[1]}x{a.shape[0]}, the json says {w}x{h}")


def _check_tiles(name: str, data: bytes, meta: dict) -> None:
    """`thumb.jpg` is square; `tiles.jpg` has the shape of the grid the json records."""
    a = ops.decode_image(data, max_pixels=1 << 28, name=name)
    cols, rows = (meta.get("tiles") or {}).get("grid") or (1, 1)
    h, w = a.shape[:2]
    ok = h == w if name == THUMB else (h % rows == 0 and h // rows * cols == w)
    if not ok:
        raise ValueError(f"{name} is {w}x{h}, not the recorded {cols}x{rows} tile grid")


def _check_manifest_hashes(build_dir: Path, card: dict, report: VerifyReport) -> None:
    recorded = card.get("manifests")
    if not isinstance(recorded, dict):
        report.notes.append(f"{CARD} records no manifest hashes (built before they were "
                            "recorded): the parquet tables are only cross-checked")
        return
    for name in MANIFESTS:
        try:
            ok = file_sha256(build_dir / name) == recorded.get(name)
        except OSError as e:
            report.problems.append(f"{name}: unreadable: {type(e).__name__}: {e}")
            continue
        if not ok:
            report.problems.append(f"{name}: sha256 differs from {CARD} (edited or corrupt)")


def _read_tables(build_dir: Path, report: VerifyReport) -> tuple | None:
    tables = []
    for name, schema in zip(MANIFESTS, (SAMPLE_SCHEMA, SHARD_SCHEMA, REJECT_SCHEMA), strict=True):
        try:
            table = read_manifest(build_dir, name)
        except ConfigError as e:
            report.problems.append(str(e))
            return None
        legacy = schema is SHARD_SCHEMA and table.schema.equals(LEGACY_SHARD_SCHEMA)
        if not (table.schema.equals(schema) or legacy):  # tampered: rows cannot be trusted
            report.problems.append(f"{name}: columns are not the schema's "
                                   f"({', '.join(table.schema.names)})")
            return None
        tables.append(table.to_pylist())
    return tuple(tables)


def _check_shard(build_dir: Path, rec: dict, rows: dict[str, dict], deep: bool, grid: int,
                 size: int, report: VerifyReport) -> None:
    path = build_dir / "shards" / rec["file"]
    try:
        if file_sha256(path) != rec["sha256"]:
            report.problems.append(f"{rec['file']}: sha256 mismatch (file changed or corrupt)")
            return
        members = _members(path)
    except (OSError, tarfile.TarError, ValueError) as e:  # missing, a FIFO, unreadable, dup
        report.problems.append(f"{rec['file']}: {type(e).__name__}: {e}")
        return
    report.samples += len(members)
    if set(members) != set(rows) or len(members) != rec["samples"]:
        report.problems.append(f"{rec['file']}: samples differ from samples.parquet")
    for key, m in members.items():
        found = _check_row(key, m, rows[key]) if key in rows else []
        found += _check_sample(key, m, grid, size) if deep else []
        report.problems += [f"{rec['file']}: {p}" for p in found]


def verify_build(build_dir: str | Path, *, deep: bool = True,
                 progress: bool = False) -> VerifyReport:
    """Check every file of a build: the three parquet tables against the hashes in the card,
    every shard against shards.parquet, every sample against its samples.parquet row
    (content hash, n_obj, K), the counts against the card, and (deep) that every member
    decodes and prompt masks / K re-derive from the stored 1024 masks. Never raises for a
    damaged build: everything wrong is a line in `problems`."""
    build_dir = Path(build_dir)
    report = VerifyReport(build_dir=build_dir)
    try:
        card = read_card(build_dir)
        grid, size = card["preprocessing"]["grid"], card["preprocessing"]["image_size"]
    except (ConfigError, KeyError, TypeError) as e:
        report.problems.append(f"{build_dir}: {CARD}: {e}")
        return report
    _check_manifest_hashes(build_dir, card, report)
    tables = _read_tables(build_dir, report)
    if tables is None:
        return report
    samples, shards, rejects = tables
    by_shard: dict[str, dict[str, dict]] = defaultdict(dict)
    for s in samples:
        by_shard[s["shard"]][s["key"]] = s
    for rec in tqdm(shards, desc="verify", unit="shard", disable=not progress):
        report.shards += 1
        try:
            _check_shard(build_dir, rec, by_shard[rec["file"]], deep, grid, size, report)
        except (TypeError, ValueError, KeyError) as e:  # a null or odd value in a table row
            report.problems.append(f"{rec.get('file')}: malformed manifest row: "
                                   f"{type(e).__name__}: {e}")
    _check_counts(card["counts"], samples, rejects, report)
    _check_code(card, shards, report)
    return report


def _check_code(card: dict, shards: list[dict], report: VerifyReport) -> None:
    """Every shard was written by the code the card names (a version is one code's bytes)."""
    want = (card.get("code") or {}).get("id")
    if want is None:  # a build from before shards recorded their code
        return
    for rec in shards:
        if rec.get("code") != want:
            report.problems.append(f"{rec.get('file')}: written by code {rec.get('code')!r}, "
                                   f"the card's is {want!r} (a version mixing two codes)")


def _check_counts(counts: dict, samples: list, rejects: list, report: VerifyReport) -> None:
    n_rejected = sum(r["level"] == "sample" for r in rejects)
    n_dropped = sum(r["level"] == "object" for r in rejects)
    if (counts.get("written"), counts.get("rejected"), counts.get("objects_dropped",
                                                                   n_dropped)) != (
            len(samples), n_rejected, n_dropped):
        report.problems.append("dataset.json counts differ from samples/rejects.parquet")
    if counts.get("read") != len(samples) + n_rejected:
        report.problems.append(f"read {counts.get('read')} != written {len(samples)} + "
                               f"rejected {n_rejected}")
