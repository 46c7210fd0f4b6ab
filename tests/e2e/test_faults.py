"""The build under crashes and scheduling noise: killed workers, shuffled finish order, different
worker counts, and a setup where every sample fails."""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import time
from pathlib import Path

import pytest

from sa2va_shards.build import run_build
from sa2va_shards.errors import BuildAborted
from sa2va_shards.manifest import file_sha256
from tests.helpers import make_config

pytestmark = pytest.mark.ray


def _hashes(build_dir: Path) -> dict[str, str]:
    files = [*sorted((build_dir / "shards").glob("*.tar")),
             *(build_dir / n for n in ("samples.parquet", "shards.parquet", "rejects.parquet"))]
    return {f.name: file_sha256(f) for f in files}


@pytest.fixture(scope="module")
def reference(synth, tmp_path_factory):
    raw = synth("coco", n_items=16, seed=11, faults=("corrupt_image", "bad_rle"))
    cfg = make_config(raw, tmp_path_factory.mktemp("ref"), shards={"samples_per_shard": 3})
    result = run_build(cfg, runner="serial", progress=False)
    return cfg, _hashes(result.build_dir)


@pytest.fixture()
def by_value():
    """Ship this module's hooks to Ray workers by value (workers cannot import tests/)."""
    import ray.cloudpickle

    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)
    yield
    ray.cloudpickle.unregister_pickle_by_value(module)


def _real(plan, cfg, *, build_dir):
    from sa2va_shards.build.shard import process_shard

    return process_shard(plan, cfg, build_dir=build_dir)


def _die_once(plan, cfg, *, build_dir):
    """Kill the worker process the first time shard 2 runs; Ray retries the task."""
    marker = Path(build_dir) / f"killed-{plan.name}"
    if plan.index == 2 and not marker.exists():
        marker.touch()
        os._exit(1)
    return _real(plan, cfg, build_dir=build_dir)


def _random_delay(plan, cfg, *, build_dir):
    time.sleep(random.Random(plan.index * 7919 + os.getpid()).uniform(0, 0.4))
    return _real(plan, cfg, build_dir=build_dir)


def test_killed_worker_is_retried_and_output_is_identical(reference, ray_local, by_value,
                                                          tmp_path):
    cfg, expected = reference
    result = run_build(dataclasses.replace(cfg, out=str(tmp_path)), progress=False,
                       shard_fn=_die_once)
    assert (result.build_dir / "killed-test-000002.tar").exists()  # the kill happened
    assert _hashes(result.build_dir) == expected


@pytest.mark.parametrize("cpus_per_task", [2.0, 1.0, 0.5])  # 1, 2 and 4 concurrent workers
def test_worker_count_and_finish_order_do_not_change_a_byte(reference, ray_local, by_value,
                                                            tmp_path,
                                                            cpus_per_task):
    cfg, expected = reference
    result = run_build(dataclasses.replace(cfg, out=str(tmp_path)), progress=False,
                       cpus_per_task=cpus_per_task, shard_fn=_random_delay)
    assert _hashes(result.build_dir) == expected


def test_every_sample_failing_aborts_with_one_clear_message(synth, tmp_path, capsys):
    raw = synth("coco", n_items=12, seed=2)
    cfg = make_config(raw, tmp_path, shards={"samples_per_shard": 12,
                                             "max_consecutive_failures": 5})
    wrong = dataclasses.replace(cfg, reader=dataclasses.replace(
        cfg.reader, options={"images": "no_such_folder"}))
    with pytest.raises(BuildAborted, match="5 consecutive samples failed.*reader.root"):
        run_build(wrong, runner="serial", progress=False)
    build_dir = next((tmp_path / "test").iterdir())
    assert not (build_dir / "dataset.json").exists() and not (tmp_path / "test" / "latest").exists()
    assert not list((build_dir / "shards").glob("*"))  # the partial shard was removed
