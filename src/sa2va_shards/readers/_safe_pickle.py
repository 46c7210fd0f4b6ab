"""A restricted unpickler for annotation pickles (Describe Anything records, RefCOCO refs).

`pickle.load` on a downloaded file runs whatever callable the file names (`os.system`, ...).
Annotation pickles only ever need plain data: dict, list, tuple, str, numbers, bytes, sets. All
of these are built by pickle opcodes, except under protocols 0-2, which rebuild bytes, sets,
bytearray and complex by calling a builtin by name. Those few names are admitted, wrapped so
they can only build data (no `bytes(10**12)` allocation, no arbitrary codec); every other global
is refused with `unsafe_pickle` before anything is called.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from typing import Any, BinaryIO

from sa2va_shards.errors import Reason, SampleError

__all__ = ["SafeUnpickler", "check_expansion", "safe_load", "safe_loads"]

_LATIN1 = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"})


def _from_bytes_like(kind: type, args: tuple) -> Any:
    if not args:
        return kind()
    if len(args) == 1 and isinstance(args[0], bytes | bytearray):
        return kind(args[0])
    if len(args) == 2 and isinstance(args[0], str) and str(args[1]).lower() in _LATIN1:
        return kind(args[0].encode("latin1"))
    # an int argument would allocate that many zero bytes: never from an annotation file
    raise pickle.UnpicklingError(f"{kind.__name__}{tuple(type(a).__name__ for a in args)}: "
                                 "not a plain-data constructor call")


def _bytes(*args: Any) -> bytes:
    return _from_bytes_like(bytes, args)


def _bytearray(*args: Any) -> bytearray:
    return _from_bytes_like(bytearray, args)


def _codecs_encode(obj: Any, encoding: str = "utf-8", *_: Any) -> bytes:
    # protocols 0-2 store bytes as _codecs.encode(str, 'latin1'); only that use is admitted
    if not isinstance(obj, str) or str(encoding).lower() not in _LATIN1:
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}: only latin1 is plain data")
    return obj.encode("latin1")


def _set(*args: Any) -> set:
    return set(*args)


def _frozenset(*args: Any) -> frozenset:
    return frozenset(*args)


def _complex(*args: Any) -> complex:
    if not all(isinstance(a, int | float) for a in args):
        raise pickle.UnpicklingError("complex() from non-numbers")
    return complex(*args)


_BUILTINS: dict[str, Callable[..., Any]] = {
    "bytes": _bytes, "bytearray": _bytearray, "set": _set, "frozenset": _frozenset,
    "complex": _complex,
}
#: (module, name) -> the wrapped callable; Python 2 pickles say `__builtin__`.
_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    **{("builtins", n): f for n, f in _BUILTINS.items()},
    **{("__builtin__", n): f for n, f in _BUILTINS.items()},
    ("_codecs", "encode"): _codecs_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """An `Unpickler` that admits plain data only.

    Args:
        file: binary file to read.
        name: what the pickle is (file or member name), for reject details.
        encoding: how Python 2 `str` objects are decoded (Python 2 era RefCOCO refs).
    """

    def __init__(self, file: BinaryIO, *, name: str, encoding: str = "utf-8") -> None:
        super().__init__(file, encoding=encoding)
        self.name = name

    def find_class(self, module: str, name: str) -> Any:
        """Return a wrapped plain-data builtin, refuse everything else.

        Raises:
            SampleError: `unsafe_pickle` for any other global (a class, a function).
        """
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise SampleError(Reason.UNSAFE_PICKLE,
                          f"{self.name}: refers to {module}.{name}; only plain data "
                          "(dict, list, str, numbers, bytes) is accepted")

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (they resolve objects outside the file)."""
        raise SampleError(Reason.UNSAFE_PICKLE, f"{self.name}: persistent id {pid!r}")


#: plain data may expand to this many times its pickle's size (+ EXPANSION_FLOOR) when
#: every shared reference is followed: natural annotation pickles stay under ~4x.
EXPANSION_FACTOR = 16
EXPANSION_FLOOR = 1_000_000


def check_expansion(obj: Any, *, n_bytes: int, name: str) -> None:
    """Refuse data that is small as a pickle but huge once copied.

    Pickle memo references let a 2 KB file hold a list whose elements are the same list a
    thousand times over, nested: cheap to load, gigabytes once anything copies or serialises
    it (JSON, Ray, the index). So the size of the data with every reference followed (one
    unit per container or number, one per character or byte of text) is bounded by the
    pickle's own size, counted without ever expanding it (and a cycle is just over budget).

    Raises:
        SampleError: `annotation_too_large`.
    """
    budget = EXPANSION_FACTOR * n_bytes + EXPANSION_FLOOR
    stack, cost = [obj], 0
    while stack:
        x = stack.pop()
        cost += 1 + (len(x) if isinstance(x, str | bytes | bytearray) else 0)
        if cost > budget:
            raise SampleError(Reason.ANNOTATION_TOO_LARGE,
                              f"{name}: a {n_bytes}-byte pickle expands past {budget} units "
                              "(shared or cyclic references)")
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list | tuple | set | frozenset):
            stack.extend(x)


def safe_load(file: BinaryIO, *, name: str) -> Any:
    """Unpickle plain data from `file` (seekable); see `safe_loads`."""
    start = file.tell()
    try:
        obj = _load(file, name=name, encoding="utf-8")
    except UnicodeDecodeError:  # a Python 2 byte string that is not UTF-8: keep its bytes 1:1
        file.seek(start)
        obj = _load(file, name=name, encoding="latin1")
    check_expansion(obj, n_bytes=file.tell() - start, name=name)
    return obj


def safe_loads(data: bytes, *, name: str) -> Any:
    """Unpickle plain data from `data`.

    Args:
        data: the pickle bytes.
        name: what the pickle is, for reject details.

    Returns:
        The unpickled dicts / lists / str / numbers / bytes.

    Raises:
        SampleError: `unsafe_pickle` when the pickle names any class or function outside the
            plain-data set; `bad_annotation` when it is not a valid pickle;
            `annotation_too_large` when its shared references expand it (`check_expansion`).
    """
    return safe_load(io.BytesIO(data), name=name)


def _load(file: BinaryIO, *, name: str, encoding: str) -> Any:
    try:
        return SafeUnpickler(file, name=name, encoding=encoding).load()
    except SampleError:
        raise
    except UnicodeDecodeError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, OverflowError) as e:
        raise SampleError(Reason.BAD_ANNOTATION,
                          f"{name}: not a valid pickle: {type(e).__name__}: {e}") from e
