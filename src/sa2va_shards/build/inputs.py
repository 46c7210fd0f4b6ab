"""A reader's root on an object store (`s3://`, `gs://`, any fsspec store), for readers that
read paths (open, PyAV, glob, listdir): they stay path-based, the store is brought to them.

- One listing is the input fingerprint: every object under the root by relative path with its
  identity, `size\\0<ETag or checksum>` (`stores.object_identity`). It is the `InputFiles` table of
  the version id and of the shard recipe keys, so new bytes (a new ETag) give a new version
  and rebuild only the shards whose items read the object. `reader.fingerprint` `stat` and
  `content` both use it on a store: an object's ETag is the store's own content identity.
- The driver's reader runs on a view (`<cache>/roots/<sha256(url)[:16]>/tree/`): every folder
  a real folder, every object a sparse placeholder of its exact size (no disk used, `stat`
  right), and the reader's `index_files` downloaded (kept while their identity holds).
  `list_items` opens nothing else (tested), so it never reads a placeholder.
- A shard job (`staged_root`) downloads its items' `item_files` into a folder of its own and
  builds its reader there; a worker needs only the URL and the store's credentials from its
  environment (AWS_*, ~/.aws, fsspec's config), never the driver's view. A missing object is
  a missing file to the reader: a reject with its usual reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sa2va_shards.atomic import atomic_write
from sa2va_shards.build.provenance import InputFiles, input_files
from sa2va_shards.config import BuildConfig, ReaderConfig
from sa2va_shards.errors import ConfigError
from sa2va_shards.readers import Reader, get_reader
from sa2va_shards.records import ItemRef
from sa2va_shards.stores import is_url, local_cache, object_identity, store_fs

__all__ = ["StoreListing", "list_store", "reader_and_inputs",
           "staged_root", "view_folder"]

log = logging.getLogger(__name__)

#: concurrent downloads of one shard job's files.
_DOWNLOAD_THREADS = 16


@dataclass(frozen=True)
class StoreListing:
    """What one listing of a root found: each object's identity and size, each folder."""

    identities: dict[str, str]
    sizes: dict[str, int]
    folders: frozenset[str]


def _relative(name: str, base: str) -> str | None:
    """`name` relative to `base`, or None when it cannot be a path under a local folder
    (`..`, empty or `.` segments: S3 keys may hold them)."""
    rel = name[len(base) + 1:] if name.startswith(base + "/") else None
    return rel if rel and posixpath.normpath(rel) == rel and not rel.startswith("../") else None


def list_store(url: str) -> StoreListing:
    """Every object and folder under `url`, from one listing.

    Raises:
        ConfigError: the store cannot be listed (no such bucket, no credentials, ...), or
            nothing is there: one line, before anything is written.
    """
    fs, base = store_fs(url)
    try:
        fs.invalidate_cache(base)  # a long-lived process must see today's objects
        found = fs.find(base, detail=True, withdirs=True)
    except Exception as e:  # any failure to list means the root cannot be read
        raise ConfigError(f"reader.root: {url}: cannot list it: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None
    identities, sizes, folders = {}, {}, set()
    for name, info in found.items():
        rel = _relative(name.rstrip("/"), base)
        if rel is None:
            if name.rstrip("/") != base:
                log.warning("%s: object %r skipped: not a path a reader can open", url, name)
            continue
        if info.get("type") == "directory" or name.endswith("/"):  # a folder or its marker
            folders.add(rel)
            continue
        identities[rel], sizes[rel] = object_identity(info), int(info.get("size") or 0)
        folders.update(str(p) for p in Path(rel).parents if str(p) != ".")
    if not identities:
        raise ConfigError(f"reader.root: {url}: no objects there (check the bucket and path)")
    clash = sorted(folders & identities.keys())
    if clash:
        raise ConfigError(f"reader.root: {url}: {clash[0]} is both an object and a folder")
    return StoreListing(identities, sizes, frozenset(folders))


def view_folder(url: str) -> Path:
    """This machine's folder for the view of `url`: `$SA2VA_SHARDS_CACHE` (else
    `~/.cache/sa2va-shards`) `/roots/<sha256(url)[:16]>`."""
    return local_cache("roots", url)


def _placeholder(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: the right size, no blocks


def _sync_tree(tree: Path, listing: StoreListing, staged: dict[str, str]) -> None:
    """Make `tree` the listing: what the store no longer holds removed, every folder made,
    every object a placeholder of its size unless its staged copy is still current."""
    for folder, dirs, files in os.walk(tree, topdown=False):
        for name in files + dirs:
            path = Path(folder) / name
            rel = path.relative_to(tree).as_posix()
            if rel not in (listing.folders if name in dirs else listing.identities):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                staged.pop(rel, None)
    for rel in sorted(listing.folders):
        (tree / rel).mkdir(parents=True, exist_ok=True)
    for rel, size in listing.sizes.items():
        path = tree / rel
        intact = path.is_file() and path.stat().st_size == size
        if intact and staged.get(rel) == listing.identities[rel]:
            continue  # a staged copy of today's object
        if not intact or staged.pop(rel, None) is not None:
            _placeholder(path, size)


def _under_root(path: str) -> str | None:
    """`path` (from a reader) relative to its root, or None for a path outside it (a local
    file the config names by an absolute path)."""
    rel = posixpath.normpath(path)
    outside = posixpath.isabs(rel) or rel in (".", "..") or rel.startswith("../")
    return None if outside else rel


def _parents(rel: str) -> list[str]:
    return [p.as_posix() for p in PurePosixPath(rel).parents][:-1]  # without "."


def _download(fs: Any, pairs: list[tuple[str, Path]]) -> list[str]:
    """Each (remote, local) pair, concurrently; each file written whole or not at all.
    Returns the remote paths that do not exist, or cannot be a file here (names from the data
    such as `a.jpg/b.jpg` next to `a.jpg`): a missing file to the reader."""
    def one(remote: str, local: Path) -> str | None:
        part = local.with_name(f".{local.name}.part")
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(part))
            os.replace(part, local)
        except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError):
            part.unlink(missing_ok=True)
            return remote
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return None

    with ThreadPoolExecutor(max_workers=_DOWNLOAD_THREADS) as pool:
        missing = pool.map(lambda pair: one(*pair), pairs)
        return [m for m in missing if m is not None]


