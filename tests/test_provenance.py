"""The version id pins every byte: code and codecs, input files, reproducible synth inputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sa2va_shards
from sa2va_shards.build.provenance import code_fingerprint, files_fingerprint
from sa2va_shards.build.run import run_build
from sa2va_shards.errors import ConfigError
from sa2va_shards.manifest import SHARD_SCHEMA
from sa2va_shards.synth import synth_dataset
from sa2va_shards.verify import verify_build
from sa2va_shards.versions import list_versions
from tests.helpers import make_config

PACKAGE = Path(sa2va_shards.__file__).parent


def _package_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "pkg"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_code_fingerprint_follows_the_byte_deciding_source(tmp_path):
    copy = _package_copy(tmp_path)
    base = code_fingerprint(copy)
    assert base == code_fingerprint(copy) and len(base["id"]) == 16
    assert base["libraries"]["pillow"] and base["libraries"]["libjpeg"]
    image = copy / "ops" / "image.py"
    image.write_text(image.read_text().replace("quality", "quality ", 1))  # any edit
    assert code_fingerprint(copy)["id"] != base["id"]
    image.write_text((PACKAGE / "ops" / "image.py").read_text())
    # the loader, the progress bar and the runners decide no shard byte
    for name in ("loader/dataset.py", "build/progress.py", "build/runners.py"):
        (copy / name).write_text("# edited\n")
    assert code_fingerprint(copy)["id"] == base["id"]
    transform = copy / "build" / "transform.py"
    transform.write_text(transform.read_text() + "\n")
    assert code_fingerprint(copy)["id"] != base["id"]


def test_files_fingerprint_sees_size_time_and_content(tmp_path):
    root = tmp_path / "raw"
    (root / "a").mkdir(parents=True)
    f = root / "a" / "x.bin"
    f.write_bytes(b"1234")
    stat0, content0 = files_fingerprint(root), files_fingerprint(root, "content")
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert files_fingerprint(root) != stat0  # touched
    assert files_fingerprint(root, "content") == content0  # same bytes
    f.write_bytes(b"1235")  # same size, other bytes
    assert files_fingerprint(root, "content") != content0
    (root / "b.txt").write_text("new")
    assert files_fingerprint(root, "content") not in (content0,)


@pytest.fixture(scope="module")
def sav_raw(tmp_path_factory):
    return synth_dataset("sav", tmp_path_factory.mktemp("prov_sav"), n_items=2, seed=1)


def test_sav_synth_is_byte_reproducible(sav_raw, tmp_path):
    again = synth_dataset("sav", tmp_path / "again", n_items=2, seed=1)
    for mp4 in sorted(sav_raw.rglob("*.mp4")):
        twin = again / mp4.relative_to(sav_raw)
        assert hashlib.sha256(mp4.read_bytes()).digest() == hashlib.sha256(
            twin.read_bytes()).digest(), mp4.name


def test_a_same_size_change_of_a_video_is_a_new_version(sav_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(sav_raw, raw)
    cfg = make_config(raw, tmp_path / "out", fmt="sav", dataset="prov")
    first = run_build(cfg, runner="serial", progress=False)
    mp4 = sorted(raw.rglob("*.mp4"))[0]
    data = bytearray(mp4.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes (the index sees no change)
    mp4.write_bytes(bytes(data))
    second = run_build(cfg, runner="serial", progress=False)
    assert not second.reused and second.version != first.version
    # the location keys are never reported as changes; the file fingerprint is in the card
    rows = {r["version"]: r for r in list_versions(tmp_path / "out" / "prov")}
    assert "reader.root" not in rows[second.version]["config_changes"]
    card = json.loads((second.build_dir / "dataset.json").read_text())
    assert card["files_fingerprint"] != json.loads(
        (first.build_dir / "dataset.json").read_text())["files_fingerprint"]


@pytest.fixture(scope="module")
def coco(synth):
    return synth("coco", n_items=6, seed=9)


def test_other_code_is_another_version_and_never_mixed(coco, tmp_path, monkeypatch):
    cfg = make_config(coco, tmp_path, dataset="code", shards={"samples_per_shard": 2})
    first = run_build(cfg, runner="serial", progress=False)
    import sa2va_shards.build.provenance as provenance_mod
    import sa2va_shards.build.run as build_mod
    import sa2va_shards.build.writer as writer_mod

    # the same config and data under other code: a new version, not "already built", and no
    # shard taken from the store (the recipe keys hold the code too)
    for mod in (build_mod, writer_mod, provenance_mod):
        monkeypatch.setattr(mod, "code_id", lambda: "feedfacefeedface")
    other = run_build(cfg, runner="serial", progress=False)
    assert not other.reused and other.version != first.version
    assert other.reused_shards == 0 and other.built_shards == first.built_shards
    # a worker running other code than the driver: refused before anything is committed
    monkeypatch.setattr(writer_mod, "code_id", lambda: "0123456789abcdef")
    with pytest.raises(ConfigError, match="written by code other than this driver"):
        run_build(dataclasses.replace(cfg, out=str(tmp_path / "mixed")), runner="serial",
                  progress=False)


def test_verify_names_shards_of_another_code(coco, tmp_path):
    cfg = make_config(coco, tmp_path, dataset="vcode", shards={"samples_per_shard": 2})
    build = run_build(cfg, runner="serial", progress=False).build_dir
    table = pq.read_table(build / "shards.parquet").to_pylist()
    table[1]["code"] = "0" * 16  # a shard copied in from a build of other code
    pq.write_table(pa.Table.from_pylist(table, schema=SHARD_SCHEMA), build / "shards.parquet")
    card = json.loads((build / "dataset.json").read_text())
    card["manifests"]["shards.parquet"] = hashlib.sha256(
        (build / "shards.parquet").read_bytes()).hexdigest()  # the forged card agrees
    (build / "dataset.json").write_text(json.dumps(card))
    problems = verify_build(build, deep=False).problems
    assert len(problems) == 1 and table[1]["file"] in problems[0]
    assert "written by code" in problems[0]
