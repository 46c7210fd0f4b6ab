"""A training mixture: several builds, each with a repeat factor or a weight and its own
loader options, as one epoch (`epoch.py` makes the plan; `loader.ShardDataset` serves it).

YAML (the same as `Mixture(...)` in Python)::

    samples_per_epoch: null        # or N: the epoch's length; needed when a source has a weight
    sources:
      - build: out/refcoco         # a dataset folder (its `latest`), a version folder, tars
        repeat: 4                  # 4 passes per epoch (Sa2VA lists RefCOCO four times)
        loader: {task: caption_to_mask, max_objects: 5}
      - build: out/osprey
        weight: 1.0                # a share of what samples_per_epoch leaves after repeats
        loader: {task: mask_to_caption}

Relative `build` paths resolve against the YAML file's folder.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sa2va_shards.errors import ConfigError

__all__ = ["SOURCE_OPTIONS", "MixSource", "Mixture", "load_mixture"]

#: LoaderConfig fields a source may set for itself; the rest (geometry, seed, shuffle, GT
#: format) is the mixture's, since one batch holds samples of every source.
SOURCE_OPTIONS = ("task", "max_objects", "k_zero", "min_k", "frames", "video_targets",
                  "max_tiles")


@dataclass(frozen=True, kw_only=True)
class MixSource:
    """One build of a mixture."""

    #: dataset folder (follows `latest`), version folder, folder of tars, pattern or list.
    build: Any
    #: passes per epoch (1.0 = every sample once; 0.5 = half of them, drawn anew each epoch).
    repeat: float | None = None
    #: share of `samples_per_epoch` left after the repeated sources.
    weight: float | None = None
    #: LoaderConfig overrides for this source (`SOURCE_OPTIONS`).
    loader: dict[str, Any] = field(default_factory=dict)
    #: name in stats and reports (default: the build folder's name).
    name: str | None = None

    def __post_init__(self) -> None:
        if self.repeat is not None and self.weight is not None:
            raise ConfigError(f"mixture source {self.label}: give repeat or weight, not both")
        for value, what in ((self.repeat, "repeat"), (self.weight, "weight")):
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise ConfigError(f"mixture source {self.label}: {what} must be a number >= 0")
        unknown = set(self.loader) - set(SOURCE_OPTIONS)
        if unknown:
            name = sorted(unknown)[0]
            hint = difflib.get_close_matches(name, SOURCE_OPTIONS, n=1)
            raise ConfigError(f"mixture source {self.label}: loader option {name!r} is not "
                              f"per-source ({', '.join(SOURCE_OPTIONS)})"
                              + (f"; did you mean {hint[0]!r}?" if hint else ""))

    @property
    def label(self) -> str:
        return self.name or (Path(self.build).name if isinstance(self.build, str | Path)
                             else "sources")

    @property
    def passes(self) -> float | None:
        """The repeat factor (1.0 when neither repeat nor weight is given)."""
        return self.repeat if self.repeat is not None or self.weight is not None else 1.0


@dataclass(frozen=True, kw_only=True)
class Mixture:
    """Builds trained on together; see the module docstring."""

    sources: tuple[MixSource, ...]
    #: the epoch's length over all ranks (None: the sum of the repeated sources).
    samples_per_epoch: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        if not self.sources:
            raise ConfigError("a mixture needs at least one source")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ConfigError("samples_per_epoch must be >= 1")
        names = [s.label for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"mixture source names repeat: {names}; set `name` on each")


def load_mixture(path: str | Path) -> Mixture:
    """A `Mixture` from YAML.

    Raises:
        ConfigError: unreadable file, unknown keys, bad values (one line, with the key).
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the mixture: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("sources"), list):
        raise ConfigError(f"{path}: expected a mapping with a `sources` list")
    _no_unknown(doc, {"sources", "samples_per_epoch"}, str(path))
    sources = []
    for i, s in enumerate(doc["sources"]):
        where = f"{path}: sources[{i}]"
        if not isinstance(s, dict) or "build" not in s:
            raise ConfigError(f"{where}: expected a mapping with `build`")
        _no_unknown(s, {"build", "repeat", "weight", "loader", "name"}, where)
        build = s["build"]
        if not (isinstance(build, str) and "://" in build):  # a store URL stays as written
            build = Path(build) if Path(build).is_absolute() else path.parent / build
        sources.append(MixSource(build=build,
                                 repeat=s.get("repeat"), weight=s.get("weight"),
                                 loader=dict(s.get("loader") or {}), name=s.get("name")))
    return Mixture(sources=tuple(sources), samples_per_epoch=doc.get("samples_per_epoch"))


def _no_unknown(doc: dict, known: set[str], where: str) -> None:
    for key in doc:
        if key not in known:
            hint = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise ConfigError(f"{where}: unknown key {key!r}"
                              + (f"; did you mean {hint[0]!r}?" if hint else ""))
