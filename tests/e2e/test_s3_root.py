"""Builds from a raw root on an S3-API store (moto's server, the real s3fs): the same shards,
byte for byte, as from the same files on disk; a changed object rebuilds only its shards; a
missing object is a reject; a store that is not there is one error line."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.demo import DEMO_SETS
from sa2va_shards.build import process_shard, run_build
from sa2va_shards.config import parse_config
from sa2va_shards.errors import ConfigError
from sa2va_shards.manifest import file_sha256, read_card

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: small sets with the demo's faults: every reject path runs through the store too.
_ITEMS = {"sav": 3, "mevis": 3, "revos": 3, "refytvos": 3, "chatunivi": 2}


@pytest.fixture(scope="module")
def store(store, tmp_path_factory):
    """The session's S3 server, with a cache folder (views of roots) of this module's own."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("SA2VA_SHARDS_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield store


def _config(name: str, fmt: str, root: str, out, options: dict, per_shard: int = 3,
            **sections):
    return parse_config({"dataset": name, "out": str(out),
                         "shards": {"samples_per_shard": per_shard},
                         "reader": {"format": fmt, "root": root, "options": options},
                         **sections})


def _upload(store, local, prefix: str) -> str:
    store.put(str(local), f"bucket/{prefix}", recursive=True)
    store.invalidate_cache()
    return f"s3://bucket/{prefix}"


def _tars(build_dir) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted((build_dir / "shards").glob("*.tar"))}


def _rows(build_dir, table: str) -> list[dict]:
    return pq.read_table(build_dir / table).to_pylist()


def _counting(calls: list[str]):
    def shard_fn(plan, cfg, *, build_dir):
        calls.append(plan.name)
        return process_shard(plan, cfg, build_dir=build_dir)
    return shard_fn


#: the demo's sets, and the layouts whose shard jobs list a folder (SA-V frames) or read
#: per-object PNGs (SA-V val / test).
_SETS = [*DEMO_SETS, ("sav", "sav_frames", 0, (), {"layout": "frames"}),
         ("sav", "sav_png", 0, (), {"layout": "png"})]


@pytest.mark.parametrize("demo", _SETS, ids=[f"{d[0]}-{d[1]}" for d in _SETS])
def test_a_root_on_the_store_builds_the_same_shards_as_on_disk(demo, store, synth, tmp_path):
    fmt, name, _, faults, options = demo
    local_root = synth(fmt, n_items=_ITEMS.get(fmt, 6), seed=3, faults=faults)
    url = _upload(store, local_root, f"raw/{name}")  # a prefix per set: SA-V has three
    local = run_build(_config(name, fmt, str(local_root), tmp_path / "local", options),
                      runner="serial", progress=False)
    remote = run_build(_config(name, fmt, url, tmp_path / "remote", options),
                       runner="serial", progress=False)
    assert _tars(remote.build_dir) == _tars(local.build_dir) and _tars(local.build_dir)
    for table in ("samples.parquet", "rejects.parquet"):
        assert _rows(remote.build_dir, table) == _rows(local.build_dir, table), table
    counts = remote.counts
    assert counts == local.counts and counts["read"] == counts["written"] + counts["rejected"]
    card = read_card(remote.build_dir)
    assert card["config"]["reader"]["root"] == url  # the URL is kept, never a local path
    assert remote.version != local.version  # other input identities: ETags, not mtimes


@pytest.mark.ray
def test_ray_workers_stage_from_the_store_with_only_the_url(store, synth, ray_local, tmp_path,
                                                            monkeypatch):
    local_root = synth("coco", n_items=8, seed=3)
    url = _upload(store, local_root, "raw/coco_ray")
    cfg = _config("ray_coco", "coco", url, tmp_path / "ray", {})
    serial = run_build(dataclasses.replace(cfg, out=str(tmp_path / "serial")), runner="serial",
                       progress=False)
    # a cluster sets the store's credentials on its nodes; this session's workers may predate
    # the store, so the test hands its environment (not the driver's view) to the tasks
    worker_cache = tmp_path / "worker-cache"  # where a worker would keep a view: it keeps none
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    env["SA2VA_SHARDS_CACHE"] = str(worker_cache)
    real_remote = ray_local.remote
    monkeypatch.setattr(ray_local, "remote", lambda *a, **kw: real_remote(
        *a, runtime_env={"env_vars": env}, **kw))
    on_ray = run_build(cfg, runner="ray", progress=False)
    assert on_ray.runner == "ray" and on_ray.built_shards > 1
    assert _tars(on_ray.build_dir) == _tars(serial.build_dir)
    assert not worker_cache.exists()


