"""A dataset's content-addressed shard store, `OUT/<dataset>/store/`, and its garbage collector.

An incremental build reuses a shard whose recipe is unchanged instead of computing it again:
the recipe key (`build.provenance.shard_keys`) hashes everything that decides the shard's
bytes. `store/<key>.tar` is the shard, `store/<key>.json` its result (sample rows, reject
rows, counts: the progress sidecar's format). A version's `shards/<name>.tar` is a hard link to
the store object (a copy where the file system refuses hard links), so versions share
unchanged shards on disk while each version folder still holds every file the loader and
`verify` read. A stored shard is re-hashed against its recorded sha256 before it is reused.

Every build of the dataset holds `OUT/<dataset>/.store.lock` shared for its whole run; `gc`
takes it exclusively, so it never removes a version or an object a running build uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sa2va_shards.atomic import atomic_path
from sa2va_shards.errors import ConfigError
from sa2va_shards.manifest import CARD, read_card, read_result, write_result
from sa2va_shards.records import ShardResult
from sa2va_shards.versions import read_latest

__all__ = ["STORE", "VERSION_NAME", "GcReport", "ShardStore", "collect_garbage", "kept_versions",
           "link_or_copy", "renamed", "store_lock"]

#: the store's folder in `OUT/<dataset>/`.
STORE = "store"
_LOCK = ".store.lock"
#: a version folder's name (`manifest.version_id`, `-firstN` for a --limit build): gc never
#: touches a folder not named like one.
VERSION_NAME = re.compile(r"v[0-9a-f]{12}(-first[0-9]+)?")


@contextlib.contextmanager
def store_lock(dataset_dir: Path, *, exclusive: bool) -> Iterator[None]:
    """Builds hold the dataset's store lock shared (waiting while `gc` runs); `gc` holds it
    exclusively and fails at once while any build runs. flock: released when the process
    dies."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with open(dataset_dir / _LOCK, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            raise ConfigError(f"{dataset_dir}: a build of this dataset is running (it holds "
                              f"{_LOCK}); run gc when it has finished") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def link_or_copy(src: Path, dest: Path) -> bool:
    """Make `dest` the same file as `src`, atomically: a hard link (True), or a copy where
    the file system has none or `src` is on another device (False)."""
    with atomic_path(dest) as tmp:
        tmp.unlink()  # os.link needs a free name
        try:
            os.link(src, tmp)
            return True
        except OSError:
            shutil.copyfile(src, tmp)
            return False


def renamed(result: ShardResult, name: str) -> ShardResult:
    """The result of a stored shard under the name it has in this version's plan (its index
    may differ from the version that built it; the tar's bytes do not name it)."""
    return dataclasses.replace(
        result, shard=dataclasses.replace(result.shard, file=name),
        samples=[dataclasses.replace(s, shard=name) for s in result.samples],
        rejects=[dataclasses.replace(r, shard=name) for r in result.rejects])


