"""Builds whose `out` is an object store (s3://, gs://, any fsspec store): the commit
protocol of a local build (`run.py`), with the version on the store and, on the driver, a
small staging folder.

- A shard job writes its tar to a local temporary file, uploads it to
  `<out>/<dataset>/<version>/shards/<name>` (a PUT makes an object whole or absent) and checks
  its size there, then uploads its result to `<version>/.progress/<name>.json`: a result on
  the store names a complete shard. Ray workers on other machines do this themselves, with
  the credentials of their own environment.
- The driver's staging folder (`stores.local_cache("builds", out)`) holds the locks, the
  tables and the card while they are written. The commit (`commit_on_store`) marks the
  version `.committing` on the store, uploads the tables, the card (the version is whole from
  here on), moves `<dataset>/latest`, then drops the sidecars and the mark. Until its card is
  on the store a version does not exist for the loader; a rerun from any machine that finds
  the card and the mark finishes the commit.
- Resume: the results under `.progress/` whose tar is on the store as it was uploaded: its
  size and ETag, recorded after the upload (`stores.object_identity`), so changed bytes are
  computed again without downloading anything (the loader and `verify` check every sha256).
- Reuse: `<out>/<dataset>/store/<key>.json` is a shard's result plus where its tar is (and
  its identity there); a
  later build with the same recipe key (`provenance.shard_keys`) copies that tar on the store
  (server-side: nothing computed, nothing through this machine). Versions on a store are
  self-contained copies, as a store has no hard links; a tar deleted since is built again.
- The history of a dataset folder on a store: `store_versions` (`versions`) and
  `collect_store_garbage` (`gc`, without a lock: folders without a card are left alone).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sa2va_shards.build.store import VERSION_NAME, GcReport, kept_versions, renamed
from sa2va_shards.errors import ConfigError
from sa2va_shards.manifest import CARD, PROGRESS_DIR, canonical, parse_result, save_progress
from sa2va_shards.records import ShardResult
from sa2va_shards.stores import is_url, local_cache, object_identity, store_fs
from sa2va_shards.versions import LATEST, version_rows

__all__ = ["COMMITTING", "StoreIndex", "collect_store_garbage", "commit_on_store",
           "finish_shard", "finished_shards", "set_store_latest", "shard_file", "staging_out",
           "store_card", "store_cards", "store_versions", "upload_version_files"]

#: in a version folder (local or on a store) from just before its card is written until
#: `latest` has moved: a rerun that finds it next to a card finishes the commit.
COMMITTING = ".committing"
_TABLES = ("shards.parquet", "samples.parquet", "rejects.parquet")


def staging_out(out: str) -> str:
    """This machine's staging folder for builds to the store folder `out`."""
    return str(local_cache("builds", out))


@contextlib.contextmanager
def shard_file(dest: str, name: str) -> Iterator[Path]:
    """Where a shard job writes shard `name` of the version at `dest`: in place for a local
    version, a temporary file (removed after) for a version on a store."""
    if not is_url(dest):
        yield Path(dest) / "shards" / name
        return
    with tempfile.TemporaryDirectory(prefix="sa2va-shard-") as tmp:
        yield Path(tmp) / name


def finish_shard(dest: str, path: Path, result: ShardResult) -> None:
    """Record a written shard for resume: its progress sidecar, after the tar is in place."""
    if not is_url(dest):
        save_progress(Path(dest), result)
        return
    fs, root = store_fs(dest)
    tar = f"{root}/shards/{path.name}"
    fs.put_file(str(path), tar)
    info = fs.info(tar)
    if info["size"] != result.shard.bytes:
        raise OSError(f"{dest}/shards/{path.name}: {info['size']} bytes on the store after "
                      f"the upload, {result.shard.bytes} written")
    fs.pipe_file(f"{root}/{PROGRESS_DIR}/{path.name}.json", _record(result, info))


def _record(result: ShardResult, info: dict, **extra: str) -> bytes:
    """A shard's result with the identity of its tar on the store (`object`: size and ETag,
    `stores.object_identity`), so a later run reuses exactly those bytes."""
    return canonical({**dataclasses.asdict(result), "object": object_identity(info), **extra})


def _same_object(raw: bytes, info: dict | None) -> bool:
    """Whether the tar described by `info` (None: not there) is the one the record `raw`
    names: its identity, or for records without one its size."""
    if info is None:
        return False
    doc = json.loads(raw)
    if "object" in doc:
        return doc["object"] == object_identity(info)
    return info.get("size") == doc["shard"]["bytes"]


