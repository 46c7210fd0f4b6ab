"""Hostile conditions around a build (issue 10, classes 5-8): FIFOs where files should be,
tampered manifests and shards read back, crashes inside the commit, concurrent builds, and
setup faults that must end in one clean error line."""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import signal
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sa2va_shards.build.run as build_mod
from sa2va_shards.build.run import run_build
from sa2va_shards.cli import main
from sa2va_shards.errors import ConfigError
from sa2va_shards.loader import LoaderConfig, ShardDataset
from sa2va_shards.loader.stream import CorruptDataError, TarStream
from sa2va_shards.manifest import file_sha256
from sa2va_shards.verify import verify_build
from sa2va_shards.versions import read_latest
from tests.helpers import make_config

LIGHT = LoaderConfig(gt_masks="none", shuffle=False)


@pytest.fixture(scope="module")
def raw(synth):
    return synth("coco", n_items=8, seed=11)


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
    cfg = make_config(raw, tmp_path_factory.mktemp("hb"), dataset="hb",
                      shards={"samples_per_shard": 3})
    return run_build(cfg, runner="serial", progress=False).build_dir


@pytest.fixture
def copy(built, tmp_path):
    shutil.copytree(built.parent, tmp_path / "hb")
    return tmp_path / "hb" / built.name


@pytest.fixture
def no_hang():
    """Fail instead of hanging the suite when something opens a FIFO."""
    def hang(*_):
        raise TimeoutError("blocked on a FIFO")
    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _edit_table(path: Path, edit) -> None:
    rows = pq.read_table(path).to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)


def _recard(build: Path) -> None:
    """Re-record the tables' hashes in the card, as a careful forger would."""
    card = json.loads((build / "dataset.json").read_text())
    card["manifests"] = {n: file_sha256(build / n) for n in card["manifests"]}
    (build / "dataset.json").write_text(json.dumps(card))


# --- class 6: verify covers every file ------------------------------------------------------

def _k_plus_one(rows):
    rows[0]["k"] = [v + 1 for v in rows[0]["k"]]


def _rename_source(rows):
    rows[0]["source_id"] = "someone_else"


def _extra_reject(rows):
    rows.append({**rows[0], "source_id": "phantom"} if rows else {
        "source_id": "phantom", "level": "sample", "object_id": "", "stage": "read",
        "reason": "missing_image", "detail": "", "shard": ""})


def _other_hash(rows):
    rows[0]["sha256"] = "0" * 64


EDITS = {
    "samples_k": ("samples.parquet", _k_plus_one),
    "samples_source_id": ("samples.parquet", _rename_source),
    "samples_hash": ("samples.parquet", _other_hash),
    "rejects_extra_row": ("rejects.parquet", _extra_reject),
    "shards_hash": ("shards.parquet", _other_hash),
}


@pytest.mark.parametrize("name", sorted(EDITS))
@pytest.mark.parametrize("forged_card", [False, True])
def test_verify_catches_an_edited_table_even_with_a_forged_card(copy, name, forged_card):
    assert verify_build(copy).ok
    table, edit = EDITS[name]
    _edit_table(copy / table, edit)
    if forged_card:
        _recard(copy)
    report = verify_build(copy, deep=False)
    assert not report.ok, name
    if not forged_card:
        assert any(f"{table}: sha256 differs" in p for p in report.problems)


@pytest.mark.parametrize("damage", ["missing", "garbage", "fifo"])
@pytest.mark.parametrize("what", ["samples.parquet", "dataset.json"])
def test_verify_reports_missing_or_garbage_manifests_without_a_traceback(copy, damage, what,
                                                                           no_hang, capsys):
    path = copy / what
    path.unlink()
    if damage == "garbage":
        path.write_bytes(b"\x00garbage{")
    elif damage == "fifo":
        os.mkfifo(path)
    assert main(["verify", str(copy), "--shallow"]) == 1
    out = capsys.readouterr().out
    assert what in out and "Traceback" not in out


# --- class 6: the loader checks what it streams ---------------------------------------------