def _reencode(data: bytes) -> bytes:
    """The same picture as another JPEG: new bytes (a new ETag), same size in pixels."""
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).save(out, format="JPEG", quality=70)
    return out.getvalue()


def test_a_changed_object_rebuilds_only_the_shards_that_read_it(store, synth, tmp_path):
    url = _upload(store, synth("coco", n_items=12, seed=5), "raw/coco_edit")
    cfg = _config("edit", "coco", url, tmp_path, {})
    first = run_build(cfg, runner="serial", progress=False)
    image = "bucket/raw/coco_edit/images/000000000007.jpg"
    store.pipe(image, _reencode(store.cat(image)))
    calls: list[str] = []
    second = run_build(cfg, runner="serial", progress=False, shard_fn=_counting(calls))
    holder = {r["shard"] for r in _rows(first.build_dir, "samples.parquet")
              if r["source_id"] == "000000000007"}
    assert second.version != first.version
    assert set(calls) == holder and second.reused_shards == first.built_shards - 1
    calls.clear()
    assert run_build(cfg, runner="serial", progress=False, shard_fn=_counting(calls)).reused
    assert not calls  # nothing changed on the store: the same version, nothing computed


def test_a_missing_object_is_a_reject_not_a_crash(store, synth, tmp_path, monkeypatch):
    url = _upload(store, synth("coco", n_items=8, seed=6), "raw/coco_gone")
    store.rm("bucket/raw/coco_gone/images/000000000003.jpg")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    build = run_build(_config("gone", "coco", url, tmp_path / "out", {}), runner="serial",
                      progress=False)
    assert not list((tmp_path / "tmp").iterdir())  # each shard job's staging folder removed
    rejects = {r["source_id"]: r["reason"] for r in _rows(build.build_dir, "rejects.parquet")}
    assert rejects == {"000000000003": "missing_image"}
    counts = build.counts
    assert counts["read"] == 8 == counts["written"] + counts["rejected"]


@pytest.mark.parametrize("url,message", [
    ("s3://no-such-bucket/raw/coco", "cannot list it: FileNotFoundError"),
    ("s3://bucket/raw/nothing-here", "no objects there")])
def test_a_store_root_that_is_not_there_is_one_line_before_anything_is_written(
        store, tmp_path, url, message):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message) as e:
        run_build(_config("none", "coco", url, out, {}), runner="serial", progress=False)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"reader.root: {url}")
    assert not out.exists()


