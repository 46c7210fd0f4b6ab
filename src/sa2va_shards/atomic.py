"""The one durable atomic write: a reader sees the old file or the whole new one, never a
part, and a write that returned survives a crash (the card, `dataset.json`, is the commit
marker, so "written" must mean "on disk").

A unique temp file in the target's folder (so the rename stays on one file system and two
writers never share a temp), fsync, rename over the target, fsync the folder (the rename
itself is then durable).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write", "replace_durably"]


def _fsync(path: str | Path, *, folder: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: str | Path, path: str | Path) -> None:
    """Rename the finished (already fsynced) `tmp` over `path`, then fsync the folder."""
    os.replace(tmp, path)
    _fsync(Path(path).parent, folder=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path to write `path`'s new content to (any writer: bytes, pyarrow, a
    download); on a clean exit it replaces `path` durably, on an error it is removed."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data`, atomically and durably."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