def _flip_jpeg_byte(tar_path: Path) -> str:
    with tarfile.open(tar_path) as tar:
        m = next(m for m in tar if m.name.endswith(".jpg"))
    data = bytearray(tar_path.read_bytes())
    data[m.offset_data + m.size // 2] ^= 0x10  # inside the JPEG's entropy-coded data
    tar_path.write_bytes(bytes(data))
    return m.name.split(".")[0]


def test_a_bit_flip_in_a_shard_is_refused_and_counted_by_the_loader(copy):
    shard = sorted((copy / "shards").glob("*.tar"))[0]
    key = _flip_jpeg_byte(shard)
    ds = ShardDataset(copy, LIGHT)
    with pytest.warns(UserWarning, match="sample_mismatch"):
        keys = [s["__key__"] for s in ds]
    assert key not in keys  # garbage is never served
    assert len(keys) == len(pq.read_table(copy / "samples.parquet")) - 1
    assert ds.stats == {"sample_mismatch": 1, "shard_mismatch": 1}


def test_without_sample_verification_a_flip_is_still_counted_at_the_shard_end(copy):
    shard = sorted((copy / "shards").glob("*.tar"))[0]
    key = _flip_jpeg_byte(shard)
    reports: list[tuple[str, str]] = []
    stream = TarStream([str(shard)], owned={str(shard)}, wanted=lambda s: True,
                       expected={}, strict=False, report=lambda r, d: reports.append((r, d)),
                       verify_samples=False)
    keys = [s["__key__"] for s in stream]
    assert key in keys and len(keys) == 3  # served: only the whole shard's hash can tell
    assert [r for r, _ in reports] == ["shard_mismatch"]


def test_the_loader_reports_tables_that_differ_from_the_card(copy):
    _edit_table(copy / "samples.parquet", _k_plus_one)
    ds = ShardDataset(copy, LIGHT)
    with pytest.warns(UserWarning, match="manifest_mismatch"):
        list(ds)
    assert ds.stats["manifest_mismatch"] == 1
    with pytest.raises(CorruptDataError, match="manifest_mismatch"):
        list(ShardDataset(copy, LoaderConfig(gt_masks="none", strict=True)))


def test_strict_mode_raises_on_a_changed_sample(copy):
    _flip_jpeg_byte(sorted((copy / "shards").glob("*.tar"))[0])
    with pytest.raises(CorruptDataError, match="sample_mismatch"):
        list(ShardDataset(copy, LoaderConfig(gt_masks="none", shuffle=False, strict=True)))


def test_an_appended_sample_is_never_served(copy):
    shard = sorted((copy / "shards").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    key = members[0][0].split(".")[0]
    with tarfile.open(shard, "a") as tar:  # the 4th sample of a 3-sample shard
        for name, data in members:
            if name.startswith(key + "."):
                info = tarfile.TarInfo(name.replace(key, "appended", 1))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    ds = ShardDataset(copy, LIGHT)
    with pytest.warns(UserWarning):
        keys = [s["__key__"] for s in ds]
    assert "appended" not in keys
    assert len(keys) == len(pq.read_table(copy / "samples.parquet"))
    assert ds.stats["sample_mismatch"] == 1 and ds.stats["shard_mismatch"] == 1


# --- class 5: FIFOs ---------------------------------------------------------------------------

def test_a_fifo_in_place_of_a_shard_hangs_neither_loader_nor_verify(copy, no_hang):
    shard = sorted((copy / "shards").glob("*.tar"))[1]
    shard.unlink()
    os.mkfifo(shard)
    ds = ShardDataset(copy, LIGHT)
    with pytest.warns(UserWarning, match="not_a_file"):
        keys = [s["__key__"] for s in ds]
    assert ds.stats["not_a_file"] == 1 and len(keys) > 0
    assert any(shard.name in p for p in verify_build(copy, deep=False).problems)


def test_a_fifo_shard_left_by_a_crash_is_rebuilt_on_resume(raw, tmp_path, no_hang, monkeypatch):
    cfg = make_config(raw, tmp_path / "out", dataset="hb", shards={"samples_per_shard": 3})
    first = run_build(cfg, runner="serial", progress=False).build_dir
    shutil.rmtree(tmp_path / "out")
    real = build_mod.write_tables

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod, "write_tables", crash)
    with pytest.raises(KeyboardInterrupt):
        run_build(cfg, runner="serial", progress=False)
    monkeypatch.setattr(build_mod, "write_tables", real)
    shard = sorted((first / "shards").glob("*.tar"))[0]
    shard.unlink()
    os.mkfifo(shard)
    result = run_build(cfg, runner="serial", progress=False)
    n = len(list((first / "shards").glob("*.tar")))
    # the FIFO is replaced (from the store, where the crashed run had put the shard)
    assert result.resumed_shards == n - 1 and result.reused_shards + result.built_shards == 1
    assert verify_build(result.build_dir).ok


def test_a_fifo_config_or_latest_pointer_is_a_clean_error(copy, tmp_path, no_hang, capsys):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    assert main(["build", str(fifo)]) == 2
    assert "not a regular file" in capsys.readouterr().err
    latest = copy.parent / "latest"
    latest.unlink()
    os.mkfifo(latest)
    with pytest.raises(ConfigError):
        read_latest(copy.parent)


# --- class 7: commit protocol ----------------------------------------------------------------

def test_a_crash_between_the_card_and_latest_is_repaired_by_the_rerun(raw, tmp_path,
                                                                        monkeypatch):
    cfg = make_config(raw, tmp_path / "out", dataset="hb", shards={"samples_per_shard": 3})
    old = make_config(raw, tmp_path / "out", dataset="hb", shards={"samples_per_shard": 4})
    previous = run_build(old, runner="serial", progress=False)
    calls = []

    def crash(*a, **k):
        calls.append(a)
        raise KeyboardInterrupt  # the process dies right after dataset.json

    monkeypatch.setattr(build_mod, "set_latest", crash)
    with pytest.raises(KeyboardInterrupt):
        run_build(cfg, runner="serial", progress=False)
    monkeypatch.undo()
    assert read_latest(tmp_path / "out" / "hb") == previous.version
    again = run_build(cfg, runner="serial", progress=False)
    assert again.reused and read_latest(tmp_path / "out" / "hb") == again.version
    assert not (again.build_dir / build_mod.COMMITTING).exists()
    assert verify_build(again.build_dir).ok


def test_a_second_build_of_the_same_version_is_refused_while_one_runs(raw, tmp_path):
    cfg = make_config(raw, tmp_path / "out", dataset="hb", shards={"samples_per_shard": 3})
    version = run_build(cfg, runner="serial", progress=False).version
    lock = tmp_path / "out" / "hb" / f".{version}.lock"
    with open(lock, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a build in progress
        with pytest.raises(ConfigError, match="another build of this version is running"):
            run_build(cfg, runner="serial", progress=False)
    assert run_build(cfg, runner="serial", progress=False).reused  # released: fine again


def test_builds_of_two_configs_commit_latest_through_their_own_temp_files(copy):
    from sa2va_shards.versions import set_latest

    set_latest(copy.parent, "v1")
    set_latest(copy.parent, "v2")
    assert read_latest(copy.parent) == "v2"
    assert not list(copy.parent.glob(".latest*.tmp"))


# --- class 8: setup faults are one clean line ------------------------------------------------

def _config_file(tmp_path: Path, raw: Path, **extra) -> Path:
    doc = {"dataset": "hb", "reader": {"format": "coco", "root": str(raw)},
           "out": str(tmp_path / "out"), **extra}
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("extra, message", [
    ({"vision": {"patch_size": 0}}, "vision.patch_size: 0 must be >= 1"),
    ({"vision": {"downsample_ratio": -0.5}}, "downsample_ratio"),
    ({"image": {"size": 0}}, "image.size"),
    ({"image": {"max_pixels": 0}}, "image.max_pixels"),
    ({"shards": {"max_consecutive_failures": 0}}, "max_consecutive_failures"),
    ({"out": "FILE"}, "is not a folder"),
    ({"out": "FILE/below"}, "is not a folder"),
])
def test_setup_faults_end_in_one_clean_error_line(raw, tmp_path, capsys, extra, message):
    (tmp_path / "FILE").write_text("x")
    if "out" in extra:
        extra = {"out": str(tmp_path / extra["out"])}
    assert main(["build", str(_config_file(tmp_path, raw, **extra)), "--serial"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("verb", ["diff", "versions"])
def test_diff_and_versions_on_garbage_cards_are_clean_errors(copy, capsys, verb):
    (copy / "dataset.json").write_text("{not json")
    argv = ["diff", str(copy), str(copy)] if verb == "diff" else ["versions", str(copy.parent)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "dataset.json" in err and len(err.splitlines()) == 1


def test_a_missing_manifest_is_a_clean_loader_error(copy):
    (copy / "shards.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(ConfigError, match="shards.parquet"):
        ShardDataset(copy, LIGHT)


def test_file_urls_are_checked_like_paths(copy):
    shard = sorted((copy / "shards").glob("*.tar"))[0]
    key = _flip_jpeg_byte(shard)
    reports: list[str] = []
    for url in (f"file://{shard}", f"file:{shard}"):
        stream = TarStream([url], owned={url}, wanted=lambda s: True, expected={},
                           strict=False, report=lambda r, d: reports.append(r))
        assert key not in [s["__key__"] for s in stream]
    assert reports == ["sample_mismatch", "shard_mismatch"] * 2


def test_a_card_without_readable_tables_is_reported_and_streamed_unchecked(copy):
    shards = sorted(str(p) for p in (copy / "shards").glob("*.tar"))
    (copy / "samples.parquet").unlink()
    reports: list[str] = []
    stream = TarStream(shards, owned=set(shards), wanted=lambda s: True, expected={},
                       strict=False, report=lambda r, d: reports.append(r))
    assert len(list(stream)) == 8 and reports == ["manifest_mismatch"]


def _null_k(rows):
    rows[0]["k"] = None


def _null_file(rows):
    rows[0]["file"] = None


@pytest.mark.parametrize("table, edit", [("samples.parquet", _null_k),
                                         ("shards.parquet", _null_file)])
def test_verify_reports_null_fields_in_tables_without_a_traceback(copy, table, edit):
    _edit_table(copy / table, edit)
    _recard(copy)
    report = verify_build(copy, deep=False)
    assert not report.ok


def test_verify_reports_a_table_with_other_columns(copy):
    pq.write_table(pa.table({"file": ["x"]}), copy / "shards.parquet")
    _recard(copy)
    report = verify_build(copy, deep=False)
    assert any("columns are not the schema's" in p for p in report.problems)
