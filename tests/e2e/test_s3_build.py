"""Builds straight to an S3-API store (`out: s3://...`): the shard jobs upload their own
shards, the commit goes up in order (shards, tables, card, `latest`), a crashed build resumes
from the store, and an incremental build copies unchanged shards on the store. The store is
moto's server on localhost, the client the real s3fs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sa2va_shards.build.run import run_build
from sa2va_shards.build.shard import process_shard
from sa2va_shards.errors import ConfigError
from sa2va_shards.loader import LoaderConfig, ShardDataset
from tests.helpers import make_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def staging(tmp_path, monkeypatch):
    """Each test's own cache (staging folders of builds, loader mirrors)."""
    monkeypatch.setenv("SA2VA_SHARDS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def raw(synth):
    return synth("coco", n_items=12, seed=5)


@pytest.fixture(scope="module")
def local(raw, tmp_path_factory):
    """The same build on a local disk: what the store must hold, byte for byte."""
    cfg = make_config(raw, tmp_path_factory.mktemp("local"), dataset="ds",
                      shards={"samples_per_shard": 3})
    return run_build(cfg, runner="serial", progress=False)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _store_shards(fs, version_path: str) -> dict[str, str]:
    fs.invalidate_cache()
    return {p.rsplit("/", 1)[1]: _sha(fs.cat_file(p))
            for p in fs.glob(f"{version_path}/shards/*.tar")}


def _local_shards(build_dir: Path) -> dict[str, str]:
    return {p.name: _sha(p.read_bytes()) for p in (build_dir / "shards").glob("*.tar")}


def _keys(source, tmp_path) -> list[str]:
    cfg = LoaderConfig(gt_masks="image", cache_dir=str(tmp_path / "loader"))
    return sorted(s["__key__"] for s in ShardDataset(source, cfg))


def _to_store(raw, url: str):
    return make_config(raw, url, dataset="ds", shards={"samples_per_shard": 3})


def test_a_build_to_the_store_is_the_local_build_and_the_loader_reads_it(store, raw, local,
                                                                         tmp_path):
    result = run_build(_to_store(raw, "s3://bucket/b1"), runner="serial", progress=False)
    version = f"bucket/b1/ds/{result.version}"
    assert result.version == local.version  # `out` is not part of the id
    assert result.url == f"s3://{version}" and result.counts == local.counts
    assert _store_shards(store, version) == _local_shards(local.build_dir)
    for name in ("shards.parquet", "samples.parquet", "rejects.parquet"):
        assert store.cat_file(f"{version}/{name}") == (local.build_dir / name).read_bytes()
    assert store.cat_file("bucket/b1/ds/latest").decode().strip() == result.version
    assert not store.exists(f"{version}/.progress")  # the sidecars go with the commit
    assert not list(result.build_dir.glob("shards/*.tar"))  # staging never held a shard
    assert _keys("s3://bucket/b1/ds", tmp_path) == _keys(local.build_dir, tmp_path)
    again = run_build(_to_store(raw, "s3://bucket/b1"), runner="serial", progress=False)
    assert again.reused and again.counts == local.counts


def test_verify_and_versions_read_a_dataset_on_the_store(store, raw, local, capsys):
    from sa2va_shards.cli import main

    result = run_build(_to_store(raw, "s3://bucket/vv"), runner="serial", progress=False)
    assert main(["verify", "s3://bucket/vv/ds"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["versions", "s3://bucket/vv/ds", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["latest"], r["samples"]) for r in rows] == \
        [(result.version, True, local.counts["written"])]
    shard = sorted(store.glob(f"bucket/vv/ds/{result.version}/shards/*.tar"))[0]
    good = store.cat_file(shard)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x10
    store.pipe_file(shard, bytes(bad))  # damaged on the store
    try:
        assert main(["verify", f"s3://bucket/vv/ds/{result.version}"]) != 0
        assert "sha256" in capsys.readouterr().out
    finally:
        store.pipe_file(shard, good)


class _Crash(Exception):
    pass


def _crash_after(n: int, calls: list):
    """A shard job that finishes `n` shards (uploading them), then fails like a lost node."""
    def job(plan, cfg, *, build_dir):
        if len(calls) == n:
            raise _Crash(plan.name)
        calls.append(plan.name)
        return process_shard(plan, cfg, build_dir=build_dir)
    return job


@pytest.mark.parametrize("same_machine", [True, False])
def test_a_crashed_build_is_invisible_and_resumes_from_the_store(store, raw, local, tmp_path,
                                                                 staging, same_machine):
    url = f"s3://bucket/crash{int(same_machine)}"
    calls: list[str] = []
    with pytest.raises(_Crash):
        run_build(_to_store(raw, url), runner="serial", progress=False,
                  shard_fn=_crash_after(2, calls))
    dataset = url.removeprefix("s3://") + "/ds"
    store.invalidate_cache()
    assert store.exists(f"{dataset}/{local.version}/.progress")
    assert not store.exists(f"{dataset}/{local.version}/dataset.json")
    assert not store.exists(f"{dataset}/latest")
    with pytest.raises(ConfigError, match="not a build or a dataset folder"):
        ShardDataset(f"{url}/ds", LoaderConfig(cache_dir=str(tmp_path / "l")))
    if not same_machine:  # another driver resumes: nothing but the store to go by
        import shutil

        shutil.rmtree(staging)
    rerun: list[str] = []
    result = run_build(_to_store(raw, url), runner="serial", progress=False,
                       shard_fn=_crash_after(99, rerun))
    assert result.resumed_shards == 2 and not set(rerun) & set(calls)
    assert len(calls) + len(rerun) == len(_local_shards(local.build_dir))
    assert _store_shards(store, f"{dataset}/{result.version}") == _local_shards(local.build_dir)
    assert _keys(f"{url}/ds", tmp_path) == _keys(local.build_dir, tmp_path)


def test_a_finished_shard_changed_on_the_store_is_built_again_not_resumed(store, raw, local):
    """Same size, other bytes: resume checks the tar's identity on the store (size and
    ETag, recorded after the upload), without downloading it."""
    url, calls = "s3://bucket/changed", []
    with pytest.raises(_Crash):
        run_build(_to_store(raw, url), runner="serial", progress=False,
                  shard_fn=_crash_after(2, calls))
    tar = f"bucket/changed/ds/{local.version}/shards/{calls[0]}"
    bad = bytearray(store.cat_file(tar))
    bad[len(bad) // 2] ^= 0x10
    store.pipe_file(tar, bytes(bad))
    rerun: list[str] = []
    result = run_build(_to_store(raw, url), runner="serial", progress=False,
                       shard_fn=_crash_after(99, rerun))
    assert result.resumed_shards == 1 and calls[0] in rerun and calls[1] not in rerun
    assert _store_shards(store, f"bucket/changed/ds/{result.version}") == \
        _local_shards(local.build_dir)


@pytest.mark.parametrize("same_machine", [True, False])
def test_a_crash_between_card_and_latest_is_finished_by_the_rerun(store, raw, local, staging,
                                                                  same_machine):
    import shutil

    import sa2va_shards.build.remote as remote_mod

    def lost(fs, version):
        raise OSError("connection reset before `latest`")

    url = f"s3://bucket/late{int(same_machine)}"
    dataset = url.removeprefix("s3://") + "/ds"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(remote_mod, "set_store_latest", lost)
        with pytest.raises(OSError, match="before `latest`"):
            run_build(_to_store(raw, url), runner="serial", progress=False)
    store.invalidate_cache()
    assert store.exists(f"{dataset}/{local.version}/dataset.json")
    assert not store.exists(f"{dataset}/latest")
    if not same_machine:
        shutil.rmtree(staging)
    calls: list[str] = []
    result = run_build(_to_store(raw, url), runner="serial", progress=False,
                       shard_fn=_crash_after(99, calls))
    assert result.reused and not calls
    store.invalidate_cache()
    assert store.cat_file(f"{dataset}/latest").decode().strip() == local.version
    assert not store.exists(f"{dataset}/{local.version}/.committing")
    assert not store.exists(f"{dataset}/{local.version}/.progress")


def test_an_incremental_build_on_the_store_copies_unchanged_shards(store, raw, local, capsys):
    from sa2va_shards.cli import main

    """A smoke build of the first inputs, then the full build: shards whose recipe is
    unchanged are copied on the store, not computed, and the bytes equal a local build."""
    url = "s3://bucket/inc"
    first = run_build(_to_store(raw, url), runner="serial", progress=False, limit=8)
    assert first.built_shards >= 2
    calls: list[str] = []
    full = run_build(_to_store(raw, url), runner="serial", progress=False,
                     shard_fn=_crash_after(99, calls))
    assert full.reused_shards >= 1 and full.built_shards == len(calls)
    assert full.reused_shards + full.built_shards == len(_local_shards(local.build_dir))
    assert _store_shards(store, f"bucket/inc/ds/{full.version}") == \
        _local_shards(local.build_dir)
    assert main(["diff", f"{url}/ds/{first.version}", f"{url}/ds", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["from"], d["to"], d["samples"]["removed"]) == (first.version, full.version, [])
    assert len(d["samples"]["added"]) == full.counts["written"] - first.counts["written"] > 0
    cfg = _to_store(raw, url)
    q90 = run_build(dataclasses.replace(cfg, image=dataclasses.replace(cfg.image,
                                                                       jpeg_quality=90)),
                    runner="serial", progress=False)
    assert main(["diff", f"{url}/ds", "--json"]) == 0  # `latest` against its parent
    d = json.loads(capsys.readouterr().out)
    assert (d["from"], d["to"]) == (full.version, q90.version)
    assert d["config_changes"] == {"image.jpeg_quality": [95, 90]}
    # a stored shard deleted since is built again, not copied from nowhere
    store.rm(f"bucket/inc/ds/{first.version}", recursive=True)
    store.rm(f"bucket/inc/ds/{full.version}", recursive=True)
    store.invalidate_cache()
    again = run_build(_to_store(raw, url), runner="serial", progress=False)
    assert again.reused_shards == 0 and not again.reused
    assert _store_shards(store, f"bucket/inc/ds/{again.version}") == \
        _local_shards(local.build_dir)


def test_a_missing_bucket_fails_before_anything_is_written(store, raw, staging):
    with pytest.raises(ConfigError, match="no bucket 'nobucket'"):
        run_build(_to_store(raw, "s3://nobucket/out"), runner="serial", progress=False)
    assert not staging.exists()


@pytest.mark.ray
def test_ray_workers_upload_their_own_shards(store, raw, local, tmp_path):
    """The CLI with a fresh local Ray: workers are other processes with only the URL and
    their environment's credentials and endpoint."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"dataset: ds\nout: s3://bucket/ray\nshards: {{samples_per_shard: 3}}\n"
                   f"reader: {{format: coco, root: {raw}}}\n")
    env = {**os.environ, "FSSPEC_S3_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
           "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "sa2va_shards.cli", "build", str(cfg),
                           "--runner", "ray", "--num-cpus", "2", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"s3://bucket/ray/ds/{local.version}" in proc.stdout + proc.stderr
    assert _store_shards(store, f"bucket/ray/ds/{local.version}") == \
        _local_shards(local.build_dir)


def test_gc_on_the_store_keeps_what_kept_versions_use_and_repoints_the_index(store, raw,
                                                                             local):
    from sa2va_shards.build.remote import collect_store_garbage

    url, where = "s3://bucket/gc", "bucket/gc/ds"
    first = run_build(_to_store(raw, url), runner="serial", progress=False, limit=8)
    full = run_build(_to_store(raw, url), runner="serial", progress=False)
    assert full.reused_shards >= 1  # index entries of those name the smoke build's tars
    running = f"{where}/v{'0' * 12}/shards/x.tar"  # a build in progress: no card yet
    store.pipe_file(running, b"x")
    dry = collect_store_garbage(f"{url}/ds", keep_last=1, dry_run=True)
    store.invalidate_cache()
    assert dry.removed_versions == [first.version] and store.exists(f"{where}/{first.version}")
    report = collect_store_garbage(f"{url}/ds", keep_last=1)
    store.invalidate_cache()
    assert report.removed_versions == [first.version] and report.kept == [full.version]
    assert report.freed_bytes == dry.freed_bytes > 0
    assert not store.exists(f"{where}/{first.version}") and store.exists(running)
    assert any("no card" in n for n in report.notes)
    entries = [json.loads(store.cat_file(p)) for p in store.glob(f"{where}/store/*.json")]
    assert len(entries) == len(_local_shards(local.build_dir))
    assert all(e["at"].startswith(f"{url}/ds/{full.version}/") and
               store.exists(e["at"].removeprefix("s3://")) for e in entries)
    # the next version still copies instead of computing
    store.rm(f"{where}/{full.version}/dataset.json")
    store.rm(f"{where}/{full.version}/shards/{sorted(_local_shards(local.build_dir))[0]}")
    store.invalidate_cache()
    calls: list[str] = []
    again = run_build(_to_store(raw, url), runner="serial", progress=False, resume=True,
                      shard_fn=_crash_after(99, calls))
    assert again.built_shards == len(calls) == 1
    assert _store_shards(store, f"{where}/{again.version}") == _local_shards(local.build_dir)


def test_store_to_store(store, raw, local, tmp_path):
    """Raw data and output both on the store: the same shard bytes as the local build."""
    store.put(str(raw), "bucket/both-raw/coco", recursive=True)
    store.invalidate_cache()
    cfg = make_config("s3://bucket/both-raw/coco", "s3://bucket/both", dataset="ds",
                      shards={"samples_per_shard": 3})
    result = run_build(cfg, runner="serial", progress=False)
    assert result.counts == local.counts
    assert _store_shards(store, f"bucket/both/ds/{result.version}") == \
        _local_shards(local.build_dir)
    assert _keys("s3://bucket/both/ds", tmp_path) == _keys(local.build_dir, tmp_path)
