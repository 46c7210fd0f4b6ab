"""Incremental builds: a stable plan, per-shard recipe keys, the shard store, gc and lineage.

Reuse must happen exactly when a shard's recipe is unchanged: a grown set computes only the
shards its new inputs fall in and ends byte-identical to a build from scratch; a changed input
file recomputes its shard; a changed config recomputes everything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from sa2va_shards.build import process_shard, run_build
from sa2va_shards.build.plan import plan_shards, shard_bounds
from sa2va_shards.build.store import STORE, collect_garbage, store_lock
from sa2va_shards.errors import ConfigError, SampleError
from sa2va_shards.manifest import file_sha256, read_card
from sa2va_shards.readers import get_reader
from sa2va_shards.readers.coco import CocoReader
from sa2va_shards.records import ItemRef
from sa2va_shards.synth import synth_dataset
from sa2va_shards.verify import verify_build
from sa2va_shards.versions import list_versions
from tests.helpers import make_config

TABLES = ("samples.parquet", "shards.parquet", "rejects.parquet")


# -- the plan -------------------------------------------------------------------------------

def _groups(ids: list[str], per_shard: int) -> list[tuple[str, ...]]:
    plans, _ = plan_shards([ItemRef(source_id=i) for i in ids], dataset="d",
                           samples_per_shard=per_shard)
    return [tuple(i.source_id for i in p.items) for p in plans]


@pytest.mark.parametrize("per_shard", [1, 2, 8, 64])
def test_an_insertion_changes_only_the_shard_it_falls_in(per_shard):
    rng = random.Random(per_shard)
    ids = sorted(f"{rng.getrandbits(40):012x}" for _ in range(40 * per_shard))
    low, high, _ = shard_bounds(per_shard)
    for _ in range(20):
        new = f"{rng.getrandbits(40):012x}"
        before, after = _groups(ids, per_shard), _groups(sorted([*ids, new]), per_shard)
        # every shard but the one holding the new id (maybe split in two, or merged with the
        # next when it was cut at its end) is the same run of ids
        assert len(set(after) - set(before)) <= 2 and len(set(before) - set(after)) <= 2
        assert all(low <= len(g) <= high for g in after[:-1]) and len(after[-1]) <= high
    assert sum(map(len, before)) / len(before) == pytest.approx(per_shard, rel=0.25)


# -- reuse ------------------------------------------------------------------------------------

@pytest.fixture()
def raw(synth, tmp_path):
    """A private COCO set (the tests edit it): 30 images, three of them bad."""
    src = synth("coco", n_items=30, seed=11, faults=("corrupt_image", "missing_image", "bad_rle"))
    return Path(shutil.copytree(src, tmp_path / "raw"))


def _keep_images(raw: Path, drop: set[int]) -> str:
    """Rewrite instances.json without the images `drop` (and their annotations); returns the
    full document's text, to grow the set back."""
    path = raw / "annotations" / "instances.json"
    text = path.read_text()
    doc = json.loads(text)
    doc["images"] = [i for i in doc["images"] if i["id"] not in drop]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] not in drop]
    path.write_text(json.dumps(doc))
    return text


def _counting(calls: list[str]):
    def shard_fn(plan, cfg, *, build_dir):
        calls.append(plan.name)
        return process_shard(plan, cfg, build_dir=build_dir)
    return shard_fn


def _plan(cfg) -> dict[str, tuple[str, ...]]:
    plans, _ = plan_shards(get_reader(cfg.reader).list_items(), dataset=cfg.dataset,
                           samples_per_shard=cfg.shards.samples_per_shard)
    return {p.name: tuple(i.source_id for i in p.items) for p in plans}


def _build(cfg, calls: list[str] | None = None):
    return run_build(cfg, runner="serial", progress=False,
                     shard_fn=_counting([] if calls is None else calls))


