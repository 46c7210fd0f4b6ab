"""Manifests and versions: parquet tables, the dataset card, fingerprints, progress sidecars.

Layout of one build (README.md, "Layout of a build, and what a version is"):
    <out>/<dataset>/<version>/shards/*.tar, samples.parquet, shards.parquet, rejects.parquet,
    dataset.json (written last: its presence means the build is complete).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sa2va_shards.atomic import atomic_path, atomic_write
from sa2va_shards.config import BuildConfig
from sa2va_shards.errors import ConfigError
from sa2va_shards.format import SCHEMA_VERSION
from sa2va_shards.records import (
    ItemRef,
    RejectRecord,
    SampleRecord,
    ShardRecord,
    ShardResult,
)
from sa2va_shards.safe_io import is_regular, open_regular

__all__ = [
    "CARD",
    "LEGACY_SHARD_SCHEMA",
    "REJECT_SCHEMA",
    "SAMPLE_SCHEMA",
    "SHARD_SCHEMA",
    "canonical",
    "count_summary",
    "file_sha256",
    "input_fingerprint",
    "load_progress",
    "parse_result",
    "read_card",
    "read_manifest",
    "read_result",
    "save_progress",
    "version_id",
    "write_card",
    "write_result",
    "write_tables",
]

CARD = "dataset.json"
PROGRESS_DIR = ".progress"

SAMPLE_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("source_id", pa.string()),
    ("n_obj", pa.int32()), ("k", pa.list_(pa.int32())), ("k_zero", pa.int32()),
    ("height", pa.int32()), ("width", pa.int32()), ("sha256", pa.string()),
    ("frames", pa.int32()),
])
SHARD_SCHEMA = pa.schema([
    ("file", pa.string()), ("samples", pa.int64()), ("bytes", pa.int64()), ("sha256", pa.string()),
    ("code", pa.string()),
])
#: shards.parquet of builds made before shards recorded their code fingerprint.
LEGACY_SHARD_SCHEMA = pa.schema(list(SHARD_SCHEMA)[:4])
REJECT_SCHEMA = pa.schema([
    ("source_id", pa.string()), ("level", pa.string()), ("object_id", pa.string()),
    ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
    ("shard", pa.string()),
])


def file_sha256(path: Path) -> str:
    """sha256 of a regular file, read in 1 MiB chunks (a FIFO raises instead of blocking)."""
    sha = hashlib.sha256()
    with open_regular(path) as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces): what every content hash here hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def input_fingerprint(items: Iterable[ItemRef]) -> str:
    """sha256 over the sorted light index (ids, file names, annotations).

    Pixels are not read here (that would mean reading the whole dataset twice); the shards'
    own sha256s pin the pixels of a built version.
    """
    sha = hashlib.sha256()
    for item in sorted(items, key=lambda r: r.source_id):
        sha.update(canonical([item.source_id, item.data]) + b"\n")
    return sha.hexdigest()


def version_id(cfg: BuildConfig, fingerprint: str, *, code: str, files: str) -> str:
    """Short content hash of everything that decides a build's bytes: the resolved semantic
    config, the input index fingerprint, the input files' fingerprint, the code fingerprint
    (`provenance`) and the schema version."""
    payload = {"config": cfg.semantic_dict(), "input": fingerprint, "files": files,
               "code": code, "schema": SCHEMA_VERSION}
    return "v" + hashlib.sha256(canonical(payload)).hexdigest()[:12]


def write_result(path: Path, result: ShardResult) -> None:
    """Save a finished shard's result as JSON (a progress sidecar, a store object's record)."""
    atomic_write(path, canonical(dataclasses.asdict(result)))


def save_progress(build_dir: Path, result: ShardResult) -> None:
    """Record a finished shard's result next to the build, for resume."""
    d = build_dir / PROGRESS_DIR
    d.mkdir(parents=True, exist_ok=True)
    write_result(d / f"{result.shard.file}.json", result)


def load_progress(build_dir: Path, shard_file: str) -> ShardResult | None:
    """The saved result of a shard whose tar still matches its recorded sha256, else None."""
    return read_result(build_dir / PROGRESS_DIR / f"{shard_file}.json",
                       build_dir / "shards" / shard_file)


