"""Test helpers shared across test modules."""

from __future__ import annotations

from pathlib import Path

from sa2va_shards.config import BuildConfig, parse_config


def make_config(root: Path, out: Path, *, fmt: str = "coco", dataset: str = "test",
                **sections) -> BuildConfig:
    """A build config for `root`, with section overrides like shards={'samples_per_shard': 4}."""
    return parse_config({"dataset": dataset, "reader": {"format": fmt, "root": str(root)},
                         "out": str(out), **sections})
