"""Versions through the CLI: build, latest/parent, no-op rebuild, versions, diff, verify,
inspect and stats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from sa2va_shards.cli import main
from sa2va_shards.versions import read_latest


def _config(tmp: Path, raw: Path, **shards) -> Path:
    path = tmp / f"cfg{len(list(tmp.glob('cfg*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({"dataset": "vt", "reader": {"format": "coco", "root": str(raw)},
                                    "shards": {"samples_per_shard": 4, **shards},
                                    "out": str(tmp / "out")}))
    return path


@pytest.fixture()
def raw_copy(synth, tmp_path):
    return Path(shutil.copytree(synth("coco", n_items=9, seed=4, faults=("missing_image",)),
                                tmp_path / "raw"))


def _build(cfg: Path, capsys) -> str:
    assert main(["build", str(cfg), "--serial"]) == 0
    return capsys.readouterr().out


def test_build_prints_the_accounting_line_and_rebuild_is_a_no_op(raw_copy, tmp_path, capsys):
    cfg = _config(tmp_path, raw_copy)
    out = _build(cfg, capsys)
    assert "read 10 = written 9 + rejected 1 (missing_image 1)" in out
    again = _build(cfg, capsys)
    assert "already built" in again and "nothing to do" in again


def test_versions_latest_parent_and_diff(raw_copy, tmp_path, capsys):
    _build(_config(tmp_path, raw_copy), capsys)
    dataset_dir = tmp_path / "out" / "vt"
    first = read_latest(dataset_dir)
    # change the input: one image re-encoded, one removed from disk
    img = raw_copy / "images" / "000000000002.jpg"
    Image.open(img).rotate(180).save(img, quality=80)
    (raw_copy / "images" / "000000000003.jpg").unlink()
    _build(_config(tmp_path, raw_copy, samples_per_shard=5), capsys)
    second = read_latest(dataset_dir)
    assert second != first
    assert main(["versions", str(dataset_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in rows] == [first, second]
    assert rows[1]["parent"] == first and rows[1]["latest"] and not rows[0]["latest"]
    assert rows[1]["config_changes"] == {"shards.samples_per_shard": [4, 5]}
    assert main(["diff", str(dataset_dir / first), str(dataset_dir / second), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["samples"]["changed"] == ["000000000002"]
    assert d["samples"]["removed"] == ["000000000003"]
    assert d["config_changes"] == {"shards.samples_per_shard": [4, 5]}
    assert d["counts"]["rejected"] == [1, 2]


def test_verify_names_the_shard_with_a_flipped_byte(raw_copy, tmp_path, capsys):
    _build(_config(tmp_path, raw_copy), capsys)
    build_dir = tmp_path / "out" / "vt" / read_latest(tmp_path / "out" / "vt")
    assert main(["verify", str(build_dir)]) == 0
    assert "OK" in capsys.readouterr().out
    shard = build_dir / "shards" / "vt-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["verify", str(build_dir)]) == 1
    out = capsys.readouterr().out
    assert "vt-000001.tar: sha256 mismatch" in out and "vt-000000.tar" not in out


def test_inspect_and_stats_write_pngs(raw_copy, tmp_path, capsys):
    _build(_config(tmp_path, raw_copy), capsys)
    build_dir = tmp_path / "out" / "vt" / read_latest(tmp_path / "out" / "vt")
    assert main(["inspect", str(build_dir), "--key", "000000000006",
                 "--out", str(tmp_path / "o.png")]) == 0
    assert main(["stats", str(build_dir), "--out", str(tmp_path / "s.png")]) == 0
    for png in ("o.png", "s.png"):
        with Image.open(tmp_path / png) as im:
            assert im.width > 600 and im.height > 400
    assert main(["inspect", str(build_dir), "--key", "nope", "--out",
                 str(tmp_path / "x.png")]) == 2


def test_cli_reports_an_aborted_build_in_one_line(raw_copy, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({
        "dataset": "vt", "reader": {"format": "coco", "root": str(raw_copy),
                                    "options": {"images": "wrong"}},
        "shards": {"samples_per_shard": 10, "max_consecutive_failures": 3},
        "out": str(tmp_path / "out")}))
    assert main(["build", str(cfg), "--serial"]) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "aborted" in ln]
    assert len(lines) == 1 and lines[0].startswith("build aborted: 3 consecutive samples failed")


def test_unknown_config_key_is_an_error_with_a_suggestion(raw_copy, tmp_path, capsys):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(yaml.safe_dump({"dataset": "vt", "reader": {"format": "coco", "root": "x"},
                                   "image": {"interpolaton": "bilinear"}}))
    assert main(["build", str(cfg), "--serial"]) == 2
    assert "image.interpolaton: unknown key; did you mean interpolation?" in capsys.readouterr().err
