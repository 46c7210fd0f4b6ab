"""Object stores (s3://, gs://, any fsspec filesystem): which values are store URLs, the
filesystem behind one, and the local cache folder that builds and the loader keep for them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from sa2va_shards.errors import ConfigError

__all__ = ["cache_root", "is_url", "local_cache", "object_identity", "protocol_of", "store_fs"]

#: info fields that name an object's content, in order of preference (S3, GCS, Azure, ...).
_CONTENT_TAGS = ("ETag", "etag", "md5Hash", "content_md5", "crc32c", "checksum")


def is_url(value: Any) -> bool:
    """A URL of an fsspec store (`s3://`, `gs://`, ...); plain paths and `file://` are not."""
    if not isinstance(value, str):
        return False
    scheme, sep, _ = value.partition("://")
    return bool(sep) and scheme not in ("file", "local")


def store_fs(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it without a trailing `/`) for `url`; credentials and
    endpoints come from the environment and fsspec's config, as for any fsspec user (AWS_*,
    ~/.aws, fsspec.conf).

    Raises:
        ConfigError: an unknown protocol, or its package not installed.
    """
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as e:
        raise ConfigError(f"{url}: cannot open this store ({type(e).__name__}: {e}); "
                          "install its fsspec package (s3fs for s3://, gcsfs for gs://)") from e
    return fs, path.rstrip("/")


def protocol_of(fs: Any) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def cache_root() -> Path:
    """`$SA2VA_SHARDS_CACHE`, else `~/.cache/sa2va-shards`."""
    env = os.environ.get("SA2VA_SHARDS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sa2va-shards"


def local_cache(kind: str, url: str) -> Path:
    """This machine's folder for one store URL: `<cache_root>/<kind>/<sha256(url)[:16]>`."""
    return cache_root() / kind / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def object_identity(info: dict[str, Any]) -> str:
    """`size\\0<tag>` of one object from its listing or `info()` entry: its ETag (or the
    store's checksum field); for a store with none, a hash of the whole entry (what fsspec's
    `ukey` hashes, without another request). New bytes give a new identity."""
    tag = next((str(info[k]) for k in _CONTENT_TAGS if info.get(k)), None)
    if tag is None:
        tag = hashlib.sha256(repr(sorted(info.items(), key=str)).encode()).hexdigest()
    return f"{info.get('size')}\0{tag}"

