"""What a build's bytes depend on besides its config: the code and codecs that write them, and
the input files as they are on disk. Both go into the version id.

- The code fingerprint hashes the source of every module that decides output bytes (the
  kernels, the transform, the shard format, the writer, the readers) and the versions of the
  libraries that do (Pillow and its libjpeg, NumPy, torch, pycocotools, PyAV). Any change of
  them gives a new version id, so a build never mixes shards of two codes; each shard also
  records the fingerprint of the process that wrote it, which `verify` compares to the card.
- The files fingerprint hashes every file under the reader's root by its relative path, size
  and modification time (no file is read: cheap on a million images). Changing, adding or
  touching any file under the root gives a new version id; a copy of the same data that does
  not keep modification times (`cp` without `-p`, a new download) gives a new id too, with
  byte-identical shards (`diff` then shows no sample change).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import stat
from functools import cache
from pathlib import Path
from typing import Any

import sa2va_shards

__all__ = ["BYTE_MODULES", "code_fingerprint", "code_id", "files_fingerprint"]

#: modules (relative to the package) whose source decides the bytes of a shard.
BYTE_MODULES = ("ops", "readers", "build/transform.py", "build/writer.py", "build/shard.py",
                "build/plan.py", "format.py", "records.py", "config.py", "errors.py",
                "safe_io.py")
_LIBRARIES = ("pillow", "numpy", "torch", "pycocotools", "av", "simplejpeg")


def _library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    from PIL import features  # the JPEG codec Pillow was built with

    versions["libjpeg"] = features.version("jpg")
    return versions


def _source_hash(package: Path) -> str:
    sha = hashlib.sha256()
    for name in BYTE_MODULES:
        path = package / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            sha.update(f.relative_to(package).as_posix().encode() + b"\0")
            sha.update(f.read_bytes() + b"\0")
    return sha.hexdigest()


def code_fingerprint(package: Path | None = None) -> dict[str, Any]:
    """{package version, source hash of `BYTE_MODULES`, library versions, id (16 hex)}."""
    package = package or Path(sa2va_shards.__file__).parent
    parts = {"package": sa2va_shards.__version__, "source": _source_hash(package),
             "libraries": _library_versions()}
    digest = hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest()[:16]
    return {**parts, "id": digest}


@cache
def code_id() -> str:
    """This process's code fingerprint id (computed once per process)."""
    return code_fingerprint()["id"]


def files_fingerprint(root: str | Path, mode: str = "stat") -> str:
    """sha256 over every file under `root`, sorted by relative path: with its size and mtime
    (`stat`) or its bytes' sha256 (`content`). Symlinks are described by what they point to
    (what a reader would open); special files (FIFOs, sockets) by their type only."""
    root = Path(root)
    rows = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in files:
            path = Path(folder) / name
            rows.append(f"{path.relative_to(root).as_posix()}\0{_describe(path, mode)}")
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


def _describe(path: Path, mode: str) -> str:
    try:
        st = path.stat()
    except OSError:  # a dangling link: its absence is what a reader would see
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "special"  # never opened here: a FIFO would block
    if mode == "content":
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    return f"{st.st_size}\0{st.st_mtime_ns}"