def finished_shards(dest: str, names: set[str]) -> dict[str, ShardResult]:
    """The shards of `names` a previous run finished on the store: a result under
    `.progress/` whose tar is there with the recorded size."""
    fs, root = store_fs(dest)
    tars = _listing(fs, f"{root}/shards")
    done = {}
    for name in sorted(_listing(fs, f"{root}/{PROGRESS_DIR}")):
        shard = name.removesuffix(".json")
        if shard not in names:
            continue
        raw = fs.cat_file(f"{root}/{PROGRESS_DIR}/{name}")
        result = parse_result(raw)
        if result is not None and _same_object(raw, tars.get(shard)):
            done[shard] = result
    return done


def _listing(fs: Any, folder: str) -> dict[str, dict]:
    """File name -> listing entry of the objects directly in `folder` (none: empty)."""
    try:
        entries = fs.ls(folder, detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    return {e["name"].rsplit("/", 1)[-1]: e for e in entries if e["type"] == "file"}


def _info(url: str) -> dict | None:
    fs, path = store_fs(url)
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None


def upload_version_files(fs: Any, build_dir: Path, version: str) -> None:
    """The tables, then the card (the version is whole from here on), from the local
    `build_dir` to the version folder `version` (a path in `fs`), once every shard is there."""
    for name in (*_TABLES, CARD):
        fs.put_file(str(build_dir / name), f"{version}/{name}")


def set_store_latest(fs: Any, version: str) -> None:
    """Point `<dataset>/latest` on the store at the version folder `version` (one PUT)."""
    dataset, name = version.rsplit("/", 1)
    fs.pipe_file(f"{dataset}/{LATEST}", (name + "\n").encode())


def commit_on_store(dest: str, build_dir: Path | None, *, latest: bool) -> None:
    """Commit the version at `dest` (see the module docstring); safe to repeat. `build_dir`:
    the staging folder whose tables and card go up; None when they are there already (a
    rerun finishing a commit a crash cut short after the card)."""
    fs, root = store_fs(dest)
    if build_dir is not None:
        fs.pipe_file(f"{root}/{COMMITTING}", b"")
        upload_version_files(fs, build_dir, root)
    if latest:
        set_store_latest(fs, root)
    with contextlib.suppress(FileNotFoundError):  # gone already, or every shard reused
        fs.rm(f"{root}/{PROGRESS_DIR}", recursive=True)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(f"{root}/{COMMITTING}")


def store_card(dest: str) -> tuple[dict | None, bool]:
    """The card of the version at `dest` on the store (None while it is not committed) and
    whether its commit is unfinished (the `.committing` mark is there)."""
    fs, root = store_fs(dest)
    fs.invalidate_cache(root)
    try:
        card = json.loads(fs.cat_file(f"{root}/{CARD}"))
    except FileNotFoundError:
        return None, False
    return card, fs.exists(f"{root}/{COMMITTING}")


def store_cards(dataset_url: str) -> list[dict]:
    """The cards of the complete versions of the dataset folder at `dataset_url`."""
    fs, root = store_fs(dataset_url)
    return [json.loads(fs.cat_file(p)) for p in sorted(fs.glob(f"{root}/*/{CARD}"))]


def store_versions(dataset_url: str) -> list[dict]:
    """`versions.list_versions` for a dataset folder on a store."""
    fs, root = store_fs(dataset_url)
    latest = _store_latest(fs, root)
    cards = store_cards(dataset_url)
    if not cards:
        raise ConfigError(f"{dataset_url}: no complete version here (a dataset folder "
                          "<out>/<dataset> on the store)")
    return version_rows(cards, latest)


@dataclass(frozen=True)
class StoreIndex:
    """`<out>/<dataset>/store/<key>.json` on a store: a shard's result and the URL of a tar
    holding it (the `ShardStore` interface of a local build)."""

    #: the dataset folder's URL.
    root: str

    def _meta(self, key: str) -> str:
        return f"{self.root}/store/{key}.json"

    def _entry(self, key: str) -> tuple[ShardResult, str, bytes] | None:
        fs, path = store_fs(self._meta(key))
        try:
            raw = fs.cat_file(path)
            at = json.loads(raw)["at"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        result = parse_result(raw)
        return (result, at, raw) if result is not None else None

    def lookup(self, key: str) -> ShardResult | None:
        """The recorded result of `key` if its tar is still the recorded object, else None."""
        entry = self._entry(key)
        if entry is None or not _same_object(entry[2], _info(entry[1])):
            return None
        return entry[0]

    def has(self, key: str) -> bool:
        return self.lookup(key) is not None

    def link(self, key: str, result: ShardResult, dest: str, name: str) -> ShardResult:
        """Copy the recorded tar into the version at `dest` as `shards/<name>`."""
        entry = self._entry(key)
        if entry is None:
            raise FileNotFoundError(f"{self._meta(key)}: gone since it was looked up")
        fs, src = store_fs(entry[1])
        target = f"{store_fs(dest)[1]}/shards/{name}"
        if src != target:  # the same object when this version is being built again
            fs.copy(src, target)
        return renamed(result, name)

    def put(self, key: str, dest: str, result: ShardResult) -> None:
        """Record the shard this build wrote at `<dest>/shards/<file>` under `key`."""
        fs, path = store_fs(self._meta(key))
        at = f"{dest}/shards/{result.shard.file}"
        info = _info(at)
        if info is not None:
            fs.pipe_file(path, _record(result, info, at=at))


def collect_store_garbage(dataset_url: str, *, keep_last: int, keep: Sequence[str] = (),
                          dry_run: bool = False) -> GcReport:
    """`gc` for a dataset folder on a store: what `store.collect_garbage` keeps, it keeps
    (the `keep_last` newest complete versions, `keep`, `latest`); it removes the other
    complete versions and the shard index entries no kept version uses, and points an entry
    whose tar went with a removed version at a kept version's copy. A store has no lock, so a
    version folder without a card (a build running now, or a crashed one) is left alone; a
    build running meanwhile whose copy source is removed fails and, rerun, builds the shard.
    """
    fs, root = store_fs(dataset_url)
    fs.invalidate_cache(root)
    names = [n for n in (p.rstrip("/").rsplit("/", 1)[1] for p in fs.ls(root, detail=False))
             if VERSION_NAME.fullmatch(n)]
    cards = {c["version"]: c for c in store_cards(dataset_url)}
    latest = _store_latest(fs, root)
    kept = kept_versions(list(cards.values()), names, keep_last=keep_last, keep=keep,
                         latest=latest)
    gone = sorted(v for v in cards if v not in kept)
    copies = {key: f"{dataset_url}/{v}/shards/{name}" for v in sorted(kept) if v in cards
              for name, key in cards[v].get("shard_keys", {}).items()}
    index = {n: e["size"] for n, e in _listing(fs, f"{root}/store").items()}
    stale = sorted(n for n in index if n.removesuffix(".json") not in copies)
    freed = sum(fs.du(f"{root}/{v}") for v in gone) + sum(index[n] for n in stale)
    if not dry_run:
        for v in gone:
            fs.rm(f"{root}/{v}", recursive=True)
        for n in stale:
            fs.rm_file(f"{root}/store/{n}")
        _repoint(fs, root, dataset_url, set(gone), copies)
    notes = [f"{latest}: latest, always kept"] if latest else []
    notes += [f"{n}: no card (a build running now, or a crashed one): left alone"
              for n in sorted(set(names) - set(cards))]
    return GcReport(kept=sorted(kept & set(names)), removed_versions=gone,
                    removed_objects=len(stale), freed_bytes=freed, dry_run=dry_run,
                    notes=notes)


def _store_latest(fs: Any, root: str) -> str | None:
    try:
        return fs.cat_file(f"{root}/{LATEST}").decode().strip() or None
    except FileNotFoundError:
        return None


def _repoint(fs: Any, root: str, dataset_url: str, gone: set[str],
             copies: dict[str, str]) -> None:
    """Index entries whose tar was in a removed version now name a kept version's copy (and
    its identity: a copy of a multipart upload has another ETag)."""
    for name in _listing(fs, f"{root}/store"):
        entry = json.loads(fs.cat_file(f"{root}/store/{name}"))
        version = entry["at"].removeprefix(f"{dataset_url}/").split("/", 1)[0]
        key = name.removesuffix(".json")
        info = _info(copies[key]) if version in gone and key in copies else None
        if info is not None:
            fs.pipe_file(f"{root}/store/{name}", canonical(
                {**entry, "at": copies[key], "object": object_identity(info)}))
