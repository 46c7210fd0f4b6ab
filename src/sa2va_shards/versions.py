"""Versions of a dataset: the `latest` pointer, the history, and diffs between two builds.

`<out>/<dataset>/` holds one directory per version (a content hash, see `manifest.version_id`)
and a `latest` file naming the newest complete one. Diffs compare manifests, never tars.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from sa2va_shards.atomic import atomic_write
from sa2va_shards.errors import ConfigError
from sa2va_shards.manifest import CARD, read_card, read_manifest
from sa2va_shards.safe_io import open_regular

__all__ = ["LATEST", "by_age", "complete_cards", "derive_parent", "diff_versions", "flatten",
           "list_versions", "read_latest", "set_latest", "version_rows"]

#: file in `<out>/<dataset>/` holding the newest complete version's id.
LATEST = "latest"


def set_latest(dataset_dir: Path, version: str) -> None:
    """Point `latest` at `version` atomically (write a temp file, then rename)."""
    # builds of two configs of one dataset may commit at the same time: each its own temp
    atomic_write(dataset_dir / LATEST, (version + "\n").encode())


def read_latest(dataset_dir: Path) -> str | None:
    """The version `latest` names, or None before the first complete build."""
    path = Path(dataset_dir) / LATEST
    if not path.exists():
        return None
    try:
        with open_regular(path) as f:  # a FIFO here would hang the build and the loader
            return f.read(256).decode("utf-8").strip() or None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable `latest` pointer: {e}") from e


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


#: config keys that say where things live, not what is built: not part of the version id.
_LOCATION_KEYS = ("out", "reader.root")


def _config_changes(old: dict, new: dict) -> dict[str, list]:
    """Changed config keys that are part of the version id (not `out` / `reader.root`)."""
    a, b = flatten(old), flatten(new)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in _LOCATION_KEYS}


def complete_cards(dataset_dir: Path) -> list[dict[str, Any]]:
    """The cards of the complete versions in `dataset_dir`, oldest first."""
    return by_age([read_card(d) for d in sorted(dataset_dir.iterdir()) if (d / CARD).exists()])


def by_age(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(cards, key=lambda c: (c["created"], c["version"]))


def derive_parent(cards: list[dict[str, Any]], config: dict[str, Any], *,
                  version: str) -> str | None:
    """The version a build of `config` derives from: of the complete full versions in `cards`
    (not `version` itself, not `--limit` builds), the one whose config differs from `config` in
    the fewest id keys; the newest of those (same config: the same recipe on older inputs).
    None for a dataset's first version. Not `latest`: a build of another config may have
    moved it."""
    candidates = [c for c in by_age(cards)
                  if c["version"] != version and not c.get("partial")]
    if not candidates:
        return None
    # newest first: max() keeps the first of equally close versions
    best = max(reversed(candidates),
               key=lambda c: -len(_config_changes(c.get("config", {}), config)))
    return best["version"]


def list_versions(dataset_dir: str | Path) -> list[dict[str, Any]]:
    """Complete versions, oldest first: version, created, samples, rejects, parent, latest,
    partial and limit (`--limit` builds), and the config keys changed vs its parent (only keys
    that are part of the version id)."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise ConfigError(f"{dataset_dir}: not a folder of versions (OUT/<dataset>)")
    return version_rows(complete_cards(dataset_dir), read_latest(dataset_dir))


def version_rows(cards: list[dict[str, Any]], latest: str | None) -> list[dict[str, Any]]:
    """`list_versions`' rows from the cards of a dataset's versions and its `latest`."""
    cards = by_age(cards)
    by_version = {c["version"]: c for c in cards}
    rows = []
    for c in cards:
        parent = by_version.get(c.get("parent"))
        rows.append({
            "version": c["version"], "created": c["created"], "samples": c["counts"]["written"],
            "rejects": c["counts"]["rejected"], "parent": c.get("parent"),
            "latest": c["version"] == latest,
            # a --limit smoke build: listed, never `latest`
            "partial": bool(c.get("partial")), "limit": c.get("limit"),
            "config_changes": _config_changes(parent["config"], c["config"]) if parent
            else {},
        })
    return rows


def _sample_hashes(build_dir: Path) -> dict[str, str]:
    table = read_manifest(build_dir, "samples.parquet", columns=["key", "sha256"])
    return dict(zip(table["key"].to_pylist(), table["sha256"].to_pylist(), strict=True))


def diff_versions(v1: str | Path, v2: str | Path) -> dict[str, Any]:
    """What changed from build `v1` to build `v2` (directories of two versions).

    Returns:
        JSON-ready dict: samples added/removed/changed (keys, by content hash), counts,
        config keys changed (old, new), and the K-histogram change per K value.
    """
    v1, v2 = Path(v1), Path(v2)
    c1, c2 = read_card(v1), read_card(v2)
    h1, h2 = _sample_hashes(v1), _sample_hashes(v2)
    added = sorted(set(h2) - set(h1))
    removed = sorted(set(h1) - set(h2))
    changed = sorted(k for k in set(h1) & set(h2) if h1[k] != h2[k])
    k1, k2 = Counter(c1["counts"]["k_histogram"]), Counter(c2["counts"]["k_histogram"])
    k_change = {k: k2[k] - k1[k] for k in sorted(set(k1) | set(k2), key=int) if k2[k] != k1[k]}
    return {
        "from": c1["version"], "to": c2["version"],
        "samples": {"added": added, "removed": removed, "changed": changed,
                    "unchanged": len(set(h1) & set(h2)) - len(changed)},
        "counts": {k: [c1["counts"][k], c2["counts"][k]] for k in ("read", "written", "rejected")},
        "config_changes": _config_changes(c1["config"], c2["config"]),
        "input_changed": c1["input_fingerprint"] != c2["input_fingerprint"],
        "k_histogram_change": k_change,
    }