def _index_files(reader: Any, fmt: str) -> list[str]:
    """What the view must hold for real; a reader that cannot say what it opens (or what a
    shard job must stage) cannot read a store."""
    try:
        if callable(getattr(reader, "item_files", None)):
            return reader.index_files()
    except NotImplementedError:
        pass
    raise ConfigError(f"reader.format: {fmt} cannot read a root on a store: it declares no "
                      "index_files or item_files")


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One view update at a time on this machine (two builds of one root share the view)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _refresh_view(url: str, cfg: ReaderConfig, listing: StoreListing) -> Any:
    """The reader on the up-to-date view of `url`, its index files staged (the caller holds
    the view's lock)."""
    folder = view_folder(url)
    tree, record = folder / "tree", folder / "staged.json"
    staged = json.loads(record.read_text()) if record.is_file() else {}
    tree.mkdir(exist_ok=True)
    _sync_tree(tree, listing, staged)
    reader = get_reader(dataclasses.replace(cfg, root=str(tree)))
    fs, base = store_fs(url)
    wanted = {rel for p in _index_files(reader, cfg.format)
              if (rel := _under_root(p)) in listing.identities
              and staged.get(rel) != listing.identities[rel]}
    gone = _download(fs, [(f"{base}/{rel}", tree / rel) for rel in sorted(wanted)])
    if gone:  # removed since the listing: its placeholder must never be read
        raise ConfigError(f"reader.root: {url}: {gone[0]} was removed during the build; "
                          "rerun")
    staged.update({rel: listing.identities[rel] for rel in wanted})
    atomic_write(record, json.dumps(staged, sort_keys=True).encode())
    log.info("%s: %d objects listed, %d index files downloaded to %s", url,
             len(listing.identities), len(wanted), tree)
    return reader


@contextlib.contextmanager
def reader_and_inputs(cfg: ReaderConfig) -> Iterator[tuple[Reader, InputFiles]]:
    """The driver's reader for `cfg` and the identity of every input file (`InputFiles`), for
    the block that indexes with them (`list_items`, `item_files`).

    A local root: the reader on it and a walk of it (`provenance.input_files`). A root on a
    store: one listing gives the identities (`stores.object_identity`: the ETag, whatever
    `reader.fingerprint` says), the reader runs on the view, index files staged; the view's
    lock is held for the block, so another build of the root on this machine cannot change
    the files this one indexes.

    Raises:
        ConfigError: the store cannot be listed or is empty, or the reader declares no
            `index_files`.
    """
    if not is_url(cfg.root):
        yield get_reader(cfg), input_files(cfg.root, cfg.fingerprint)
        return
    listing = list_store(cfg.root)
    with _locked(view_folder(cfg.root)):
        reader = _refresh_view(cfg.root, cfg, listing)
        yield reader, InputFiles(root=cfg.root, mode=cfg.fingerprint, table=listing.identities)


def _list_folders(fs: Any, base: str, folders: Iterable[str], local: Path) -> None:
    """Placeholders for the objects of each folder (what `item_files` lists), on this worker."""
    for folder in folders:
        try:
            fs.invalidate_cache(f"{base}/{folder}")  # a worker lives across builds
            entries = fs.ls(f"{base}/{folder}", detail=True)
        except FileNotFoundError:
            continue
        for info in entries:
            rel = _relative(info["name"].rstrip("/"), base)
            if rel is not None and info.get("type") == "file":
                (local / rel).parent.mkdir(parents=True, exist_ok=True)
                _placeholder(local / rel, int(info.get("size") or 0))


def _stage(cfg: BuildConfig, items: list[ItemRef], local: Path) -> None:
    """Download every file `items` read (the reader's `item_files`) under `local`."""
    fs, base = store_fs(cfg.reader.root)
    reader = get_reader(dataclasses.replace(cfg.reader, root=str(local)))
    _list_folders(fs, base, sorted({rel for i in items for f in reader.item_folders(i)
                                    if (rel := _under_root(f))}), local)
    files = {rel for i in items for f in reader.item_files(i) if (rel := _under_root(f))}
    # `a.jpg/b.jpg` next to a wanted `a.jpg` cannot exist on disk either: never a folder there
    wanted = sorted(rel for rel in files if files.isdisjoint(_parents(rel)))
    missing = _download(fs, [(f"{base}/{rel}", local / rel) for rel in wanted])
    for remote in missing:  # a listed placeholder of an object gone since: missing too
        if (placeholder := local / remote[len(base) + 1:]).is_file():
            placeholder.unlink()


@contextlib.contextmanager
def staged_root(cfg: BuildConfig, items: list[ItemRef]) -> Iterator[BuildConfig]:
    """`cfg` with a local `reader.root` for one shard job: the root itself, or for a root on
    a store a temporary folder holding the files `items` read, removed when the job ends."""
    if not is_url(cfg.reader.root):
        yield cfg
        return
    with tempfile.TemporaryDirectory(prefix="sa2va-stage-") as tmp:
        _stage(cfg, items, Path(tmp))
        yield dataclasses.replace(cfg, reader=dataclasses.replace(cfg.reader, root=tmp))
