"""What a build's bytes depend on besides its config: the code and codecs that write them, and
the input files as they are on disk. Both go into the version id.

- The code fingerprint hashes the source of every module that decides output bytes (the
  kernels, the transform, the shard format, the writer, the readers) and the versions of the
  libraries that do (Pillow and its libjpeg, NumPy, torch, pycocotools, PyAV). Any change of
  them gives a new version id, so a build never mixes shards of two codes; each shard also
  records the fingerprint of the process that wrote it, which `verify` compares to the card.
- A shard's recipe key (`shard_keys`) is the same for one shard: the code, the semantic
  config, the schema, the shard's items (ids and index data, in order) and the identity of the
  files those items read (the reader's `item_files`; a reader without it: every file under the
  root). An incremental build reuses a stored shard only when its key is equal (`store.py`).
- The files fingerprint hashes every file under the reader's root by its relative path, size
  and modification time (no file is read: cheap on a million images). Changing, adding or
  touching any file under the root gives a new version id; a copy of the same data that does
  not keep modification times (`cp` without `-p`, a new download) gives a new id too, with
  byte-identical shards (`diff` then shows no sample change). A root on an object store is
  listed instead: each object by its size and ETag (`build/inputs.py`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import posixpath
import stat
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import sa2va_shards
from sa2va_shards.config import BuildConfig
from sa2va_shards.format import SCHEMA_VERSION
from sa2va_shards.manifest import canonical
from sa2va_shards.records import ShardPlan
from sa2va_shards.stores import is_url

__all__ = ["BYTE_MODULES", "InputFiles", "code_fingerprint", "code_id", "files_fingerprint",
           "input_files", "shard_keys"]

#: modules (relative to the package) whose source decides the bytes of a shard.
BYTE_MODULES = ("ops", "readers", "build/transform.py", "build/writer.py", "build/shard.py",
                "build/inputs.py", "build/plan.py", "format.py", "records.py", "config.py",
                "errors.py", "safe_io.py")
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


@dataclass(frozen=True)
class InputFiles:
    """Every file under a reader's root with its identity (size and mtime, or content hash;
    for a root on a store, size and ETag: `build/inputs.py`): the whole set's fingerprint for
    the version id, and one file's identity for a shard's recipe (`build/store.py`), from one
    walk or listing."""

    root: str
    mode: str
    table: dict[str, str]

    @property
    def fingerprint(self) -> str:
        rows = (f"{rel}\0{desc}" for rel, desc in sorted(self.table.items()))
        return hashlib.sha256("\n".join(rows).encode()).hexdigest()

    def identity(self, path: str) -> str:
        """What a reader opening `path` (relative to the root, or absolute) would find; a file
        the walk did not see (outside the root, under a linked folder, missing) is looked at
        directly."""
        rel = posixpath.normpath(path)
        known = self.table.get(rel)
        if known is not None:
            return known
        if is_url(self.root) and not posixpath.isabs(rel):  # the listing saw every object
            return "missing"
        return _describe(Path(self.root) / rel, self.mode)


def input_files(root: str | Path, mode: str = "stat") -> InputFiles:
    """Walk `root`: every file by relative path, with its size and mtime (`stat`) or its bytes'
    sha256 (`content`). Symlinks are described by what they point to (what a reader would
    open); special files (FIFOs, sockets) by their type only."""
    table = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in files:
            path = Path(folder) / name
            table[path.relative_to(root).as_posix()] = _describe(path, mode)
    return InputFiles(root=str(root), mode=mode, table=table)


def files_fingerprint(root: str | Path, mode: str = "stat") -> str:
    """sha256 over every file under `root`, sorted by relative path, with its identity
    (`input_files`)."""
    return input_files(root, mode).fingerprint


def _describe(path: Path, mode: str) -> str:
    try:
        st = path.stat()
    except (OSError, ValueError):  # a dangling link (or a NUL in a name from the data):
        # its absence is what a reader would see
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "special"  # never opened here: a FIFO would block
    if mode == "content":
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    return f"{st.st_size}\0{st.st_mtime_ns}"


def shard_keys(plans: list[ShardPlan], cfg: BuildConfig, reader: Any,
               files: InputFiles) -> dict[str, str]:
    """Plan name -> recipe key (sha256 hex): equal keys mean equal shard bytes and rows.

    The shard's name (its index) is not in the key: an insertion earlier in the sorted input
    renumbers later shards without changing them. A reader whose `item_files` says which
    files each item reads lets an unchanged shard survive changes elsewhere under the root;
    without it every shard's key holds the whole root's fingerprint (correct, no reuse across
    any input file change).
    """
    hook = getattr(reader, "item_files", None)
    recipe = canonical({"code": code_id(), "config": cfg.semantic_dict(),
                        "schema": SCHEMA_VERSION, "files": None if hook else files.fingerprint})
    keys = {}
    for plan in plans:
        sha = hashlib.sha256(recipe)
        for item in plan.items:
            row: list[Any] = [item.source_id, item.data]
            if hook is not None:
                row.append([[p, files.identity(p)] for p in hook(item)])
            sha.update(b"\n" + canonical(row))
        keys[plan.name] = sha.hexdigest()
    return keys
