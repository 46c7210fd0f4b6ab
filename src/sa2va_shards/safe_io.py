"""Reading files named by untrusted data: stay inside the dataset, never block, parse strictly.

Rules (docs/bad_inputs.md):
- A path from the data (`file_name`, a member of a folder) is joined under a folder the config
  names. It must be relative, without `..` or NUL, and what it resolves to (symlinks followed)
  must still be inside that folder: `unsafe_path` otherwise. The configured folders themselves
  are trusted and may be symlinks to anywhere; a symlink inside them may only point inside.
- Only regular files are opened: a FIFO, device or folder is `not_a_file` (opened with
  O_NONBLOCK, so even the check cannot hang on a FIFO without a writer).
- JSON objects with a repeated key are marked (`DuplicateKeyDict`), not silently merged.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from sa2va_shards.errors import ConfigError, Reason, SampleError

__all__ = [
    "DuplicateKeyDict",
    "NotRegularFileError",
    "check_regular",
    "data_path",
    "duplicate_keys",
    "is_regular",
    "load_json",
    "open_regular",
    "read_data_file",
]


class NotRegularFileError(OSError):
    """The path exists but is not a regular file (FIFO, socket, device, folder)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | Path) -> BinaryIO:
    """Open `path` for binary reading only if it is a regular file (symlinks followed).

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; the
    fstat then refuses it. It has no effect on reads of a regular file.

    Raises:
        FileNotFoundError, PermissionError, ...: as `open`.
        NotRegularFileError: a FIFO, device or folder.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{path}: {_kind(mode)}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_regular(path: str | Path) -> bool:
    """True for an existing regular file (stat only: never opens, never blocks)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def check_regular(path: str | Path, name: str) -> None:
    """Raise `not_a_file` / `missing_image` unless `path` is a regular file (for files opened
    by a library that would block on a FIFO, such as PyAV)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as e:
        raise SampleError(Reason.MISSING_IMAGE, f"{name}: no such file") from e
    except OSError as e:
        raise SampleError(Reason.MISSING_IMAGE, f"{name}: {type(e).__name__}: "
                                                f"{e.strerror}") from e
    if not stat.S_ISREG(mode):
        raise SampleError(Reason.NOT_A_FILE, f"{name}: {_kind(mode)}, not a regular file")


def data_path(base: str | Path, rel: Any, *, name: str = "file_name") -> Path:
    """`base / rel` for a relative path taken from the data, refused if it could leave `base`.

    Raises:
        SampleError: `bad_annotation` (not text, empty, NUL), `unsafe_path` (absolute, `..`,
            or a symlink resolving outside `base`).
    """
    if not isinstance(rel, str) or not rel.strip():
        raise SampleError(Reason.BAD_ANNOTATION, f"{name} {rel!r} is not a file name")
    if "\0" in rel:
        raise SampleError(Reason.BAD_ANNOTATION, f"{name} {rel!r} holds a NUL character")
    try:
        rel.encode("utf-8")  # a lone surrogate cannot name a file (the OS call would raise)
    except UnicodeEncodeError as e:
        raise SampleError(Reason.BAD_ANNOTATION, f"{name} {rel!r} is not valid text") from e
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        raise SampleError(Reason.UNSAFE_PATH,
                          f"{name} {rel!r} is absolute or has '..': it must stay inside the "
                          "dataset folder")
    path = Path(base) / rel
    top = Path(base).resolve()
    if not path.resolve().is_relative_to(top):
        raise SampleError(Reason.UNSAFE_PATH,
                          f"{name} {rel!r} is a symlink that resolves outside the dataset folder")
    return path


def read_data_file(base: str | Path, rel: Any, *, shown: str,
                   missing: Reason = Reason.MISSING_IMAGE) -> bytes:
    """Read `base / rel` (see `data_path`); `shown` names it in reject details (relative to the
    root, so reject rows do not depend on where the dataset lives).

    Raises:
        SampleError: as `data_path`; `missing` for a missing or unreadable file; `not_a_file`.
    """
    path = data_path(base, rel)
    try:
        with open_regular(path) as f:
            return f.read()
    except NotRegularFileError as e:
        raise SampleError(Reason.NOT_A_FILE, f"{shown}: {str(e).rpartition(': ')[2]}") from e
    except FileNotFoundError as e:
        raise SampleError(missing, f"{shown}: no such file") from e
    except OSError as e:
        raise SampleError(missing, f"{shown}: {type(e).__name__}: {e.strerror}") from e


class DuplicateKeyDict(dict):
    """A JSON object that repeated a key (the last value is kept, as `json` does); the
    repeated keys are in `duplicates`."""

    duplicates: tuple[str, ...] = ()

    def __reduce__(self):  # pickles (Ray) as itself, with its marks
        return (_make_dup, (dict(self), self.duplicates))


def _make_dup(d: dict, duplicates: tuple[str, ...]) -> DuplicateKeyDict:
    out = DuplicateKeyDict(d)
    out.duplicates = duplicates
    return out


def _pairs_hook(found: list[int]):
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        d = dict(pairs)
        if len(d) == len(pairs):
            return d
        seen: set[str] = set()
        dups = tuple(sorted({k for k, _ in pairs if k in seen or seen.add(k)}))
        found.append(1)
        return _make_dup(d, dups)
    return hook


def load_json(f: BinaryIO | str | bytes) -> tuple[Any, bool]:
    """Parse JSON from a binary file or text; returns (document, whether any object repeated a
    key). Objects that did are `DuplicateKeyDict` (find them with `duplicate_keys`)."""
    found: list[int] = []
    hook = _pairs_hook(found)
    if hasattr(f, "read"):
        doc = json.load(f, object_pairs_hook=hook)
    else:
        doc = json.loads(f, object_pairs_hook=hook)
    return doc, bool(found)


def load_setup_json(path: Path, *, unreadable: str,
                    missing: str | None = None) -> tuple[Any, bool]:
    """A JSON index file the whole build depends on, as `load_json` gives it; any failure is
    one `ConfigError` line: `<path>: <missing>` for a missing file (when given), else
    `<path>: <unreadable>: <why>`."""
    try:
        with open_regular(path) as f:
            return load_json(f)
    except FileNotFoundError as e:
        if missing is None:
            raise ConfigError(f"{path}: {unreadable}: {e}") from e
        raise ConfigError(f"{path}: {missing}") from e
    except (OSError, ValueError) as e:  # JSON and Unicode errors are ValueErrors
        raise ConfigError(f"{path}: {unreadable}: {e}") from e


def duplicate_keys(obj: Any, limit: int = 1_000_000) -> tuple[str, ...]:
    """The repeated keys of the first `DuplicateKeyDict` inside `obj` (depth-first), or ()."""
    stack, seen = [obj], 0
    while stack and seen < limit:
        x = stack.pop()
        seen += 1
        if isinstance(x, DuplicateKeyDict):
            return x.duplicates
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return ()