def test_a_grown_set_computes_only_new_shards_and_equals_a_build_from_scratch(raw, tmp_path):
    cfg = make_config(raw, tmp_path / "out", shards={"samples_per_shard": 4})
    ids = sorted(i["id"] for i in json.loads(
        (raw / "annotations" / "instances.json").read_text())["images"])
    full = _keep_images(raw, {ids[4], ids[13], ids[14], ids[-1]})  # new ids inside and at the end
    old_plan = _plan(cfg)
    first = _build(cfg)
    (raw / "annotations" / "instances.json").write_text(full)
    new_plan, calls = _plan(cfg), []
    grown = _build(cfg, calls)

    expected = {name for name, group in new_plan.items() if group not in old_plan.values()}
    assert sorted(calls) == sorted(expected) and 0 < len(expected) < len(new_plan)
    assert grown.built_shards == len(expected)
    assert grown.reused_shards == len(new_plan) - len(expected)
    scratch = run_build(dataclasses.replace(cfg, out=str(tmp_path / "scratch")),
                        runner="serial", progress=False)
    assert scratch.version == grown.version
    tars = sorted(p.name for p in (scratch.build_dir / "shards").iterdir())
    assert tars == sorted(p.name for p in (grown.build_dir / "shards").iterdir())
    for name in [f"shards/{t}" for t in tars] + list(TABLES):
        assert file_sha256(grown.build_dir / name) == file_sha256(scratch.build_dir / name), name
    assert verify_build(grown.build_dir).ok

    # the versions share the reused shards: one inode, also the store object's
    old_inodes = {os.stat(p).st_ino for p in (first.build_dir / "shards").iterdir()}
    reused = [n for n in new_plan if n not in expected]
    assert all(os.stat(grown.build_dir / "shards" / n).st_ino in old_inodes for n in reused)
    keys = read_card(grown.build_dir)["shard_keys"]
    for name in new_plan:
        store_object = tmp_path / "out" / cfg.dataset / STORE / f"{keys[name]}.tar"
        assert os.path.samefile(store_object, grown.build_dir / "shards" / name)


def test_a_changed_input_file_recomputes_only_its_shard(raw, tmp_path):
    cfg = make_config(raw, tmp_path / "out", shards={"samples_per_shard": 4})
    first = _build(cfg)
    image = raw / "images" / "000000000007.jpg"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # touched
    calls: list[str] = []
    second = _build(cfg, calls)
    holder = next(n for n, g in _plan(cfg).items() if "000000000007" in g)
    assert calls == [holder] and second.reused_shards == first.built_shards - 1


def test_content_fingerprint_sees_new_bytes_behind_the_same_size_and_time(raw, tmp_path):
    cfg = make_config(raw, tmp_path / "out", shards={"samples_per_shard": 4},
                      reader={"format": "coco", "root": str(raw), "fingerprint": "content"})
    _build(cfg)
    image = raw / "images" / "000000000007.jpg"
    st, data = image.stat(), bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes (another scan line of JPEG data)
    image.write_bytes(bytes(data))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))  # same time: `stat` cannot tell
    calls: list[str] = []
    _build(cfg, calls)
    assert calls == [next(n for n, g in _plan(cfg).items() if "000000000007" in g)]


def test_a_config_change_recomputes_every_shard(raw, tmp_path):
    cfg = make_config(raw, tmp_path / "out", shards={"samples_per_shard": 4})
    first = _build(cfg)
    other = dataclasses.replace(cfg, image=dataclasses.replace(cfg.image, jpeg_quality=90))
    calls: list[str] = []
    second = _build(other, calls)
    assert second.reused_shards == 0 and len(calls) == first.built_shards


def test_a_reader_without_item_files_reuses_only_while_no_file_under_the_root_changes(
        raw, tmp_path, monkeypatch):
    cfg = make_config(raw, tmp_path / "out", shards={"samples_per_shard": 4})
    first = _build(cfg)
    (raw / "notes.txt").write_text("a file no item reads")
    # with the reader's hook a file no item reads changes the version, not its shards
    assert _build(cfg).reused_shards == first.built_shards
    monkeypatch.delattr(CocoReader, "item_files")
    (raw / "notes.txt").write_text("changed")
    calls: list[str] = []
    third = _build(cfg, calls)
    assert third.reused_shards == 0 and len(calls) == first.built_shards


