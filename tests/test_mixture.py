"""Mixtures of builds: exact per-epoch counts, proportions spread over the epoch, per-source
options and checks, YAML, length, elastic resume inside a mixture, shuffle quality."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from sa2va_shards.build.run import run_build
from sa2va_shards.errors import ConfigError
from sa2va_shards.loader import LoaderConfig, ShardDataset, ShardLoader
from sa2va_shards.loader.epoch import PlanSource, epoch_plan, source_counts
from sa2va_shards.loader.mixture import MixSource, Mixture, load_mixture
from tests.helpers import make_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CFG = LoaderConfig(gt_masks="image", shuffle_buffer=4)


@pytest.fixture(scope="module")
def builds(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("mix")
    result = {}
    for fmt, n in (("coco", 12), ("osprey", 10)):
        cfg = make_config(synth(fmt, n_items=n, seed=4), out, fmt=fmt, dataset=f"mix_{fmt}",
                          shards={"samples_per_shard": 3})
        result[fmt] = run_build(cfg, runner="serial", progress=False).build_dir
    return result


def _mixture(builds, **coco):
    return Mixture(sources=(MixSource(build=builds["coco"], name="coco", **coco,
                                      loader={"task": "caption_to_mask"}),
                            MixSource(build=builds["osprey"], name="osprey")))


def _served(ds, workers=0):
    return [(src, k) for b in ShardLoader(ds, batch_size=3, num_workers=workers)
            for src, k in zip(b["source"], b["keys"], strict=True)]


def test_repeats_give_exact_counts_and_per_source_options(builds):
    ds = ShardDataset(_mixture(builds, repeat=2), CFG)
    n_coco, n_osprey = (len(ShardDataset(builds[f], CFG)) for f in ("coco", "osprey"))
    assert ds.source_counts == {"coco": 2 * n_coco, "osprey": n_osprey}
    assert ds.num_samples == len(ds) == 2 * n_coco + n_osprey
    samples = list(ds)
    by_source = Counter(s["source"] for s in samples)
    skipped = sum(ds.stats.values())
    assert sum(by_source.values()) + skipped == ds.num_samples
    assert by_source["osprey"] > 0 and by_source["coco"] > 0
    assert {s["task"] for s in samples if s["source"] == "coco"} == {"caption_to_mask"}
    assert {s["task"] for s in samples if s["source"] == "osprey"} == {"mask_to_caption"}
    coco_keys = Counter(s["__key__"] for s in samples if s["source"] == "coco")
    assert set(coco_keys.values()) <= {1, 2}  # two passes: each sample at most twice


def test_weights_realise_their_proportions_over_the_epoch():
    # pure plan: 3 sources, weights 5:3:2 of 10_000 samples; counts exact, and every window
    # of 1000 positions within 4.5 binomial standard deviations of its share
    sizes = (700, 1300, 400)
    counts = source_counts(sizes, repeats=[None] * 3, weights=[5, 3, 2],
                           samples_per_epoch=10_000)
    assert counts == [5000, 3000, 2000]
    sources, first = [], 0
    for size, count in zip(sizes, counts, strict=True):
        shard_sizes = [100] * (size // 100)
        sources.append(PlanSource(tuple(range(first, first + len(shard_sizes))),
                                  tuple(shard_sizes), count))
        first += len(shard_sizes)
    for epoch in range(3):
        source, shard, item = epoch_plan(sources, seed=1, epoch=epoch, interleave=4)
        assert np.bincount(source).tolist() == counts
        for start in range(0, 10_000, 1000):
            window = np.bincount(source[start:start + 1000], minlength=3)
            for share, got in zip((0.5, 0.3, 0.2), window, strict=True):
                assert abs(got - 1000 * share) < 4.5 * (1000 * share * (1 - share)) ** 0.5
        # a source beyond its size wraps into a new pass: every sample before any twice
        for s, src in enumerate(sources):
            ids = list(zip(shard[source == s].tolist(), item[source == s].tolist(), strict=True))
            n = sum(src.sizes)
            assert len(set(ids[:n])) == min(n, len(ids))


def test_repeat_and_weight_mix_and_weights_need_a_length():
    assert source_counts([10, 20], repeats=[2, None], weights=[None, 1],
                         samples_per_epoch=50) == [20, 30]
    with pytest.raises(ValueError, match="samples_per_epoch"):
        source_counts([10, 20], repeats=[None, None], weights=[1, 1], samples_per_epoch=None)
    with pytest.raises(ValueError, match="more than"):
        source_counts([10, 20], repeats=[4, None], weights=[None, 1], samples_per_epoch=30)


def test_every_source_is_checked_against_its_loader_options(builds):
    bad = Mixture(sources=(MixSource(build=builds["coco"]),
                           MixSource(build=builds["osprey"], loader={"task": "caption_to_mask"})))
    with pytest.raises(ConfigError, match="osprey build serves mask_to_caption"):
        ShardDataset(bad, CFG)
    with pytest.raises(ConfigError, match="grid: build 16, loader 14"):
        from sa2va_shards.config import VisionConfig

        ShardDataset(_mixture(builds), replace(CFG, vision=VisionConfig(image_size=392)))
    with pytest.raises(ConfigError, match="not per-source.*did you mean 'max_objects'"):
        MixSource(build=builds["coco"], loader={"max_object": 2})
    with pytest.raises(ConfigError, match="repeat or weight"):
        MixSource(build=builds["coco"], repeat=1, weight=1)


def test_yaml_mixture_resolves_builds_next_to_the_file(builds, tmp_path):
    spec = {"samples_per_epoch": 40, "sources": [
        {"build": str(builds["coco"].parent), "repeat": 1, "name": "coco",
         "loader": {"task": "caption_to_mask"}},
        {"build": str(builds["osprey"]), "weight": 1.0, "name": "osprey"}]}
    path = tmp_path / "mix.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    ds = ShardDataset(path, CFG)
    assert ds.num_samples == 40 and ds.source_counts["osprey"] == 40 - ds.source_counts["coco"]
    path.write_text(json.dumps({**spec, "sampels_per_epoch": 3}))
    with pytest.raises(ConfigError, match="did you mean 'samples_per_epoch'"):
        load_mixture(path)


@pytest.mark.parametrize("before,after", [((2, 2), (1, 0)), ((1, 0), (3, 2))])
def test_elastic_resume_inside_a_mixture(builds, before, after):
    cfg = replace(CFG, even_ranks=False, seed=5)
    mix = _mixture(builds, repeat=2)
    heads, states = [], []
    for rank in range(before[0]):
        ds = ShardDataset(mix, cfg, rank=rank, world_size=before[0])
        loader = ShardLoader(ds, batch_size=2, num_workers=before[1])
        for batch in loader:
            heads += [(batch["source"][i], k, p) for i, (k, p) in
                      enumerate(zip(batch["keys"], batch["__progress__"].tolist(), strict=True))]
            break
        states.append(json.loads(json.dumps(loader.state_dict())))
    state = ShardDataset.merge_states(states)
    tails = []
    for rank in range(after[0]):
        ds = ShardDataset(mix, cfg, rank=rank, world_size=after[0])
        ds.load_state_dict(state)
        for batch in ShardLoader(ds, batch_size=2, num_workers=after[1]):
            tails += [(batch["source"][i], k, p) for i, (k, p) in
                      enumerate(zip(batch["keys"], batch["__progress__"].tolist(), strict=True))]
    full = ShardDataset(mix, cfg)
    served = [(s["source"], s["__key__"], s["__progress__"]) for s in full]
    positions = [p for _, _, p in heads + tails]
    assert len(positions) == len(set(positions))  # none twice
    assert sorted(heads + tails, key=lambda x: x[2]) == sorted(served, key=lambda x: x[2])


def test_interleaving_mixes_more_shards_into_a_batch(builds):
    def shards_per_batch(interleave: int) -> float:
        ds = ShardDataset(builds["coco"], replace(CFG, interleave=interleave, shuffle_buffer=0))
        batches = list(ShardLoader(ds, batch_size=4, num_workers=0))
        return float(np.mean([len(set(b["urls"])) for b in batches]))

    assert shards_per_batch(4) > shards_per_batch(1)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_fixed_length_epochs_give_every_rank_the_same_count(builds, world):
    n = ShardDataset(builds["coco"], CFG).num_samples
    counts, keys = set(), []
    for rank in range(world):
        ds = ShardDataset(builds["coco"], replace(CFG, task="caption_to_mask"), rank=rank,
                          world_size=world, samples_per_epoch=3 * n + 1)
        assert ds.num_samples == 3 * n + 1
        got = [k for b in ShardLoader(ds, batch_size=4, num_workers=2) for k in b["keys"]]
        counts.add(len(got))
        keys += got
    assert counts == {(3 * n + 1) // world}  # every sample intact: equal, nothing skipped
    assert max(Counter(keys).values()) <= 4  # three passes and a bit: drawn again, in turn
