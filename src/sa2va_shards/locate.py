"""What a path on the command line means: a build (version folder), a dataset folder (its
`latest`), or `DATASET@VERSION` / `DATASET` resolved against an output root.

Every verb that reads builds goes through here, so the same words mean the same build
everywhere, and every way of getting it wrong is one `ConfigError` line saying what was found
and what was expected.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sa2va_shards.errors import ConfigError
from sa2va_shards.manifest import CARD
from sa2va_shards.versions import LATEST, read_latest

__all__ = ["OUT_ENV", "default_root", "resolve_build", "resolve_dataset"]

#: environment variable naming the output root `DATASET@VERSION` resolves against.
OUT_ENV = "SA2VA_SHARDS_OUT"

#: `DATASET`, `DATASET@VERSION` or `DATASET@latest` (dataset names are letters, digits, _ and -);
#: a bare `VERSION` is looked up in every dataset under the root.
_REF = re.compile(r"(?P<dataset>[A-Za-z0-9_-]+)(?:@(?P<version>[A-Za-z0-9_.-]*))?")

_FORMS = ("a build folder OUT/<dataset>/<version>, a dataset folder OUT/<dataset> "
          "(its `latest`), or DATASET@VERSION")


def default_root(root: str | Path | None = None) -> Path:
    """The output root: `root` if given, else $SA2VA_SHARDS_OUT, else ./out (the config's
    default `out`)."""
    return Path(root or os.environ.get(OUT_ENV) or "out")


def _versions(dataset_dir: Path) -> list[str]:
    return sorted(d.name for d in dataset_dir.iterdir() if (d / CARD).is_file())


def _from_ref(arg: str, root: Path) -> tuple[Path, str | None]:
    """(dataset folder, version or None for `latest`) of a reference that is not a path."""
    m = _REF.fullmatch(arg)
    if m is None:
        raise ConfigError(f"{arg}: no such file or folder (expected {_FORMS})")
    dataset_dir = root / m["dataset"]
    if not dataset_dir.is_dir():
        raise ConfigError(f"{arg}: no such file or folder, and no dataset {m['dataset']!r} "
                          f"under {root} (DATASET@VERSION resolves against --root, "
                          f"${OUT_ENV} or ./out)")
    version = m["version"]
    return dataset_dir, None if version in (None, "", LATEST) else version


def _bare_version(arg: str, root: Path) -> Path | None:
    """A bare version id (or a prefix of one) of some dataset under `root`, if unambiguous."""
    hits = sorted(d for d in root.glob(f"*/{arg}*") if (d / CARD).is_file())
    if len(hits) > 1:
        raise ConfigError(f"{arg}: a version of several builds under {root}: "
                          f"{', '.join(f'{d.parent.name}@{d.name}' for d in hits)}")
    return hits[0] if hits else None


def _build_from_ref(arg: str, root: Path) -> Path:
    m = _REF.fullmatch(arg)
    if m and m["version"] is None and not (root / arg).is_dir():
        bare = _bare_version(arg, root)
        if bare is not None:
            return bare
    dataset_dir, version = _from_ref(arg, root)
    return _follow_latest(dataset_dir) if version is None else _pick_version(dataset_dir, version)


def _pick_version(dataset_dir: Path, version: str) -> Path:
    """An exact version, or a unique prefix of one (like a git hash)."""
    if (dataset_dir / version).is_dir():
        return dataset_dir / version
    known = _versions(dataset_dir)
    hits = [v for v in known if v.startswith(version)]
    if len(hits) == 1:
        return dataset_dir / hits[0]
    what = "is ambiguous" if hits else "not found"
    raise ConfigError(f"{dataset_dir.name}@{version}: version {what} in {dataset_dir}; "
                      f"complete versions: {', '.join(hits or known) or 'none'}")


def _follow_latest(dataset_dir: Path) -> Path:
    latest = read_latest(dataset_dir)
    if latest is None:
        known = _versions(dataset_dir)
        hint = (f"pick one of {', '.join(known)} (only partial builds?)" if known
                else "build it first (an unfinished build has no `latest` yet)")
        raise ConfigError(f"{dataset_dir}: no `latest` complete version: {hint}")
    build = dataset_dir / latest
    if not (build / CARD).is_file():
        raise ConfigError(f"{dataset_dir}/{LATEST} names {latest}, which has no {CARD}")
    return build


def _describe_folder(path: Path) -> str:
    """Why a folder is neither a build nor a dataset folder, in words."""
    if _looks_like_build(path):
        return (f"{path}: incomplete build (no {CARD}): still running or crashed; "
                "rerun `sa2va-shards build CONFIG` to finish it")
    return (f"{path}: not a build (no {CARD}) nor a dataset folder (no `{LATEST}`); "
            f"expected {_FORMS}")


def _looks_like_build(path: Path) -> bool:
    return (path / "shards").is_dir() or any(path.glob("*.parquet"))


def resolve_build(arg: str | Path, root: str | Path | None = None, *,
                  allow_incomplete: bool = False) -> Path:
    """The build folder `arg` names. With `allow_incomplete` (verify), a folder that looks
    like a build but has no card is returned as is, for the verifier to report on.

    Raises:
        ConfigError: nothing there, an incomplete build, a dataset with no complete version,
            an unknown or ambiguous version.
    """
    path = Path(arg)
    if not path.exists():
        return _build_from_ref(str(arg), default_root(root))
    if not path.is_dir():
        raise ConfigError(f"{path}: a file, not a folder (expected {_FORMS})")
    if (path / CARD).exists():
        return path
    if (path / LATEST).exists():
        return _follow_latest(path)
    if any((d / CARD).is_file() for d in path.iterdir() if d.is_dir()):
        return _follow_latest(path)  # a dataset folder with only partial builds: says so
    if allow_incomplete and _looks_like_build(path):
        return path
    raise ConfigError(_describe_folder(path))


def resolve_dataset(arg: str | Path, root: str | Path | None = None) -> Path:
    """The dataset folder (OUT/<dataset>) `arg` names: itself, the dataset of a build folder,
    or `DATASET` / `DATASET@...` / a bare version id under the output root.

    Raises:
        ConfigError: nothing there, or a folder that holds no versions.
    """
    path = Path(arg)
    if not path.exists():
        base = default_root(root)
        if _REF.fullmatch(str(arg)) and "@" not in str(arg) and not (base / arg).is_dir():
            bare = _bare_version(str(arg), base)
            if bare is not None:
                return bare.parent
        return _from_ref(str(arg), base)[0]
    if not path.is_dir():
        raise ConfigError(f"{path}: a file, not a folder (expected a dataset folder "
                          "OUT/<dataset>, a build folder in it, or DATASET)")
    if (path / CARD).exists():
        return path.parent  # a build folder: its dataset's versions
    if (path / LATEST).exists() or any((d / CARD).exists() for d in path.iterdir()):
        return path
    raise ConfigError(f"{path}: no versions here (expected a dataset folder OUT/<dataset>, "
                      "a build folder in it, or DATASET)")