def test_a_damaged_store_object_is_recomputed_not_reused(raw, tmp_path):
    cfg = make_config(raw, tmp_path / "out", shards={"samples_per_shard": 4})
    first = _build(cfg)
    keys = read_card(first.build_dir)["shard_keys"]
    name = sorted(keys)[0]
    store_object = tmp_path / "out" / cfg.dataset / STORE / f"{keys[name]}.tar"
    store_object.write_bytes(store_object.read_bytes()[:-10] + b"corrupted!")
    (raw / "notes.txt").write_text("a new version of the same shards")
    calls: list[str] = []
    second = _build(cfg, calls)
    assert calls == [name] and verify_build(second.build_dir).ok


# -- the readers' item_files hooks --------------------------------------------------------------

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, Path)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # records only while a test sets _OPENED


@pytest.mark.parametrize("fmt,options", [
    ("coco", {}), ("refcoco", {}), ("osprey", {}), ("describe_anything", {}), ("mevis", {}),
    ("sav", {"layout": "frames"}), ("sav", {"layout": "png"}), ("sav", {}),
    ("gcg", {"file": "GranDf_HA_GCG_train.json"}), ("gcg", {"file": "flickr_mergedGT_GCG_train"}),
    ("gcg", {"file": "RefCOCOg_GCG_train.json"}), ("llava", {}), ("chatunivi", {})])
def test_load_opens_only_the_files_item_files_names(fmt, options, tmp_path, monkeypatch):
    global _OPENED
    import av

    real_open = av.open

    def seen_open(file, *args, **kwargs):  # PyAV opens in C: the audit hook cannot see it
        if _OPENED is not None and isinstance(file, (str, Path)):
            _OPENED.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", seen_open)
    root = synth_dataset(fmt, tmp_path / fmt, n_items=6, seed=2)
    reader = get_reader(make_config(root, tmp_path, reader={
        "format": fmt, "root": str(root), "options": options}).reader)
    items = [i for i in reader.list_items() if "_bad_item" not in i.data]
    assert items
    real = Path(root).resolve()
    for item in items:
        named = {(real / p).resolve() for p in reader.item_files(item)}
        _OPENED = []
        try:
            reader.load(item)
        except SampleError:
            pass
        finally:
            opened, _OPENED = _OPENED, None
        data_files = {q for q in (Path(p).resolve() for p in opened) if q.is_relative_to(real)}
        assert data_files <= named, (item.source_id, data_files - named)
        assert data_files or not named  # only a pure-text row reads no file


# -- gc -----------------------------------------------------------------------------------------

def _three_versions(raw: Path, tmp_path: Path):
    cfg = make_config(raw, tmp_path / "out", shards={"samples_per_shard": 4})
    ids = sorted(i["id"] for i in json.loads(
        (raw / "annotations" / "instances.json").read_text())["images"])
    full = _keep_images(raw, set(ids[10:]))
    builds = [_build(cfg)]
    path = raw / "annotations" / "instances.json"
    path.write_text(full)
    _keep_images(raw, set(ids[20:]))
    builds.append(_build(cfg))
    path.write_text(full)
    builds.append(_build(cfg))
    return cfg, builds


def _store_keys(dataset_dir: Path) -> set[str]:
    return {p.name.split(".")[0] for p in (dataset_dir / STORE).iterdir()}


def test_gc_keeps_latest_and_the_named_versions_and_frees_the_rest(raw, tmp_path):
    cfg, (a, b, c) = _three_versions(raw, tmp_path)
    dataset_dir = tmp_path / "out" / cfg.dataset
    before = sorted(p.relative_to(dataset_dir) for p in dataset_dir.rglob("*"))
    dry = collect_garbage(dataset_dir, keep_last=0, keep=[a.version[:6]], dry_run=True)
    assert sorted(p.relative_to(dataset_dir) for p in dataset_dir.rglob("*")) == before
    assert dry.removed_versions == [b.version] and dry.freed_bytes > 0

    report = collect_garbage(dataset_dir, keep_last=0, keep=[a.version[:6]])
    assert report == dataclasses.replace(dry, dry_run=False)
    assert not (dataset_dir / b.version).exists()
    kept_keys = {k for v in (a, c) for k in read_card(v.build_dir)["shard_keys"].values()}
    assert _store_keys(dataset_dir) == kept_keys  # nothing only b used, nothing kept lost
    assert all(verify_build(v.build_dir).ok for v in (a, c))

    (dataset_dir / "notes").mkdir()  # not a version: never gc's
    crashed = dataset_dir / ("v" + "0" * 12)
    (crashed / "shards").mkdir(parents=True)  # a crashed build: no card
    last = collect_garbage(dataset_dir, keep_last=1)
    assert sorted(last.removed_versions) == sorted([a.version, crashed.name])
    assert (dataset_dir / c.version).exists() and (dataset_dir / "notes").is_dir()
    assert _store_keys(dataset_dir) == set(read_card(c.build_dir)["shard_keys"].values())
    assert verify_build(c.build_dir).ok
    # what is left rebuilds nothing
    calls: list[str] = []
    assert _build(cfg, calls).reused and not calls