@dataclass(frozen=True)
class ShardStore:
    """`OUT/<dataset>/store/`: `<key>.tar` + `<key>.json` per recipe key."""

    root: Path

    def _tar(self, key: str) -> Path:
        return self.root / f"{key}.tar"

    def _meta(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def lookup(self, key: str) -> ShardResult | None:
        """The stored result of `key` if its tar still has the recorded sha256, else None."""
        return read_result(self._meta(key), self._tar(key))

    def has(self, key: str) -> bool:
        return self._meta(key).is_file() and self._tar(key).is_file()

    def link(self, key: str, result: ShardResult, dest: str, name: str) -> ShardResult:
        """Put the stored shard into the version folder `dest` as `shards/<name>`; its
        result, renamed."""
        link_or_copy(self._tar(key), Path(dest) / "shards" / name)
        return renamed(result, name)

    def put(self, key: str, dest: str, result: ShardResult) -> None:
        """Add a shard this build wrote in the version folder `dest` (the tar first, then its
        result: a result names a complete tar)."""
        self.root.mkdir(parents=True, exist_ok=True)
        link_or_copy(Path(dest) / "shards" / result.shard.file, self._tar(key))
        write_result(self._meta(key), result)


@dataclass(frozen=True, kw_only=True)
class GcReport:
    """What `collect_garbage` removed (or would remove, with `dry_run`)."""

    kept: list[str]
    removed_versions: list[str]
    removed_objects: int
    freed_bytes: int
    dry_run: bool = False
    #: versions that stay whatever was asked, and why (`latest`).
    notes: list[str] = field(default_factory=list)


def _version_dirs(dataset_dir: Path) -> list[Path]:
    return sorted(d for d in dataset_dir.iterdir()
                  if VERSION_NAME.fullmatch(d.name) and d.is_dir() and not d.is_symlink())


def _pick(name: str, names: list[str]) -> str:
    """A version named exactly, or by a unique prefix."""
    if name in names:
        return name
    hits = [n for n in names if n.startswith(name)]
    if len(hits) != 1:
        raise ConfigError(f"--keep {name}: {'ambiguous' if hits else 'no such version'} "
                          f"(versions: {', '.join(hits or names) or 'none'})")
    return hits[0]


def _kept(dataset_dir: Path, dirs: list[Path], keep_last: int, keep: Sequence[str]) -> set[str]:
    cards = [read_card(d) for d in dirs if (d / CARD).is_file()]
    return kept_versions(cards, [d.name for d in dirs], keep_last=keep_last, keep=keep,
                         latest=read_latest(dataset_dir))


def kept_versions(cards: list[dict], names: list[str], *, keep_last: int, keep: Sequence[str],
                  latest: str | None) -> set[str]:
    """What `gc` keeps of the version folders `names` (complete ones: `cards`): the
    `keep_last` newest complete versions, those `keep` names (a version or a unique prefix),
    and `latest`."""
    if keep_last < 0:
        raise ConfigError(f"--keep-last: {keep_last} must be >= 0")
    newest = [c["version"] for c in sorted(cards, key=lambda c: (c["created"], c["version"]))]
    kept = set(newest[len(newest) - keep_last:] if keep_last else [])
    kept |= {_pick(k, names) for k in keep}
    return kept | ({latest} if latest else set())


def _files(paths: list[Path]) -> dict[tuple[int, int], int]:
    """(device, inode) -> size of every file under `paths`: what deleting them frees is the
    inodes no kept path still links."""
    out = {}
    for p in paths:
        for f in ([p] if p.is_file() else (x for x in p.rglob("*") if x.is_file())):
            st = f.lstat()
            out[(st.st_dev, st.st_ino)] = st.st_size
    return out


def _referenced(dataset_dir: Path, kept: set[str]) -> set[str]:
    keys: set[str] = set()
    for v in kept:
        if (dataset_dir / v / CARD).is_file():
            keys |= set(read_card(dataset_dir / v).get("shard_keys", {}).values())
    return keys


def collect_garbage(dataset_dir: str | Path, *, keep_last: int, keep: Sequence[str] = (),
                    dry_run: bool = False) -> GcReport:
    """Remove the versions of `dataset_dir` not kept, then the store objects no kept version
    uses. Kept: the `keep_last` newest complete versions, those named in `keep` (a version or
    a unique prefix), and always `latest`. A version folder without a card is a crashed build
    (no build runs while gc holds the store lock): removed unless kept. Folders not named
    like a version are left alone.

    Raises:
        ConfigError: a build of the dataset is running, a `keep` name matches no version or
            several, a negative `keep_last`.
    """
    dataset_dir = Path(dataset_dir)
    with store_lock(dataset_dir, exclusive=True):
        dirs = _version_dirs(dataset_dir)
        kept = _kept(dataset_dir, dirs, keep_last, keep)
        gone = [d for d in dirs if d.name not in kept]
        keys = _referenced(dataset_dir, kept)
        store = dataset_dir / STORE
        objects = sorted(p for p in store.iterdir()
                         if p.is_file() and p.name.split(".", 1)[0] not in keys) \
            if store.is_dir() else []
        stay = _files([d for d in dirs if d.name in kept]
                      + ([p for p in store.iterdir() if p not in objects] if store.is_dir()
                         else []))
        freed = sum(size for ino, size in _files(gone + objects).items() if ino not in stay)
        if not dry_run:
            for d in gone:
                shutil.rmtree(d)
                (dataset_dir / f".{d.name}.lock").unlink(missing_ok=True)
            for p in objects:
                p.unlink()
    latest = read_latest(dataset_dir)
    return GcReport(kept=sorted(kept), removed_versions=[d.name for d in gone],
                    removed_objects=len({p.name.split(".", 1)[0] for p in objects}),
                    freed_bytes=freed, dry_run=dry_run,
                    notes=[f"{latest}: latest, always kept"] if latest else [])
