"""Stock readers, no project code on the reading side: webdataset, Ray Data, pyarrow."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from sa2va_shards.build.run import run_build
from tests.helpers import make_config

FIELDS = {"jpg", "json", "gt_masks.json", "masks.json", "prompt_masks.npy", "k.npy"}


@pytest.fixture(scope="module")
def build(synth, tmp_path_factory):
    raw = synth("coco", n_items=7, seed=8)
    cfg = make_config(raw, tmp_path_factory.mktemp("interop"), shards={"samples_per_shard": 3})
    return run_build(cfg, runner="serial", progress=False)


def test_stock_webdataset_with_default_decoders_reads_every_documented_field(build):
    urls = sorted(str(p) for p in (build.build_dir / "shards").glob("*.tar"))
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb")
    samples = list(ds)
    assert len(samples) == build.counts["written"] == 7
    for s in samples:
        assert FIELDS <= set(s)
        meta, n = s["json"], len(s["json"]["objects"])
        kept = meta["image_store"] == "original"  # the source as it was (`image.store`)
        assert s["jpg"].shape == ((meta["height"], meta["width"], 3) if kept else
                                  (1024, 1024, 3))  # float RGB in [0, 1]
        assert s["prompt_masks.npy"].shape == (n, 16, 16) and s["prompt_masks.npy"].dtype == bool
        np.testing.assert_array_equal(s["k.npy"], s["prompt_masks.npy"].reshape(n, -1).sum(1))
        assert len(s["gt_masks.json"]) == len(s["masks.json"]) == n
        assert s["masks.json"][0]["size"] == [1024, 1024]
        assert s["gt_masks.json"][0]["size"] == [s["json"]["height"], s["json"]["width"]]


@pytest.mark.ray
def test_ray_data_read_webdataset_reads_the_shards(build, ray_local):
    import ray.data

    ds = ray.data.read_webdataset(str(build.build_dir / "shards"))
    rows = ds.take_all()
    assert len(rows) == 7
    assert FIELDS <= set(rows[0])


def test_pyarrow_reads_the_manifests_with_the_documented_columns(build):
    samples = pq.read_table(build.build_dir / "samples.parquet")
    shards = pq.read_table(build.build_dir / "shards.parquet")
    rejects = pq.read_table(build.build_dir / "rejects.parquet")
    assert {"key", "shard", "source_id", "n_obj", "k", "k_zero", "height", "width",
            "sha256"} <= set(samples.column_names)
    assert shards.column_names == ["file", "samples", "bytes", "sha256", "code"]
    assert {"source_id", "level", "reason", "detail"} <= set(rejects.column_names)
    assert sum(shards["samples"].to_pylist()) == samples.num_rows == 7
