"""A loader pass is quiet: no unclosed files (ResourceWarning), no NumPy / torch warnings (a
non-writable array, NumPy 2's copy keyword); and the README documents every key a batch
carries, light or Sa2VA."""

from __future__ import annotations

import contextlib
import gc
import re
import sys
import warnings
from pathlib import Path

import pytest

from pipeline.demo import DEMO_SETS
from sa2va_shards.build.run import run_build
from sa2va_shards.config import parse_config
from sa2va_shards.loader import LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.loader.encode import Encoder
from tests.helpers.tokenizer import tiny_tokenizer

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def builds(synth, tmp_path_factory):
    """An image build and a video build (the demo's reader options), built serially."""
    out, result = tmp_path_factory.mktemp("hygiene"), {}
    for fmt, name, _, _, options in DEMO_SETS:
        if fmt not in ("coco", "sav"):
            continue
        root = synth(fmt, n_items=5 if fmt == "coco" else 3, seed=7)
        cfg = parse_config({"dataset": name, "reader": {"format": fmt, "root": str(root),
                                                        "options": options},
                            "shards": {"samples_per_shard": 2}, "out": str(out)})
        result[fmt] = run_build(cfg, runner="serial", progress=False).build_dir
    return result


@contextlib.contextmanager
def _quiet():
    """Warnings as errors: every ResourceWarning and UserWarning (numpy and torch warn with
    it, and a clean build should not make ours fire), DeprecationWarnings from numpy, torch
    and pycocotools; files left open are caught when collected (an unraisable warning)."""
    unraisable, hook = [], sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            warnings.simplefilter("error", UserWarning)
            warnings.filterwarnings("error", category=DeprecationWarning,
                                    module=r"(numpy|torch|pycocotools)")
            yield
            gc.collect()
    finally:
        sys.unraisablehook = hook
    assert not unraisable, [str(u.exc_value) for u in unraisable]


def _pass(build: Path, *, encoder=None, device=None, **cfg) -> list[dict]:
    ds = ShardDataset(build, LoaderConfig(**cfg), encoder=encoder)
    batches = list(ShardLoader(ds, batch_size=2, num_workers=0, device=device))
    assert batches and not ds.stats, ds.stats
    return batches


def _all_batches(builds: dict) -> list[dict]:
    encoder = Encoder(tiny_tokenizer(), "phi3_chat")
    out = []
    with _quiet():
        for build in builds.values():
            out += _pass(build, task="mixed", gt_masks="both", max_tiles=4)
            out += _pass(build, task="mixed", gt_masks="both", max_tiles=4, device="cpu")
            out += _pass(build, task="mixed", gt_masks="full", encoder=encoder)
    return out


def test_a_loader_pass_leaves_no_open_files_and_no_numpy_or_torch_warnings(builds):
    batches = _all_batches(builds)
    assert any("input_ids" in b for b in batches) and any("tiles" in b for b in batches)


def test_a_pass_stopped_early_closes_its_shards(builds):
    with _quiet():
        loader = ShardLoader(ShardDataset(builds["coco"], LoaderConfig(interleave=2)),
                             batch_size=1, num_workers=0)
        it = iter(loader)
        next(it)
        del it  # a training loop that breaks out: its open shards are closed, not leaked


def test_the_readme_documents_every_batch_key(builds):
    text = README.read_text()
    documented = set(re.findall(r"^\| `([A-Za-z0-9_]+)` \|", text, flags=re.MULTILINE))
    keys = {k for b in _all_batches(builds) for k in b}
    assert not keys - documented, sorted(keys - documented)
