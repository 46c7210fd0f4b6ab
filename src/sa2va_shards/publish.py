"""Publish a committed version to object storage (s3://, gs://, ... through fsspec), in the
build's own commit order, so a reader of the store never sees a version before it is whole:

1. the shards (an object store's PUT makes each object appear complete or not at all);
2. the three tables;
3. the card, `dataset.json`, last of the version: without it the loader refuses the folder;
4. `<dataset>/latest`, when the version is the local `latest` (never for a partial build).

Rerunning after a crash resumes: a shard already there with its recorded size is skipped
(its bytes are pinned by the version id; the loader re-checks every sha256 as it streams).
Builds themselves run on a local or mounted file system; this is the step to the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sa2va_shards.build.remote import set_store_latest, upload_version_files
from sa2va_shards.errors import ConfigError
from sa2va_shards.manifest import read_card, read_manifest
from sa2va_shards.stores import is_url, protocol_of, store_fs
from sa2va_shards.versions import read_latest

__all__ = ["PublishReport", "publish"]

@dataclass(frozen=True, kw_only=True)
class PublishReport:
    """Where the version went and what was uploaded."""

    url: str
    uploaded: int
    already_there: int
    latest: bool


def publish(build_dir: str | Path, url: str) -> PublishReport:
    """Upload the committed version at `build_dir` under `url` (the store folder playing the
    role of the build's `out`: the version lands at `<url>/<dataset>/<version>/`).

    Raises:
        ConfigError: `build_dir` is not a committed version, `url` is not a store URL or the
            store cannot be opened (before anything is uploaded).
    """
    build_dir = Path(build_dir)
    card = read_card(build_dir)  # a version without its card is not committed
    if not is_url(url):
        raise ConfigError(f"{url}: not an object-store URL (s3://, gs://, ...); a local copy "
                          "is a plain copy of the version folder")
    fs, root = store_fs(url)
    version = f"{root}/{card['dataset']}/{card['version']}"
    try:
        uploaded, there = _shards(fs, build_dir, version)
        latest = not card.get("partial") and read_latest(build_dir.parent) == card["version"]
        upload_version_files(fs, build_dir, version)
        if latest:
            set_store_latest(fs, version)
    except OSError as e:
        raise ConfigError(f"{url}: upload failed ({type(e).__name__}: {e}); rerun to resume"
                          ) from e
    return PublishReport(url=f"{protocol_of(fs)}://{version}", uploaded=uploaded,
                         already_there=there, latest=latest)


def _shards(fs, build_dir: Path, version: str) -> tuple[int, int]:
    uploaded = there = 0
    for row in read_manifest(build_dir, "shards.parquet", ["file", "bytes"]).to_pylist():
        target = f"{version}/shards/{row['file']}"
        if fs.exists(target) and fs.size(target) == row["bytes"]:
            there += 1
            continue
        fs.put_file(str(build_dir / "shards" / row["file"]), target)
        uploaded += 1
    return uploaded, there
