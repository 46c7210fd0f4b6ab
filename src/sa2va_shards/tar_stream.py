"""Where the loader's raw samples come from: shard lists, the build card, tar iteration.

Tar iteration is webdataset's (`tariterators`: url_opener -> tar_file_expander ->
group_by_keys) with our own handler, one shard at a time so every error is pinned to its shard.
Samples come out raw (member suffix -> bytes): nothing is decoded here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
import pyarrow.parquet as pq
from webdataset import tariterators

from sa2va_shards.errors import SYSTEM_EXCEPTIONS, ConfigError
from sa2va_shards.manifest import CARD
from sa2va_shards.versions import read_latest

__all__ = [
    "CorruptDataError",
    "CorruptDataWarning",
    "TarStream",
    "read_build",
    "resolve_source",
    "shuffled",
]


class CorruptDataWarning(UserWarning):
    """A shard or sample was skipped (counted in `ShardDataset.stats`)."""


class CorruptDataError(RuntimeError):
    """Raised instead of skipping when `LoaderConfig.strict` is set."""


def _find_card(path: Path) -> Path | None:
    # a build keeps its shards in <build>/shards/: the card is there or one level up
    for d in (path, path.parent):
        if (d / CARD).is_file():
            return d
    return None


def read_build(build: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A build's dataset.json and its samples per shard file (from shards.parquet, if any)."""
    card = json.loads((build / CARD).read_text())
    counts: dict[str, int] = {}
    if (build / "shards.parquet").is_file():
        rows = pq.read_table(build / "shards.parquet").to_pylist()
        counts = {r["file"]: int(r["samples"]) for r in rows}
    return card, counts


def resolve_source(source: str | Path | Sequence[str | Path]) -> tuple[list[str], Path | None]:
    """Shard URLs (in build order) and the build directory holding dataset.json, if found.

    `source` is a build directory, a dataset directory (its `latest` version), a folder of
    tars, a brace pattern or a list of URLs.

    Raises:
        ConfigError: nothing to read.
    """
    if isinstance(source, str | Path) and Path(source).is_dir():
        root = Path(source)
        latest = read_latest(root)  # OUT/<dataset>: follow its `latest` pointer
        if latest and not (root / CARD).is_file():
            root = root / latest
        if (root / CARD).is_file() and (root / "shards.parquet").is_file():
            files = pq.read_table(root / "shards.parquet").column("file").to_pylist()
            return [str(root / "shards" / f) for f in files], root
        urls = sorted(str(p) for p in root.glob("*.tar"))
        if not urls:
            raise ConfigError(f"{root}: no dataset.json + shards.parquet and no *.tar files")
        return urls, _find_card(root)
    if isinstance(source, str | Path):
        urls = list(braceexpand.braceexpand(str(source)))
    else:
        urls = [str(u) for u in source]
    if not urls:
        raise ConfigError("no shard URLs given")
    local = Path(urls[0])
    return urls, _find_card(local.parent) if local.exists() else None


def shuffled(items: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """Seeded buffer shuffle: once `size` items are held, each new item replaces a randomly
    drawn one, which is yielded; the rest come out permuted at the end."""
    if size <= 1:
        yield from items
        return
    buf: list[dict] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = item
    for j in rng.permutation(len(buf)):
        yield buf[int(j)]


class TarStream:
    """Raw grouped samples of `urls`, in order.

    A shard-level error (unreadable or truncated tar, duplicate member, sample count off the
    manifest) skips the rest of that shard and is reported once, and only if this stream
    `owns` the shard (with sample-level striding several workers read the same shard).

    Args:
        urls: shard paths/URLs (anything webdataset's gopen opens).
        owned: the shards whose errors this stream reports.
        wanted: member suffix -> whether to read it (others are skipped unread).
        expected: shard file name -> samples the manifest recorded.
        strict: raise `CorruptDataError` instead of skipping.
        report: called with (reason, detail) for each skipped shard this stream owns.
    """

    def __init__(self, urls: list[str], *, owned: set[str], wanted: Callable[[str], bool],
                 expected: dict[str, int], strict: bool,
                 report: Callable[[str, str], None]) -> None:
        self.urls, self.owned, self.wanted, self.expected = urls, owned, wanted, expected
        self.strict, self.report = strict, report
        self.url, self.bad = "", set()

    def _select(self, fname: str) -> bool:
        suffix = tariterators.base_plus_ext(fname)[1]
        return suffix is not None and self.wanted(suffix.lower())

    def __iter__(self) -> Iterator[dict]:
        for url in self.urls:
            self.url, n = url, 0
            streams = tariterators.url_opener([{"url": url}], handler=self._handler)
            files = tariterators.tar_file_expander(streams, handler=self._handler,
                                                   select_files=self._select)
            for sample in tariterators.group_by_keys(files, handler=self._handler):
                n += 1
                yield sample
            expected = self.expected.get(Path(url).name)
            if expected is not None and n != expected and url not in self.bad:
                self._skip("short_shard", f"{url}: {n} samples, the manifest says {expected}")

    def _handler(self, exn: Exception) -> bool:
        if isinstance(exn, (*SYSTEM_EXCEPTIONS, CorruptDataError)):
            raise exn  # a strict-mode error passes back up through webdataset's own handlers
        if self.url not in self.bad:  # one report per shard: later errors are its aftermath
            reason = "missing_shard" if isinstance(exn, FileNotFoundError) else "corrupt_shard"
            first = exn.args[0] if exn.args else ""
            self._skip(reason, f"{self.url}: {type(exn).__name__}: {first}", exn)
        return True

    def _skip(self, reason: str, detail: str, exn: Exception | None = None) -> None:
        self.bad.add(self.url)
        if self.strict:
            raise CorruptDataError(f"{reason}: {detail}") from exn
        if self.url in self.owned:
            self.report(reason, detail + " (rest of the shard skipped)")