def test_gc_frees_exactly_the_bytes_no_kept_version_links(raw, tmp_path):
    cfg, (a, b, c) = _three_versions(raw, tmp_path)
    dataset_dir = tmp_path / "out" / cfg.dataset

    def used() -> int:
        return sum(size for size in {(s.st_dev, s.st_ino): s.st_size for s in
                                     (p.lstat() for p in dataset_dir.rglob("*")
                                      if p.is_file())}.values())

    before = used()
    report = collect_garbage(dataset_dir, keep_last=1)
    # lock files are the only files gc leaves that it did not count (empty)
    assert before - used() == report.freed_bytes > 0


def test_gc_refuses_while_a_build_runs(raw, tmp_path):
    cfg, _ = _three_versions(raw, tmp_path)
    dataset_dir = tmp_path / "out" / cfg.dataset
    with store_lock(dataset_dir, exclusive=False), \
            pytest.raises(ConfigError, match="a build of this dataset is running"):
        collect_garbage(dataset_dir, keep_last=0)
    assert len(list_versions(dataset_dir)) == 3


# -- lineage ------------------------------------------------------------------------------------

def test_parent_is_the_version_whose_recipe_this_one_changes(raw, tmp_path):
    cfg = make_config(raw, tmp_path / "out", shards={"samples_per_shard": 4})
    ids = sorted(i["id"] for i in json.loads(
        (raw / "annotations" / "instances.json").read_text())["images"])
    full = _keep_images(raw, {ids[-1]})
    v1 = _build(cfg)
    v2 = _build(dataclasses.replace(cfg, image=dataclasses.replace(cfg.image, jpeg_quality=90)))
    (raw / "annotations" / "instances.json").write_text(full)
    v3 = _build(cfg)  # `latest` was v2, of another config: v3 derives from v1
    moved = Path(shutil.copytree(raw, tmp_path / "moved", copy_function=shutil.copy2))
    Image.open(moved / "images" / "000000000001.jpg").save(moved / "images" / "000000000001.jpg")
    v4 = _build(dataclasses.replace(cfg, reader=dataclasses.replace(cfg.reader, root=str(moved))))
    rows = {r["version"]: r for r in list_versions(tmp_path / "out" / cfg.dataset)}
    assert rows[v1.version]["parent"] is None
    assert rows[v2.version]["parent"] == v1.version
    assert rows[v2.version]["config_changes"] == {"image.jpeg_quality": [95, 90]}
    assert rows[v3.version]["parent"] == v1.version and rows[v3.version]["config_changes"] == {}
    # another root is where the data lives, not what is built: no change shown
    assert rows[v4.version]["parent"] == v3.version and rows[v4.version]["config_changes"] == {}


def test_gc_verb_says_what_it_would_free_and_then_frees_it(raw, tmp_path, capsys):
    from sa2va_shards.cli import main

    cfg, (a, b, c) = _three_versions(raw, tmp_path)
    dataset = str(tmp_path / "out" / cfg.dataset)
    assert main(["gc", dataset, "--keep-last", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove {a.version}" in out and a.build_dir.exists()
    assert main(["gc", dataset, "--keep-last", "2"]) == 0
    out = capsys.readouterr().out
    assert f"removed {a.version}" in out and "freed" in out and not a.build_dir.exists()
    assert b.build_dir.exists() and c.build_dir.exists()
