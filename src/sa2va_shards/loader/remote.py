"""Builds on object storage (s3://, gs://, ... through fsspec) for the loader: a local mirror
with a bounded shard cache, so everything downstream reads local files and checks them as it
does for a local build.

- `mirror(url, cache_dir)` resolves a dataset folder (its `latest`) or a version folder on the
  store, copies its card and tables (small) to `<cache_dir>/<dataset>/<version>/`, and records
  where the shards live (`.remote`). Nothing else is downloaded up front.
- `ensure_local(shard_path, budget)` is called before a shard is opened: a shard not in the
  cache is downloaded (to a temporary name, then renamed: a reader never sees a partial file),
  then the least recently used shards of the cache are removed until it fits `budget` bytes.
  Workers fetch their own shards in parallel; a file evicted while another process reads it
  stays readable to that process (POSIX).
- The shards' sha256s are checked while they stream, against the mirrored tables, exactly as
  for a local build: a corrupt or partial download is refused, never served.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sa2va_shards.atomic import atomic_path, atomic_write
from sa2va_shards.errors import ConfigError
from sa2va_shards.stores import protocol_of, store_fs

__all__ = ["REMOTE_MARKER", "ensure_local", "fetch_version", "mirror"]

#: in a mirrored build folder: {"url": <the version folder on the store>}.
REMOTE_MARKER = ".remote"
_TABLES = ("dataset.json", "shards.parquet", "samples.parquet", "rejects.parquet")


def mirror(url: str, cache_dir: str | Path) -> Path:
    """The local mirror folder of the build at `url` (see the module docstring).

    Raises:
        ConfigError: the store cannot be opened, or `url` is neither a build nor a dataset
            folder with `latest`.
    """
    fs, root = store_fs(url)
    try:
        if not fs.exists(f"{root}/dataset.json"):
            if not fs.exists(f"{root}/latest"):
                raise ConfigError(f"{url}: no dataset.json and no `latest`: not a build or "
                                  "a dataset folder")
            root = f"{root}/{fs.cat_file(f'{root}/latest').decode().strip()}"
        protocol = protocol_of(fs)
        parts = root.split("/")
        local = Path(cache_dir) / parts[-2] / parts[-1]
        (local / "shards").mkdir(parents=True, exist_ok=True)
        for name in _TABLES:
            if fs.exists(f"{root}/{name}"):
                atomic_write(local / name, fs.cat_file(f"{root}/{name}"))
    except OSError as e:
        raise ConfigError(f"{url}: cannot read the build: {type(e).__name__}: {e}") from e
    atomic_write(local / REMOTE_MARKER, json.dumps({"url": f"{protocol}://{root}"}).encode())
    return local


def ensure_local(path: Path, budget: int) -> None:
    """Make the shard at `path` (inside a mirror) present locally, evicting others to fit
    `budget` bytes; a path outside any mirror is left alone."""
    marker = path.parent.parent / REMOTE_MARKER
    if not marker.is_file():
        return
    if path.is_file():
        os.utime(path)  # recently used
        return
    remote = json.loads(marker.read_text())["url"]
    fs, root = store_fs(remote)
    with atomic_path(path) as tmp:
        fs.get_file(f"{root}/shards/{path.name}", str(tmp))
    _evict(path.parent.parent.parent.parent, budget, keep=path)


def _evict(cache_root: Path, budget: int, keep: Path) -> None:
    """Remove the least recently used cached shards until the cache fits `budget`."""
    shards = [p for p in cache_root.glob("*/*/shards/*.tar") if p.is_file()]
    total = sum(p.stat().st_size for p in shards)
    for p in sorted(shards, key=lambda p: p.stat().st_mtime):
        if total <= budget:
            break
        if p != keep:
            total -= p.stat().st_size
            p.unlink(missing_ok=True)


def fetch_version(url: str, cache_dir: str | Path) -> Path:
    """The build at `url` (a version folder, or a dataset folder's `latest`) copied whole
    into `cache_dir`: its mirror with every shard the tables list (for `verify`, which reads
    every byte anyway)."""
    import pyarrow.parquet as pq

    local = mirror(url, cache_dir)
    try:
        files = pq.read_table(local / "shards.parquet", columns=["file"])["file"].to_pylist()
    except (OSError, KeyError) as e:
        raise ConfigError(f"{url}: no readable shards.parquet: {e}") from e
    for name in files:
        ensure_local(local / "shards" / name, budget=2**62)
    return local

