"""Build configuration: YAML in, frozen dataclasses out, strictly checked.

The grid (16), tokens per image (256) and image sizes (1024, 448) are derived here and nowhere
else. CLI flags override only runtime settings (out dir, Ray address, CPUs), never semantics, so
the YAML plus the input fingerprint fully determine a build's version.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from sa2va_shards.errors import ConfigError
from sa2va_shards.safe_io import open_regular
from sa2va_shards.stores import is_url

__all__ = [
    "BuildConfig",
    "ImageConfig",
    "MaskConfig",
    "ReaderConfig",
    "ShardConfig",
    "VisionConfig",
    "K_ZERO_POLICIES",
    "load_config",
    "parse_config",
    "reader_options",
]

Interpolation = Literal["bicubic", "bilinear"]
ResizeBackend = Literal["torch", "pillow"]
ImageStore = Literal["resized", "original", "auto"]
KZeroPolicy = Literal["keep", "drop_object", "drop_sample", "fallback_any"]
K_ZERO_POLICIES: tuple[str, ...] = get_args(KZeroPolicy)


@dataclass(frozen=True, kw_only=True)
class VisionConfig:
    """InternVL geometry; the prompt-mask grid follows from it."""

    #: InternVL tile side (the thumbnail the 16x16 grid describes).
    image_size: int = 448
    #: ViT patch size.
    patch_size: int = 14
    #: pixel-shuffle factor.
    downsample_ratio: float = 0.5

    @property
    def grid(self) -> int:
        """Side of the vision-token grid: 448 // 14 * 0.5 = 16."""
        return int(self.image_size // self.patch_size * self.downsample_ratio)

    @property
    def tokens_per_image(self) -> int:
        """`<IMG_CONTEXT>` tokens per 448 tile: grid ** 2 = 256."""
        return self.grid**2


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """How the SAM2 input image is made."""

    #: square side of the stored image and masks (SAM2 DirectResize).
    size: int = 1024
    #: antialiased Pillow-style kernel.
    interpolation: Interpolation = "bicubic"
    #: torch uint8 antialias (fast; bilinear bit-identical to Pillow, bicubic within 2 levels on
    #: ~1% of values) or Pillow itself (exact Pillow output, several times slower).
    resize_backend: ResizeBackend = "torch"
    #: JPEG quality of the stored 1024 image.
    jpeg_quality: int = 95
    #: images with more pixels are rejected (decompression-bomb guard).
    max_pixels: int = 100_000_000
    #: also store, for the loader's InternVL tiles, the original resized once to its dynamic
    #: tile grid for up to this many tiles (`tiles.jpg`) and to the 448 thumbnail
    #: (`thumb.jpg`), so tiles keep the source's detail; 0: tiles are cut from the 1024 image.
    tiles: int = 0
    #: what the sample's `jpg` is: `resized` (the S x S squash, made here), `original` (the
    #: source file's bytes as they are, when it is a JPEG; the loader makes the S x S input,
    #: thumbnail and tiles from it, one resample each) or `auto` (the source when it is a JPEG
    #: no larger than S x S, else resized). Video frames are always resized.
    store: ImageStore = "auto"


@dataclass(frozen=True, kw_only=True)
class MaskConfig:
    """What happens to objects whose prompt mask is empty (K = 0)."""

    k_zero: KZeroPolicy = "keep"


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    """Shard sizing; changes membership, so it is part of the version."""

    samples_per_shard: int = 256
    #: consecutive rejected samples (any reason) within a shard after which the build aborts:
    #: every sample failing means a wrong root or images folder, not bad data.
    max_consecutive_failures: int = 200
    #: consecutive unexpected (non-data) errors after which the build aborts (broken code).
    max_consecutive_unexpected: int = 100


@dataclass(frozen=True, kw_only=True)
class ReaderConfig:
    """Which raw dataset to read; `options` go to the reader's own dataclass."""

    format: str
    root: str
    options: dict[str, Any] = field(default_factory=dict)
    #: how the input files enter the version id: `stat` (path, size, modification time of
    #: every file under root: cheap; a copy without times is a new id) or `content` (their
    #: bytes: reads the dataset once more, and the id survives copies). A root on an object
    #: store uses the objects' sizes and ETags for both (`build/inputs.py`): nothing is read.
    fingerprint: Literal["stat", "content"] = "stat"


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """Everything a build needs; `semantic_dict()` is what the version hashes."""

    dataset: str
    reader: ReaderConfig
    image: ImageConfig = field(default_factory=ImageConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    #: output root; the build goes to <out>/<dataset>/<version>/.
    out: str = "out"

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (defaults filled in), as plain data."""
        return dataclasses.asdict(self)

    def semantic_dict(self) -> dict[str, Any]:
        """The resolved config minus where things live (root, out): the version's config part."""
        d = self.to_dict()
        d.pop("out")
        d["reader"].pop("root")
        return d


def _check_keys(cls: type, data: dict[str, Any], path: str,
                names: list[str] | None = None) -> None:
    """Every key of `data` names a field of `cls` (or one of `names`); else the key's path and
    the closest name."""
    names = [f.name for f in dataclasses.fields(cls)] if names is None else names
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{path}{key}: unknown key{hint}")


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "None"
    if get_origin(hint) is tuple:
        return f"a list of {_type_name(get_args(hint)[0])}"
    base = get_origin(hint) or hint
    return getattr(base, "__name__", str(base))


def _check_union(value: Any, hint: Any, path: str) -> Any:
    """`X | None` and other unions: the value as the first member type that takes it."""
    for member in get_args(hint):
        try:
            return _check_type(value, member, path)
        except ConfigError:
            continue
    names = " or ".join(_type_name(m) for m in get_args(hint))
    raise ConfigError(f"{path}: expected {names}, got {value!r}")


def _check_tuple(value: Any, hint: Any, path: str) -> tuple:
    """`tuple[X, ...]`: YAML writes a list; one item may be written alone (`files: a.json`)."""
    item = get_args(hint)[0]
    items = value if isinstance(value, list | tuple) else [value]
    try:
        return tuple(_check_type(v, item, f"{path}[{i}]") for i, v in enumerate(items))
    except ConfigError as e:
        raise ConfigError(f"{path}: expected {_type_name(hint)}, got {value!r}") from e


def _check_type(value: Any, hint: Any, path: str) -> Any:
    if hint is Any:
        return value
    if get_origin(hint) in (Union, types.UnionType):
        return _check_union(value, hint, path)
    if get_origin(hint) is tuple:
        return _check_tuple(value, hint, path)
    choices = get_args(hint) if get_origin(hint) is Literal else None
    if choices:
        if value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    base = get_origin(hint) or hint
    wrong_type = isinstance(base, type) and not isinstance(value, base)
    if wrong_type or isinstance(value, bool) and base is int:
        raise ConfigError(f"{path}: expected {_type_name(base)}, got {value!r}")
    return value


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    _check_keys(cls, data, path)
    hints = get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, data[f.name], f"{path}{f.name}.")
        else:
            kwargs[f.name] = _check_type(data[f.name], hint, f"{path}{f.name}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key is missing
        raise ConfigError(f"{path.rstrip('.') or 'config'}: {e}") from e


#: reader fields that are not reader options: the build sets them from these keys.
_READER_FIELDS_SET_ELSEWHERE = {"root": "reader.root", "max_pixels": "image.max_pixels"}


def reader_options(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """`reader.options` checked against the fields of the reader dataclass `cls` as every
    other section is checked (key path, closest name, type), as keyword arguments for it.

    Raises:
        ConfigError: an unknown key, a field set elsewhere (root, max_pixels), a wrong type.
    """
    path = "reader.options."
    for key, where in _READER_FIELDS_SET_ELSEWHERE.items():
        if key in options:
            raise ConfigError(f"{path}{key}: not a reader option; it is set by {where}")
    names = [f.name for f in dataclasses.fields(cls) if f.init
             and f.name not in _READER_FIELDS_SET_ELSEWHERE]
    _check_keys(cls, options, path, names)
    hints = get_type_hints(cls)
    return {key: _check_type(value, hints[key], f"{path}{key}") for key, value in options.items()}


def _check_reader(cfg: ReaderConfig) -> None:
    """Build the reader once, so an unknown format, a bad option or a bad option value fails
    at parse time, before a build writes anything (it reads no file)."""
    from sa2va_shards.readers import get_reader  # the readers import this module

    get_reader(cfg)


def _check_positive(cfg: BuildConfig) -> None:
    # before anything derives from them: patch_size 0 would be a ZeroDivisionError
    for name, value in (("vision.image_size", cfg.vision.image_size),
                        ("vision.patch_size", cfg.vision.patch_size),
                        ("image.size", cfg.image.size), ("image.max_pixels", cfg.image.max_pixels),
                        ("shards.max_consecutive_failures", cfg.shards.max_consecutive_failures),
                        ("shards.max_consecutive_unexpected",
                         cfg.shards.max_consecutive_unexpected)):
        if value < 1:
            raise ConfigError(f"{name}: {value} must be >= 1")
    ratio = cfg.vision.downsample_ratio
    if not (math.isfinite(ratio) and ratio > 0):
        raise ConfigError(f"vision.downsample_ratio: {ratio} must be a positive number")


def _check_geometry(v: VisionConfig) -> None:
    """Only geometry InternVL can run: the grid (and so every K and `<IMG_CONTEXT>` count) must
    be what the model really produces, not a rounded-down guess."""
    patches, rest = divmod(v.image_size, v.patch_size)
    if rest:
        raise ConfigError(
            f"vision.patch_size: {v.patch_size} does not divide vision.image_size {v.image_size}"
            f" ({v.image_size} / {v.patch_size} = {v.image_size / v.patch_size:.2f}): "
            "InternVL's ViT cuts a tile into whole patches")
    merge = round(1 / v.downsample_ratio)
    if merge < 1 or not math.isclose(merge * v.downsample_ratio, 1.0, abs_tol=1e-9):
        raise ConfigError(
            f"vision.downsample_ratio: {v.downsample_ratio} is not 1/n for a whole n: InternVL's "
            "pixel shuffle merges n x n patches into one token (0.5 merges 2 x 2)")
    if patches % merge:
        raise ConfigError(
            f"vision: {patches} patches a side (image_size {v.image_size} / patch_size "
            f"{v.patch_size}) is not divisible by {merge} (1 / downsample_ratio "
            f"{v.downsample_ratio}): InternVL's pixel shuffle merges {merge} x {merge} patches "
            f"into one token, so the grid would be {patches * v.downsample_ratio:g}, not a whole "
            "number" + (" (an even patch count is needed)" if merge == 2 else ""))


def _validate(cfg: BuildConfig) -> None:
    _check_positive(cfg)
    _check_geometry(cfg.vision)
    if cfg.vision.grid < 1:
        raise ConfigError(f"vision: grid {cfg.vision.grid} < 1 from {cfg.vision}")
    if not 1 <= cfg.image.jpeg_quality <= 100:
        raise ConfigError(f"image.jpeg_quality: {cfg.image.jpeg_quality} not in [1, 100]")
    if cfg.image.size < cfg.vision.grid:
        raise ConfigError(f"image.size: {cfg.image.size} smaller than the grid {cfg.vision.grid}")
    if cfg.shards.samples_per_shard < 1:
        raise ConfigError("shards.samples_per_shard: must be >= 1")
    if not 0 <= cfg.image.tiles <= 40:
        raise ConfigError(f"image.tiles: {cfg.image.tiles} not in [0, 40] (InternVL uses 12)")
    if not cfg.dataset.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"dataset: {cfg.dataset!r} must be letters, digits, '_' or '-'")


#: fsspec protocols that cannot hold a build: read-only, archives, or one process's memory (a
#: Ray worker would not see it).
_NOT_STORES = frozenset({"http", "https", "zip", "tar", "libarchive", "data", "github", "git",
                         "gist", "reference", "memory", "cached", "simplecache", "filecache",
                         "blockcache", "dir", "generic", "async_wrapper", "asyncwrapper"})


def build_location(value: str, key: str) -> str:
    """A build's `reader.root` or `out`: a local (or mounted) path, `file://` read as a path,
    or an object-store URL kept as it is, once fsspec knows its scheme and can import the
    package behind it: an unsupported scheme fails here, before anything is written (it
    would otherwise make a local folder named `s3:`).

    Raises:
        ConfigError: a scheme fsspec does not know, one whose package is missing (s3fs for
            s3://, gcsfs for gs://), or one that cannot hold a build (http, zip, memory...).
    """
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value
    if scheme in ("file", "local"):
        return rest
    from fsspec.registry import get_filesystem_class

    if scheme in _NOT_STORES:
        raise ConfigError(f"{key}: {value}: {scheme}:// cannot hold a build (read-only, an "
                          "archive or one process's memory); use a path or an object store "
                          "such as s3:// or gs://")
    try:
        get_filesystem_class(scheme)
    except (ValueError, ImportError) as e:  # unknown protocol, or its package not installed
        raise ConfigError(f"{key}: {value}: no store for {scheme}:// ({e}); builds take a "
                          "path, file://, or an fsspec store URL whose package is installed "
                          "(pip install s3fs for s3://, gcsfs for gs://)") from None
    return value


def parse_config(data: dict[str, Any], *, base_dir: Path | None = None) -> BuildConfig:
    """Build a `BuildConfig` from plain data; a relative `reader.root` or `out` resolves against
    `base_dir` (the config file's folder); `--out` on the command line is relative to the
    working directory, as any flag.

    Raises:
        ConfigError: on an unknown key (with a suggestion), a wrong type or a bad value, in
            `reader.options` too (checked against the reader's own fields).
    """
    cfg = _build(BuildConfig, data, "")
    cfg = dataclasses.replace(
        cfg, out=build_location(cfg.out, "out"), reader=dataclasses.replace(
            cfg.reader, root=build_location(cfg.reader.root, "reader.root")))
    if base_dir is not None and not is_url(cfg.reader.root) \
            and not Path(cfg.reader.root).is_absolute():
        root = str((base_dir / cfg.reader.root).resolve())
        cfg = dataclasses.replace(cfg, reader=dataclasses.replace(cfg.reader, root=root))
    if base_dir is not None and not is_url(cfg.out) \
            and not Path(cfg.out).is_absolute():  # as root: the file's folder
        cfg = dataclasses.replace(cfg, out=str((base_dir / cfg.out).resolve()))
    _validate(cfg)
    _check_reader(cfg.reader)
    return cfg


def load_config(path: str | Path) -> BuildConfig:
    """Load a YAML build config strictly (see `parse_config`)."""
    path = Path(path)
    try:
        with open_regular(path) as f:  # a FIFO would block the CLI forever
            data = yaml.safe_load(f.read().decode("utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as e:  # ValueError: not UTF-8
        raise ConfigError(f"{path}: cannot read config: {e}") from e
    return parse_config(data or {}, base_dir=path.parent)
