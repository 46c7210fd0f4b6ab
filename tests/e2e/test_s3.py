"""Builds on an S3-API store: the loader reads `s3://` through a local mirror with a bounded
shard cache. The store is moto's server on localhost, the client the real s3fs."""

from __future__ import annotations

import tarfile

import pytest

from sa2va_shards.build.run import run_build
from sa2va_shards.errors import ConfigError
from sa2va_shards.loader import LoaderConfig, ShardDataset, ShardLoader
from tests.helpers import make_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def uploaded(store, synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("s3build")
    cfg = make_config(synth("coco", n_items=10, seed=2), out, dataset="ds",
                      shards={"samples_per_shard": 3})
    build = run_build(cfg, runner="serial", progress=False).build_dir
    store.put(str(out / "ds"), "bucket/out/ds", recursive=True)
    store.invalidate_cache()
    return build


def _keys(source, cfg, workers=2):
    return sorted(k for b in ShardLoader(ShardDataset(source, cfg), batch_size=2,
                                         num_workers=workers) for k in b["keys"])


def test_the_loader_streams_a_build_from_the_store(uploaded, tmp_path):
    shard_bytes = max(p.stat().st_size for p in (uploaded / "shards").glob("*.tar"))
    cfg = LoaderConfig(gt_masks="image", cache_dir=str(tmp_path), cache_bytes=2 * shard_bytes)
    assert _keys("s3://bucket/out/ds", cfg) == _keys(uploaded, cfg)  # `latest` followed
    cached = list(tmp_path.glob("ds/*/shards/*.tar"))
    assert 0 < len(cached) <= 2 + 2  # the budget, plus what two workers held while reading
    version = uploaded.name
    assert _keys(f"s3://bucket/out/ds/{version}", cfg, workers=0) == _keys(uploaded, cfg)


def test_a_changed_shard_on_the_store_is_refused(store, uploaded, tmp_path):
    shard = sorted((uploaded / "shards").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        member = next(m for m in tar if m.name.endswith(".jpg"))
    data = bytearray(shard.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0x10
    store.pipe(f"bucket/out/ds/{uploaded.name}/shards/{shard.name}", bytes(data))
    cfg = LoaderConfig(gt_masks="image", cache_dir=str(tmp_path))
    ds = ShardDataset("s3://bucket/out/ds", cfg)
    with pytest.warns(UserWarning, match="sample_mismatch"):
        keys = [s["__key__"] for s in ds]
    assert ds.stats["sample_mismatch"] == 1 and len(keys) == ds.num_samples - 1
    store.put_file(str(shard), f"bucket/out/ds/{uploaded.name}/shards/{shard.name}")


def test_not_a_build_and_unknown_stores_are_one_line_errors(uploaded, tmp_path):
    cfg = LoaderConfig(gt_masks="image", cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="not a build or a dataset folder"):
        ShardDataset("s3://bucket/out/nothing", cfg)
    with pytest.raises(ConfigError, match="cannot open this store"):
        ShardDataset("nosuchstore://bucket/x", cfg)


# -- publish: a local build to the store, in the commit order -------------------------------

def test_publish_uploads_in_commit_order_resumes_and_the_loader_reads_it(store, uploaded,
                                                                          tmp_path, monkeypatch):
    from sa2va_shards.cli import main
    from sa2va_shards.publish import publish

    version, cfg = uploaded.name, LoaderConfig(gt_masks="image", cache_dir=str(tmp_path))
    shards = sorted(p.name for p in (uploaded / "shards").glob("*.tar"))
    assert len(shards) >= 3
    real_put, order, crashed = type(store)._put_file, [], []

    async def crash_on_the_second_shard(fs, lpath, rpath, *args, **kwargs):
        order.append(rpath.rsplit("/", 1)[1])
        if len(order) == 2 and not crashed:  # once
            crashed.append(rpath)
            raise OSError("connection reset")
        return await real_put(fs, lpath, rpath, *args, **kwargs)

    # s3fs binds its sync put_file to the async _put_file when an instance is made: patch the
    # class, then drop the cached instances so publish's client is made with the patch
    monkeypatch.setattr(type(store), "_put_file", crash_on_the_second_shard)
    type(store).clear_instance_cache()
    with pytest.raises(ConfigError, match="upload failed.*rerun to resume"):
        publish(uploaded, "s3://bucket/pub")
    # a half-published version has no card: the loader refuses it, `latest` does not exist
    assert not store.exists(f"bucket/pub/ds/{version}/dataset.json")
    with pytest.raises(ConfigError, match="not a build or a dataset folder"):
        ShardDataset("s3://bucket/pub/ds", cfg)
    order.clear()
    report = publish(uploaded, "s3://bucket/pub")
    assert (report.uploaded, report.already_there, report.latest) == (len(shards) - 1, 1, True)
    # shards first, then the tables, the card last of the version (`latest` is a pipe)
    assert order[:len(shards) - 1] == shards[1:]
    assert order[len(shards) - 1:] == ["shards.parquet", "samples.parquet", "rejects.parquet",
                                       "dataset.json"]
    store.invalidate_cache()
    assert _keys("s3://bucket/pub/ds", cfg) == _keys(uploaded, cfg)
    monkeypatch.undo()
    type(store).clear_instance_cache()
    assert main(["publish", str(uploaded), "s3://bucket/pub"]) == 0  # again: nothing to upload
    assert main(["publish", str(uploaded), str(tmp_path / "local")]) == 2  # not a store


@pytest.mark.parametrize("evictions", [1, 2])
def test_a_shard_evicted_between_fetch_and_open_is_fetched_again(uploaded, tmp_path,
                                                                  monkeypatch, evictions):
    """Workers share the cache: one making room can remove a shard another has fetched but
    not opened yet. Simulated by removing every shard right after each of its first
    `evictions` fetches."""
    import sa2va_shards.loader.dataset as dataset_mod
    from sa2va_shards.loader.remote import ensure_local

    fetched, cfg = [], LoaderConfig(gt_masks="image", cache_dir=str(tmp_path))
    expected = _keys(uploaded, cfg)

    def evicted_once(path, budget):
        ensure_local(path, budget)
        if path.is_relative_to(tmp_path) and fetched.count(path) < evictions:  # cached only
            fetched.append(path)
            path.unlink()  # another worker's eviction, before this one opens it

    monkeypatch.setattr(dataset_mod, "ensure_local", evicted_once)
    assert _keys("s3://bucket/out/ds", cfg, workers=0) == expected
    assert len(fetched) == evictions * len(list((uploaded / "shards").glob("*.tar")))


def test_a_publish_that_fails_at_any_upload_never_shows_a_partial_version(store, uploaded,
                                                                          monkeypatch):
    """Every failure point, not one: whichever upload fails (any shard, any table, the card,
    or `latest`), the store holds no card unless every shard and table is there, `latest`
    only after the card, and a rerun completes the version."""
    from sa2va_shards.publish import publish

    version, real_put, real_pipe = uploaded.name, type(store)._put_file, type(store)._pipe_file
    n_shards = len(list((uploaded / "shards").glob("*.tar")))
    uploads, fail_at = [], [0]

    def fail_here(remote: str) -> None:
        uploads.append(remote)
        if len(uploads) == fail_at[0]:
            raise OSError("connection reset")

    async def put(fs, lpath, rpath, *args, **kwargs):
        fail_here(rpath)
        return await real_put(fs, lpath, rpath, *args, **kwargs)

    async def pipe(fs, path, *args, **kwargs):
        fail_here(path)
        return await real_pipe(fs, path, *args, **kwargs)

    monkeypatch.setattr(type(store), "_put_file", put)
    monkeypatch.setattr(type(store), "_pipe_file", pipe)
    total = n_shards + 3 + 1 + 1  # shards, tables, card, latest
    for k in range(1, total + 1):
        type(store).clear_instance_cache()
        uploads.clear()
        fail_at[0] = k
        with pytest.raises(ConfigError, match="upload failed"):
            publish(uploaded, f"s3://bucket/fail{k}")
        store.invalidate_cache()
        where = f"bucket/fail{k}/ds"
        card = store.exists(f"{where}/{version}/dataset.json")
        whole = all(store.exists(f"{where}/{version}/shards/{p.name}")
                    for p in (uploaded / "shards").glob("*.tar")) and all(
            store.exists(f"{where}/{version}/{t}")
            for t in ("shards.parquet", "samples.parquet", "rejects.parquet"))
        assert (card, store.exists(f"{where}/latest")) == (k == total, False)
        assert not card or whole
        fail_at[0] = 0
        assert publish(uploaded, f"s3://bucket/fail{k}").latest
        store.invalidate_cache()
        assert store.exists(f"{where}/latest") and store.exists(f"{where}/{version}/dataset.json")
