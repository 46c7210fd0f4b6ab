"""The one shard writer: deterministic tar, temp name then rename, sha256 while writing."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from types import TracebackType

import webdataset as wds

from sa2va_shards.atomic import replace_durably
from sa2va_shards.build.provenance import code_id
from sa2va_shards.records import ShardRecord

__all__ = ["ShardWriter", "TAR_MTIME"]

#: Fixed member mtime (an int: a float would add a PAX header to every member).
TAR_MTIME = 0
_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class _HashingFile:
    """A write-only file that hashes and counts what passes through."""

    def __init__(self, f) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


class ShardWriter:
    """Write samples to `<path>.tmp`; on a clean exit rename to `path` and set `record`.

    Members inside a sample are sorted by name (webdataset does this), samples keep the order
    they are written in, and every member has mtime 0, uid/gid 0 and mode 0444, so the same
    samples always give the same bytes. On an exception the temp file is removed.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.record: ShardRecord | None = None
        self._keys: set[str] = set()

    def __enter__(self) -> ShardWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp, "wb")
        self._hashing = _HashingFile(self._file)
        self._tar = wds.TarWriter(self._hashing, encoder=False, mtime=TAR_MTIME,
                                  user="", group="")
        return self

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample; `key` must be unique in the shard, with no dots."""
        if not _KEY.match(key):
            raise ValueError(f"sample key {key!r} must match {_KEY.pattern}")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in {self.path.name}")
        self._keys.add(key)
        self._tar.write({"__key__": key, **members})

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return
        replace_durably(self.tmp, self.path)
        self.record = ShardRecord(file=self.path.name, samples=len(self._keys),
                                  bytes=self._hashing.size, sha256=self._hashing.sha.hexdigest(),
                                  code=code_id())
