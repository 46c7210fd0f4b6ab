"""Where the loader's raw samples come from: shard lists, the build card, tar iteration.

Tar iteration is webdataset's (`tariterators`: url_opener -> tar_file_expander ->
group_by_keys) with our own handler, one shard at a time so every error is pinned to its shard.
Samples come out raw (member suffix -> bytes): nothing is decoded here.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
from webdataset import gopen, tariterators

from sa2va_shards.errors import SYSTEM_EXCEPTIONS, ConfigError, CorruptDataError
from sa2va_shards.format import content_hash
from sa2va_shards.manifest import CARD, file_sha256, read_card, read_manifest
from sa2va_shards.safe_io import NotRegularFileError, open_regular
from sa2va_shards.versions import read_latest

__all__ = [
    "CorruptDataError",
    "CorruptDataWarning",
    "TarStream",
    "read_build",
    "resolve_source",
    "shard_keys",
    "shuffled",
]


class CorruptDataWarning(UserWarning):
    """A shard or sample was skipped (counted in `ShardDataset.stats`)."""


def _find_card(path: Path) -> Path | None:
    # a build keeps its shards in <build>/shards/: the card is there or one level up
    for d in (path, path.parent):
        if (d / CARD).is_file():
            return d
    return None


def read_build(build: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A build's dataset.json and its samples per shard file (from shards.parquet, if any).

    Raises:
        ConfigError: a card or table that cannot be read (one clean line, no traceback).
    """
    card = read_card(build)
    counts: dict[str, int] = {}
    if (build / "shards.parquet").is_file():
        rows = read_manifest(build, "shards.parquet").to_pylist()
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
            files = read_manifest(root, "shards.parquet", ["file"]).column("file").to_pylist()
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


def shard_keys(urls: list[str], build: Path | None) -> list[list[str]]:
    """Sample keys of each shard, in tar order: from samples.parquet when the build has it
    (nothing is opened), else from the tar headers (local files; data is seeked over).

    A shard that cannot be listed gets no keys here; reading it reports why.
    """
    listed: dict[str, list[str]] = {}
    if build is not None and (build / "samples.parquet").is_file():
        table = read_manifest(build, "samples.parquet", ["key", "shard"])
        for key, shard in zip(table["key"].to_pylist(), table["shard"].to_pylist(),
                              strict=True):
            listed.setdefault(shard, []).append(key)
    out = []
    for url in urls:
        keys = listed.get(Path(url).name)
        out.append(sorted(keys, key=lambda k: k + ".") if keys is not None
                   else _tar_keys(url))
    return out


def _tar_keys(url: str) -> list[str]:
    # tar order: members are sorted by name, so sorting keys followed by their '.' matches it
    local = _local_path(url)
    if local is None:
        raise ConfigError(f"{url}: a remote shard needs its build's samples.parquet to be "
                          "planned")
    keys: list[str] = []
    try:
        with open_regular(local) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                key = tariterators.base_plus_ext(member.name)[0]
                if key is not None and (not keys or keys[-1] != key):
                    keys.append(key)
    except (OSError, tarfile.TarError, NotRegularFileError):
        pass  # listed as far as readable; streaming the shard reports the damage
    return keys