def test_the_cli_builds_from_a_store_root_and_says_a_missing_one_in_one_line(
        store, synth, tmp_path, capsys):
    from sa2va_shards.cli import main

    url = _upload(store, synth("coco", n_items=4, seed=8), "raw/coco_cli")
    config = tmp_path / "c.yaml"
    config.write_text(f"dataset: cli\nreader: {{format: coco, root: '{url}'}}\nout: out\n")
    assert main(["build", str(config), "--runner", "serial", "--no-progress"]) == 0
    assert list((tmp_path / "out" / "cli").glob("v*/dataset.json"))
    capsys.readouterr()
    config.write_text("dataset: cli\nreader: {format: coco, root: 's3://no-such-bucket/x'}\n")
    assert main(["build", str(config), "--runner", "serial", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: reader.root: s3://no-such-bucket/x: cannot list it")
    assert err.count("\n") == 1


def test_the_view_holds_placeholders_and_index_files_current_with_the_store(store, synth):
    from sa2va_shards.build.inputs import reader_and_inputs

    local_root = synth("coco", n_items=6, seed=7)
    url = _upload(store, local_root, "raw/coco_view")
    cfg = _config("view", "coco", url, "out", {}).reader
    with reader_and_inputs(cfg) as (reader, files):
        view = reader.root
    index, image = "annotations/instances.json", "images/000000000002.jpg"
    size = (local_root / image).stat().st_size
    assert (Path(view) / index).read_bytes() == (local_root / index).read_bytes()
    assert (Path(view) / image).read_bytes() == bytes(size)  # a placeholder: never downloaded
    etag = store.info(f"bucket/raw/coco_view/{image}")["ETag"]
    assert files.identity(image) == f"{size}\0{etag}"
    assert files.identity("images/not-there.jpg") == "missing"
    assert files.table.keys() == {p.relative_to(local_root).as_posix()
                                  for p in local_root.rglob("*") if p.is_file()}

    staged_at = (Path(view) / index).stat().st_mtime_ns
    with reader_and_inputs(cfg):
        pass
    assert (Path(view) / index).stat().st_mtime_ns == staged_at  # its ETag held: kept
    store.pipe(f"bucket/raw/coco_view/{index}", b'{"images": []}')
    store.rm(f"bucket/raw/coco_view/{image}")
    with reader_and_inputs(cfg) as (reader, again):
        pass
    assert (Path(view) / index).read_bytes() == b'{"images": []}'
    assert not (Path(view) / image).exists() and image not in again.table
    assert again.fingerprint != files.fingerprint


def test_a_reader_that_does_not_declare_its_index_files_cannot_read_a_store(store, synth,
                                                                            monkeypatch):
    from sa2va_shards.build.inputs import reader_and_inputs
    from sa2va_shards.readers.base import BaseReader
    from sa2va_shards.readers.coco import CocoReader

    url = _upload(store, synth("coco", n_items=4, seed=9), "raw/coco_undeclared")
    monkeypatch.setattr(CocoReader, "index_files", BaseReader.index_files)
    with pytest.raises(ConfigError, match="coco cannot read a root on a store"):
        with reader_and_inputs(_config("u", "coco", url, "out", {}).reader):
            pass


def test_file_names_from_the_data_stay_inside_the_staging_folder(store, synth, tmp_path,
                                                                 monkeypatch):
    """Names that escape the image folder or the root, or that would need an object to be a
    folder, are rejected as on disk and never written outside a job's own folder."""
    local_root = Path(shutil.copytree(synth("coco", n_items=6, seed=10), tmp_path / "raw"))
    index = local_root / "annotations" / "instances.json"
    doc = json.loads(index.read_text())
    for img, name in zip(doc["images"], ["../annotations/instances.json",
                                         "../../../../outside.jpg",
                                         f"{doc['images'][3]['file_name']}/inner.jpg"],
                         strict=False):
        img["file_name"] = name
    index.write_text(json.dumps(doc))
    url = _upload(store, local_root, "raw/coco_hostile")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    # one shard: `<image 4>/inner.jpg` is staged next to image 4 itself
    local = run_build(_config("hostile", "coco", str(local_root), tmp_path / "a", {}, 64),
                      runner="serial", progress=False)
    remote = run_build(_config("hostile", "coco", url, tmp_path / "b", {}, 64),
                       runner="serial", progress=False)
    assert remote.built_shards == 1
    rejects = _rows(remote.build_dir, "rejects.parquet")
    assert len(rejects) == 3 and rejects == _rows(local.build_dir, "rejects.parquet")
    assert _tars(remote.build_dir) == _tars(local.build_dir)
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize("path,staged_as", [
    ("images/a.jpg", "images/a.jpg"), ("images/./b/../a.jpg", "images/a.jpg"),
    ("images/../../x.jpg", None), ("../x.jpg", None), ("/data/x.jpg", None), (".", None),
    ("images/..", None)])
def test_only_paths_under_the_root_are_staged(path, staged_as):
    from sa2va_shards.build.inputs import _under_root

    assert _under_root(path) == staged_as


def test_an_object_is_known_by_its_size_and_etag_or_the_stores_checksum():
    from sa2va_shards.stores import object_identity

    s3 = {"name": "b/k", "size": 5, "ETag": '"abc"', "LastModified": "today"}
    assert object_identity(s3) == object_identity({**s3, "LastModified": "later"})
    assert object_identity(s3) == '5\0"abc"' != object_identity({**s3, "ETag": '"abd"'})
    assert object_identity({"size": 5, "md5Hash": "xyz", "etag": None}) == "5\0xyz"
    plain = {"name": "b/k", "size": 5, "mtime": 1.0}  # no checksum: the whole entry
    assert object_identity(plain) == object_identity(dict(plain))
    assert object_identity(plain) != object_identity({**plain, "mtime": 2.0})


def test_another_build_of_the_root_waits_while_one_indexes(store, synth):
    """The view is one folder per root on a machine: while one build indexes from it,
    another build's refresh (which may replace an index file) waits for it."""
    import threading

    from sa2va_shards.build.inputs import reader_and_inputs

    url = _upload(store, synth("coco", n_items=4, seed=11), "raw/coco_two")
    cfg = _config("two", "coco", url, "out", {}).reader
    entered = threading.Event()

    def second():
        with reader_and_inputs(cfg):
            entered.set()

    with reader_and_inputs(cfg) as (reader, _):
        other = threading.Thread(target=second)
        other.start()
        assert not entered.wait(1.0)  # held while this build indexes
        first = reader.list_items()
    other.join(30)
    assert entered.is_set() and first
