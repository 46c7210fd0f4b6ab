"""Packaging promises: the library imports without Ray; `pipeline` is this project's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sa2va_shards.config import ImageConfig, VisionConfig, parse_config
from sa2va_shards.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_library_imports_without_ray():
    code = ("import sys, sa2va_shards, sa2va_shards.build.shard, sa2va_shards.cli, "
            "sa2va_shards.verify, sa2va_shards.viz; assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_readers_import_no_synth_code():
    """The synthesisers are fixtures: a build (readers, shard job) never loads them."""
    code = ("import sys, sa2va_shards.readers, sa2va_shards.build.shard; "
            "assert not [m for m in sys.modules if m.startswith('sa2va_shards.synth')]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pipeline_package_is_this_projects():
    import pipeline

    assert Path(pipeline.__file__).resolve().parent == ROOT / "pipeline"


def test_grid_and_tokens_are_derived_from_the_vision_config():
    assert (VisionConfig().grid, VisionConfig().tokens_per_image) == (16, 256)
    assert VisionConfig(image_size=448, patch_size=14, downsample_ratio=1.0).grid == 32
    assert ImageConfig().size == 1024


@pytest.mark.parametrize("data,match", [
    ({"dataset": "d", "reader": {"format": "coco", "root": "x"}, "masks": {"k_zero": "nope"}},
     "masks.k_zero: 'nope' is not one of"),
    ({"dataset": "d", "reader": {"format": "coco", "root": "x"}, "image": {"size": "big"}},
     "image.size: expected int"),
    ({"dataset": "d"}, "reader"),
    ({"dataset": "a.b", "reader": {"format": "coco", "root": "x"}}, "dataset"),
    ({"dataset": "d", "reader": {"format": "coco", "root": "x"}, "shardz": {}},
     "did you mean shards"),
])
def test_bad_configs_are_refused_with_the_key_path(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


def test_configs_in_the_repo_parse():
    from sa2va_shards.config import load_config

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)


def test_mixtures_in_the_repo_parse():
    from sa2va_shards.loader.mixture import load_mixture

    paths = sorted((ROOT / "configs" / "mixtures").glob("*.yaml"))
    assert paths
    for path in paths:
        mixture = load_mixture(path)
        assert all(s.repeat or s.weight for s in mixture.sources)


def test_relative_paths_in_a_config_file_resolve_against_its_folder(tmp_path, monkeypatch):
    from sa2va_shards.config import load_config

    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "c.yaml").write_text("dataset: d\nreader: {format: coco, root: ../raw}\n"
                                   "out: ../shards\n")
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")  # the working directory plays no part
    cfg = load_config(folder / "c.yaml")
    assert cfg.reader.root == str(tmp_path / "raw") and cfg.out == str(tmp_path / "shards")


def test_without_ray_the_library_builds_serially_and_the_loader_reads(tmp_path):
    """A loader-only training node (no Ray installed): builds run in-process under
    `--runner auto`, a Ray build says the one command that fixes it, the loader serves."""
    code = f"""
import sys
sys.modules['ray'] = None  # `import ray` now raises ImportError, as on a node without Ray
from sa2va_shards.build import make_runner, run_build
from sa2va_shards.config import parse_config
from sa2va_shards.errors import ConfigError
from sa2va_shards.loader import LoaderConfig, ShardDataset
from sa2va_shards.synth import synth_dataset

raw = synth_dataset('coco', {str(tmp_path / 'raw')!r}, n_items=6, seed=0)
cfg = parse_config({{'dataset': 'noray', 'reader': {{'format': 'coco', 'root': str(raw)}},
                     'shards': {{'samples_per_shard': 2}}, 'out': {str(tmp_path / 'out')!r}}})
result = run_build(cfg, runner='auto', progress=False)
assert result.runner == 'serial' and result.counts['written'] > 0
n = sum(1 for _ in ShardDataset(result.build_dir, LoaderConfig(gt_masks='none', shuffle=False)))
assert n == result.counts['written'], (n, result.counts)
try:
    make_runner('ray')
except ConfigError as e:
    assert "pip install 'sa2va-shards[ray]'" in str(e)
else:
    raise AssertionError('a Ray runner without Ray')
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_paths_the_docs_name_exist():
    """ARCHITECTURE.md, README.md and docs/ point only at files of this repository."""
    import re

    docs = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
    pattern = re.compile(r"`((?:src|pipeline|tests|benchmarks|configs|docs|docker)/[\w./-]+)`")
    missing = [(d.name, p) for d in docs for p in pattern.findall(d.read_text())
               if not (ROOT / p).exists()]
    assert not missing, missing


@pytest.mark.parametrize("key", ["out", "root"])
def test_store_urls_are_kept_and_file_urls_are_paths(tmp_path, key):
    data = {"dataset": "d", "reader": {"format": "coco", "root": str(tmp_path / "raw")},
            "out": str(tmp_path / "out")}
    where = data["reader"] if key == "root" else data
    where[key] = "s3://bucket/prefix"
    cfg = parse_config(data, base_dir=tmp_path)  # a URL never resolves against the folder
    assert (cfg.reader.root if key == "root" else cfg.out) == "s3://bucket/prefix"
    where[key] = f"file://{tmp_path / 'x'}"
    cfg = parse_config(data)
    assert (cfg.reader.root if key == "root" else cfg.out) == str(tmp_path / "x")
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()


@pytest.mark.parametrize("url", ["https://host/x", "zip://a.zip", "memory://x"])
def test_schemes_that_cannot_hold_a_build_are_refused(url):
    data = {"dataset": "d", "reader": {"format": "coco", "root": "/data/raw"}, "out": url}
    with pytest.raises(ConfigError, match="cannot hold a build"):
        parse_config(data)


def test_out_on_the_command_line_is_checked_too(tmp_path, monkeypatch):
    from sa2va_shards.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: d\nreader: {format: coco, root: raw}\n")
    assert main(["build", str(cfg), "--out", "gs://bucket/x", "--runner", "serial"]) == 2
    assert not (tmp_path / "gs:").exists()


@given(scheme=st.from_regex(r"[a-z][a-z0-9+.-]{0,12}", fullmatch=True).filter(
    lambda s: s not in _known_protocols()),
    rest=st.from_regex(r"[A-Za-z0-9_./-]{0,30}", fullmatch=True),
    key=st.sampled_from(["out", "root"]))
def test_any_unknown_url_scheme_is_refused_for_builds(scheme, rest, key):
    """Every scheme fsspec does not know, not one value: refused by name before a folder
    could be made."""
    url = f"{scheme}://{rest}"
    data = {"dataset": "d", "reader": {"format": "coco", "root": "/data/raw"}, "out": "/data/out"}
    (data["reader"] if key == "root" else data)[key] = url
    with pytest.raises(ConfigError, match="no store for") as e:
        parse_config(data)
    assert url in str(e.value)


def _known_protocols() -> set[str]:
    import fsspec

    return set(fsspec.available_protocols()) | {"file", "local"}