def parse_result(text: str | bytes) -> ShardResult | None:
    """A saved shard result (`write_result`'s JSON), or None when it is not one."""
    try:
        d = json.loads(text)
        return ShardResult(
            shard=ShardRecord(**d["shard"]), samples=[SampleRecord(**s) for s in d["samples"]],
            rejects=[RejectRecord(**r) for r in d["rejects"]], read=d["read"],
            seconds=d["seconds"], max_rss_mb=d.get("max_rss_mb", 0.0))
    except (ValueError, KeyError, TypeError):
        return None


def read_result(side: Path, tar: Path) -> ShardResult | None:
    """The result saved in `side` if `tar` still has its recorded sha256, else None."""
    if not is_regular(side) or not is_regular(tar):  # a FIFO would hang the resume
        return None
    try:
        result = parse_result(side.read_bytes())
    except OSError:
        return None
    if result is None or file_sha256(tar) != result.shard.sha256:
        return None
    return result


def _utf8(value: Any) -> Any:
    # reject details quote raw text (file names, ids), which may hold lone surrogates that
    # parquet cannot store: they are escaped, so one odd string never fails the whole table
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _table(records: Sequence[Any], schema: pa.Schema) -> pa.Table:
    rows = [{k: _utf8(v) for k, v in dataclasses.asdict(r).items()} for r in records]
    return pa.Table.from_pylist(rows, schema=schema)


def write_tables(build_dir: Path, results: Sequence[ShardResult],
                 plan_rejects: Sequence[RejectRecord]) -> dict[str, str]:
    """Write samples/shards/rejects.parquet from results in shard order (deterministic).

    Returns:
        file name -> sha256, recorded in the card so `verify` covers the tables too.
    """
    ordered = sorted(results, key=lambda r: r.shard.file)
    tables = {
        "samples.parquet": _table([s for r in ordered for s in r.samples], SAMPLE_SCHEMA),
        "shards.parquet": _table([r.shard for r in ordered], SHARD_SCHEMA),
        "rejects.parquet": _table([*plan_rejects, *(x for r in ordered for x in r.rejects)],
                                  REJECT_SCHEMA),
    }
    hashes = {}
    for name, table in tables.items():
        with atomic_path(build_dir / name) as tmp:
            pq.write_table(table, tmp)
            hashes[name] = file_sha256(tmp)
    return hashes


def count_summary(results: Sequence[ShardResult], plan_rejects: Sequence[RejectRecord]) -> dict:
    """read / written / rejected, reasons, object drops and the K histogram."""
    rejects = [*plan_rejects, *(x for r in results for x in r.rejects)]
    sample_rejects = [x for x in rejects if x.level == "sample"]
    object_rejects = [x for x in rejects if x.level == "object"]
    ks = [k for r in results for s in r.samples for k in s.k]
    return {
        "read": sum(r.read for r in results) + len(plan_rejects),
        "written": sum(len(r.samples) for r in results),
        "rejected": len(sample_rejects),
        "rejected_by_reason": dict(sorted(Counter(x.reason for x in sample_rejects).items())),
        "objects_written": len(ks),
        "objects_dropped": len(object_rejects),
        "objects_dropped_by_reason": dict(sorted(Counter(x.reason
                                                         for x in object_rejects).items())),
        "objects_k_zero": sum(k == 0 for k in ks),
        "k_histogram": {str(k): n for k, n in sorted(Counter(ks).items())},
        "shards": len(results),
    }


def write_card(build_dir: Path, card: dict[str, Any]) -> None:
    """Write dataset.json last, atomically: the commit marker of a complete build."""
    atomic_write(build_dir / CARD, json.dumps(card, indent=2, sort_keys=True).encode())


def read_card(build_dir: Path) -> dict[str, Any]:
    """Read a build's dataset.json.

    Raises:
        ConfigError: missing, not a regular file, or not a JSON object (one clean line for
            the CLI instead of a traceback).
    """
    path = Path(build_dir) / CARD
    try:
        with open_regular(path) as f:
            card = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: not found (not a build folder, or an incomplete build)") from e
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable card: {type(e).__name__}: {e}") from e
    if not isinstance(card, dict) or not isinstance(card.get("counts"), dict):
        raise ConfigError(f"{path}: not a dataset card (no counts)")
    return card


def read_manifest(build_dir: Path, name: str, columns: list[str] | None = None) -> pa.Table:
    """Read one of the parquet manifests.

    Raises:
        ConfigError: missing, not a regular file or not parquet.
    """
    path = Path(build_dir) / name
    if not is_regular(path):
        raise ConfigError(f"{path}: missing or not a regular file")
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise ConfigError(f"{path}: unreadable manifest: {type(e).__name__}: {e}") from e
