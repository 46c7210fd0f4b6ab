"""Test helpers shared across test modules."""

from __future__ import annotations

from pathlib import Path

from sa2va_shards.config import BuildConfig, parse_config


def make_config(root: Path, out: Path, *, fmt: str = "coco", dataset: str = "test",
                **sections) -> BuildConfig:
    """A build config for `root`, with section overrides like shards={'samples_per_shard': 4}."""
    return parse_config({"dataset": dataset, "reader": {"format": fmt, "root": str(root)},
                         "out": str(out), **sections})


def build_demo_formats(synth, out: Path, formats, *, n_items, **sections) -> dict[str, Path]:
    """Serial builds of the demo sets of `formats` with the demo's reader options (small sets
    from the session's `synth` fixture, seed 3); `n_items(fmt)` sizes each; `sections` adds
    config sections (e.g. image={'store': 'original'}). Format -> build folder."""
    from pipeline.demo import DEMO_SETS
    from sa2va_shards.build import run_build

    result = {}
    for fmt, name, _, _, options in DEMO_SETS:
        if fmt not in formats:
            continue
        root = synth(fmt, n_items=n_items(fmt), seed=3)
        cfg = parse_config({"dataset": name, "out": str(out), "shards": {"samples_per_shard": 3},
                            "reader": {"format": fmt, "root": str(root), "options": options},
                            **sections})
        result[fmt] = run_build(cfg, runner="serial", progress=False).build_dir
    return result