def shuffled(items: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """Seeded block shuffle: `size` items are collected, then yielded in a random order.

    Every item leaves within `size` items of where it came in (a replacement buffer keeps a
    few items for arbitrarily long), so the samples a stopped run had read but not delivered
    all lie in its last block: a resume reopens only the shards of that block.
    """
    if size <= 1:
        yield from items
        return
    block: list[dict] = []
    for item in items:
        block.append(item)
        if len(block) == size:
            yield from (block[int(j)] for j in rng.permutation(size))
            block = []
    yield from (block[int(j)] for j in rng.permutation(len(block)))


class _HashingReader:
    """A read-only stream that hashes and counts every byte read through it."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.sha.update(b)
        self.size += len(b)
        return b

    def drain(self) -> None:
        """Read to the end (bytes after the tar's end blocks count too: an appended tail)."""
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        self.f.close()


def _local_path(url: str) -> Path | None:
    """The file a shard URL names on this machine, or None for a remote or piped one."""
    if url.startswith("file://"):
        return Path(url[7:])
    if url.startswith("file:"):
        return Path(url[5:])
    return None if "://" in url or url.startswith("pipe:") else Path(url)


def _tables_problem(build: Path) -> str | None:
    # the card pins the tables the checks rely on; a card from before it did is trusted as is
    recorded = read_card(build).get("manifests") or {}
    for name in ("shards.parquet", "samples.parquet"):
        if name in recorded and file_sha256(build / name) != recorded[name]:
            return (f"{build / name}: sha256 differs from {CARD} (edited or corrupt; "
                    "checked against it anyway)")
    return None


class _Manifest:
    """What a build's tables say a shard holds: sha256 and size per shard file, content hash
    per sample key. Read lazily, once per stream, only for the stream's own shards."""

    def __init__(self, build: Path, files: set[str]) -> None:
        #: why the tables cannot be trusted (hashes off the card's), or None.
        self.problem = _tables_problem(build)
        shards = read_manifest(build, "shards.parquet").to_pylist()
        self.shards = {r["file"]: r for r in shards if r["file"] in files}
        table = read_manifest(build, "samples.parquet", ["key", "shard", "sha256"])
        self.samples: dict[str, dict[str, str]] = {}
        for key, shard, sha in zip(*(table[c].to_pylist() for c in ("key", "shard", "sha256")),
                                   strict=True):
            if shard in files:
                self.samples.setdefault(shard, {})[key] = sha


class TarStream:
    """Raw grouped samples of `urls`, in order, checked against the build's manifests.

    A shard-level error (unreadable or truncated tar, duplicate member, not a regular file,
    sample count or sha256 off the manifest) skips the rest of that shard and is reported
    once, and only if this stream `owns` the shard (with sample-level striding several workers
    read the same shard).

    With `verify` (the default) and a build's manifests next to the shards:
    - the whole shard is hashed while it streams (no second read) and its sha256 and size are
      checked against shards.parquet at its end (`shard_mismatch`, counted; raised if strict);
    - a sample whose key is not in samples.parquet for this shard, or repeats, is refused
      before it is served (`sample_mismatch`): an appended sample is never served;
    - with `verify_samples` (the default), each sample's content hash is also checked against
      samples.parquet before it is yielded, so a changed sample is refused, never served
      (every member is then read, to hash it; unwanted ones are dropped after).

    Args:
        urls: shard paths/URLs (anything webdataset's gopen opens).
        owned: the shards whose errors this stream reports.
        wanted: member suffix -> whether to keep it (with `verify_samples` every member is
            read, to hash it, and the unwanted are then dropped).
        expected: shard file name -> samples the manifest recorded.
        strict: raise `CorruptDataError` instead of skipping.
        report: called with (reason, detail) for each skipped shard or sample this stream owns.
        verify: check against the manifests (local shards of a build).
        verify_samples: also refuse samples whose content hash differs (needs `verify`).
        fetch: called with a local shard path before it is opened (`remote.ensure_local`).
        manifests: a cache of the builds' manifests shared by several streams (a loader
            worker opens one stream per shard), loaded once for the shards of `scope`.
        scope: the shard URLs whose manifest rows to load (default `urls`).
    """

    def __init__(self, urls: list[str], *, owned: set[str], wanted: Callable[[str], bool],
                 expected: dict[str, int], strict: bool,
                 report: Callable[[str, str], None], verify: bool = True,
                 verify_samples: bool = True,
                 fetch: Callable[[Path], None] | None = None,
                 manifests: dict[Path, _Manifest | None] | None = None,
                 scope: Sequence[str] | None = None) -> None:
        self.urls, self.owned, self.wanted, self.expected = urls, owned, wanted, expected
        self.strict, self.report = strict, report
        self.verify, self.verify_samples = verify, verify and verify_samples
        self.url, self.bad, self.fetch = "", set(), fetch
        self._changed = 0  # samples of the current shard refused for changed bytes
        self._manifests = {} if manifests is None else manifests
        self._scope = urls if scope is None else scope

    def _select(self, fname: str) -> bool:
        suffix = tariterators.base_plus_ext(fname)[1]
        return suffix is not None and self.wanted(suffix.lower())

    def _manifest(self, url: str) -> _Manifest | None:
        local = _local_path(url)
        build = local.parent.parent if local else None  # <build>/shards/<file>
        if not self.verify or build is None or not (build / CARD).is_file():
            return None
        if build not in self._manifests:
            files = {p.name for p in map(_local_path, self._scope)
                     if p and p.parent.parent == build}
            try:
                manifest: _Manifest | None = _Manifest(build, files)
                problem = manifest.problem
            except (ConfigError, OSError) as e:  # a card without readable tables
                manifest, problem = None, f"{e} (shards read unchecked)"
            self._manifests[build] = manifest
            if problem and self.strict:
                raise CorruptDataError(f"manifest_mismatch: {problem}")
            if problem and self.owned:  # once per stream that owns shards (per worker)
                self.report("manifest_mismatch", problem)
        return self._manifests[build]

    def _open(self, url: str) -> _HashingReader | None:
        """The shard's byte stream; a local path must be a regular file (a FIFO would block
        the worker forever)."""
        try:
            local = _local_path(url)
            if local is not None and self.fetch is not None:
                return _HashingReader(self._fetch_and_open(local))
            return _HashingReader(open_regular(local) if local else gopen.gopen(url))
        except Exception as e:  # noqa: BLE001 - the handler decides (system errors re-raised)
            self._handler(e)
            return None

    def _fetch_and_open(self, local: Path, tries: int = 3):
        """A mirrored remote build's shard: download it, then open it. Another worker making
        room in the shared cache may remove it between the two (an open file stays readable,
        a fetched one not yet opened does not): fetch again."""
        for _ in range(tries - 1):
            try:
                self.fetch(local)
                return open_regular(local)
            except FileNotFoundError:
                continue
        self.fetch(local)
        return open_regular(local)

    def __iter__(self) -> Iterator[dict]:
        for url in self.urls:
            self.url, n, self._changed = url, 0, 0
            stream = self._open(url)
            if stream is None:
                continue
            manifest = self._manifest(url)
            try:
                for sample in self._samples(url, stream, manifest):
                    n += 1
                    yield sample
                self._end_of_shard(url, n, stream, manifest)
            finally:
                stream.close()

    def _samples(self, url: str, stream: _HashingReader,
                 manifest: _Manifest | None) -> Iterator[dict]:
        source = [{"url": url, "stream": stream}]
        # hashing a sample needs every member; otherwise unwanted ones are never extracted
        select = None if self.verify_samples and manifest is not None else self._select
        files = tariterators.tar_file_expander(source, handler=self._handler,
                                               select_files=select)
        known = (manifest.samples.get(Path(url).name, {}) if manifest is not None else None)
        seen: set[str] = set()
        for sample in tariterators.group_by_keys(files, handler=self._handler):
            if known is not None:
                problem = self._sample_problem(sample, known, seen)
                if problem:
                    self._refuse(f"{url} sample {sample.get('__key__')}: {problem}")
                    continue
                sample = {k: v for k, v in sample.items()
                          if k.startswith("__") or self.wanted(k)}
            yield sample

    def _sample_problem(self, sample: dict, known: dict[str, str],
                        seen: set[str]) -> str | None:
        key = sample["__key__"]
        if key in seen:
            return "repeated in the shard"
        seen.add(key)
        if key not in known:
            return "not in samples.parquet for this shard (appended?)"
        members = {k: v for k, v in sample.items() if not k.startswith("__")}
        if self.verify_samples and content_hash(members) != known[key]:
            self._changed += 1  # still one of the shard's samples: not a short shard
            return "content hash differs from samples.parquet (changed bytes)"
        return None

    def _refuse(self, detail: str) -> None:
        if self.strict:
            raise CorruptDataError(f"sample_mismatch: {detail}")
        if self.url in self.owned:
            self.report("sample_mismatch", detail + " (sample refused)")

    def _end_of_shard(self, url: str, n: int, stream: _HashingReader,
                      manifest: _Manifest | None) -> None:
        if url in self.bad:
            return
        expected = self.expected.get(Path(url).name)
        if expected is not None and n + self._changed != expected:
            self._skip("short_shard", f"{url}: {n} samples, the manifest says {expected}")
            return
        rec = manifest.shards.get(Path(url).name) if manifest is not None else None
        if rec is None:
            return
        stream.drain()
        if (stream.sha.hexdigest(), stream.size) != (rec["sha256"], rec["bytes"]):
            self.bad.add(url)
            if self.strict:
                raise CorruptDataError(f"shard_mismatch: {url}: sha256 differs from "
                                       "shards.parquet")
            if url in self.owned:
                checked = ("every sample served matched samples.parquet" if self.verify_samples
                           else "its samples were served unchecked")
                self.report("shard_mismatch", f"{url}: sha256 differs from shards.parquet "
                            f"({checked})")

    def _handler(self, exn: Exception) -> bool:
        if isinstance(exn, (*SYSTEM_EXCEPTIONS, CorruptDataError)):
            raise exn  # a strict-mode error passes back up through webdataset's own handlers
        if self.url not in self.bad:  # one report per shard: later errors are its aftermath
            reason = ("missing_shard" if isinstance(exn, FileNotFoundError) else
                      "not_a_file" if isinstance(exn, NotRegularFileError) else "corrupt_shard")
            first = exn.args[0] if exn.args else ""
            self._skip(reason, f"{self.url}: {type(exn).__name__}: {first}", exn)
        return True

    def _skip(self, reason: str, detail: str, exn: Exception | None = None) -> None:
        self.bad.add(self.url)
        if self.strict:
            raise CorruptDataError(f"{reason}: {detail}") from exn
        if self.url in self.owned:
            self.report(reason, detail + " (rest of the shard skipped)")
