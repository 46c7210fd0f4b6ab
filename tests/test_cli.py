"""The CLI as a newcomer meets it: every verb with wrong arguments ends in one clear line and a
non-zero exit; one grammar names a build everywhere; --version, help text, -v anywhere;
--limit smoke builds; the auto runner; labelled progress and the JSON-lines event log."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sa2va_shards.build import SerialRunner
from sa2va_shards.build.run import AUTO_SERIAL_MAX_INPUTS, _pick_runner, run_build
from sa2va_shards.cli import _fault_names, _parser, main
from sa2va_shards.config import parse_config
from sa2va_shards.errors import ConfigError
from sa2va_shards.manifest import read_card
from sa2va_shards.readers import READERS
from sa2va_shards.records import ItemRef, ShardPlan
from sa2va_shards.versions import read_latest

REPO = Path(__file__).resolve().parents[1]


def _write_config(path: Path, raw: Path, out: Path, **extra) -> Path:
    doc = {"dataset": "cli", "reader": {"format": "coco", "root": str(raw)},
           "shards": {"samples_per_shard": 4}, "out": str(out), **extra}
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def site(synth, tmp_path_factory):
    """A full build (latest) and a --limit build of one small COCO set, and odd folders."""
    tmp = tmp_path_factory.mktemp("cli")
    raw = synth("coco", n_items=9, seed=5, faults=("missing_image",))
    cfg = _write_config(tmp / "c.yaml", raw, tmp / "out")
    assert main(["build", str(cfg), "--no-progress", "--limit", "3"]) == 0
    assert main(["build", str(cfg), "--no-progress"]) == 0
    dataset = tmp / "out" / "cli"
    (tmp / "empty").mkdir()
    (tmp / "out" / "nolatest").mkdir()
    (tmp / "file.txt").write_text("x")
    return {"tmp": tmp, "raw": raw, "cfg": cfg, "root": tmp / "out", "dataset": dataset,
            "full": dataset / read_latest(dataset),
            "partial": next(d for d in dataset.iterdir() if d.name.endswith("-first3"))}


def _wrong_argvs(s: dict) -> list[list[str]]:
    tmp, root, cfg = s["tmp"], str(s["root"]), str(s["cfg"])
    bad_key = _write_config(tmp / "bad_key.yaml", s["raw"], tmp / "o2",
                            vision={"patch_sise": 14})
    bad_format = tmp / "bad_format.yaml"
    bad_format.write_text(yaml.safe_dump({"dataset": "x", "reader": {"format": "nope",
                                                                     "root": "."}}))
    odd_patch = _write_config(tmp / "odd.yaml", s["raw"], tmp / "o3", vision={"patch_size": 15})
    no_root = _write_config(tmp / "no_root.yaml", tmp / "nothing", tmp / "o4")
    bad_option = _write_config(tmp / "bad_option.yaml", s["raw"], tmp / "o5")
    bad_option.write_text(bad_option.read_text().replace("format: coco",
                                                         "format: coco\n  options: {imgs: x}"))
    nothing, a_file, empty = str(tmp / "nothing"), str(tmp / "file.txt"), str(tmp / "empty")
    return [
        [], ["frob"], ["build"], ["build", nothing], ["build", a_file], ["build", str(bad_key)],
        ["build", str(bad_format)], ["build", str(odd_patch)], ["build", str(no_root)],
        ["build", str(bad_option)], ["build", cfg, "--limit", "0"],
        ["build", cfg, "--limit", "x"], ["build", cfg, "--runner", "fast"],
        ["build", cfg, "--num-cpus", "0"], ["build", cfg, "--out", a_file],
        ["demo", "--scale", "x"], ["demo", "--serial", "--out", a_file + "/below"],
        ["verify", nothing], ["verify", a_file], ["verify", empty],
        ["verify", str(root) + "/nolatest"], ["verify", "cli@v000", "--root", root],
        ["verify", "nope@latest", "--root", root], ["verify", "cli@latest", "--root", empty],
        ["inspect", str(s["dataset"]), "--key", "missing", "--out", str(tmp / "x.png")],
        ["inspect", nothing], ["stats", str(s["full"]), nothing],
        ["versions", nothing], ["versions", a_file], ["versions", empty],
        ["diff", str(s["full"])], ["diff", nothing, str(s["full"])],
        ["diff", str(s["full"]), empty],
        ["gc", nothing, "--keep-last", "1"], ["gc", str(s["dataset"])],
        ["gc", str(s["dataset"]), "--keep-last", "-1"],
        ["gc", str(s["dataset"]), "--keep-last", "1", "--keep", "v_no_such"],
        ["synth", "nope", str(tmp / "s1")], ["synth", "coco", str(tmp / "s2"), "--faults", "nope"],
        ["synth", "coco", str(tmp / "s3"), "--n", "0"], ["synth", "coco", a_file],
    ]


def test_every_verb_with_wrong_arguments_is_one_error_line_and_a_nonzero_exit(site, capsys):
    for argv in _wrong_argvs(site):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's own errors
            rc = e.code
        err = capsys.readouterr().err.strip()
        assert rc not in (0, None), argv
        assert "Traceback" not in err and len(err.splitlines()) == 1, (argv, err)
        assert err.startswith("error: "), (argv, err)  # a user error, never "internal error"


def test_wrong_geometry_and_unknown_faults_say_why(site, capsys):
    argvs = {"odd.yaml": "InternVL", "bad_key.yaml": "did you mean patch_size?"}
    for name, why in argvs.items():
        assert main(["build", str(site["tmp"] / name)]) == 2
        assert why in capsys.readouterr().err
    assert main(["synth", "coco", str(site["tmp"] / "s4"), "--faults", "nope"]) == 2
    assert "known: " in capsys.readouterr().err and "missing_image" in " ".join(
        _fault_names()["coco"])


def _no_cluster_run(argv: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """The CLI in a fresh process where Ray finds no cluster and Ray Client is missing,
    whatever else runs on this machine."""
    code = ("import functools, sys; import ray._private.services as s; "
            "assert hasattr(s, 'find_gcs_addresses') and hasattr(s, 'find_bootstrap_address'); "
            "s.find_gcs_addresses = functools.lru_cache(lambda: []); "
            "s.find_bootstrap_address = lambda *a, **k: None; sys.modules['grpc'] = None; "
            "from sa2va_shards.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          cwd=tmp, env=env, timeout=300)


@pytest.mark.parametrize("address, says", [
    ("auto", "no Ray cluster found"),
    ("ray://127.0.0.1:10001", "pip install 'ray[client]=="),
])
def test_cluster_addresses_that_cannot_work_are_one_line(site, tmp_path, address, says):
    cfg = _write_config(tmp_path / "c.yaml", site["raw"], tmp_path / "out")
    done = _no_cluster_run(["build", str(cfg), "--address", address], tmp_path)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in done.stderr
    assert not list(tmp_path.glob("out/cli/v*"))  # no version folder before Ray was up


def _verify_says(argv: list[str], capsys) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_a_build_folder_a_dataset_folder_and_a_name_mean_the_same_build(site, capsys,
                                                                        monkeypatch):
    full, root = site["full"], str(site["root"])
    forms = [[str(full)], [str(site["dataset"])], ["cli", "--root", root],
             ["cli@latest", "--root", root], [f"cli@{full.name[:6]}", "--root", root],
             [full.name, "--root", root]]
    for form in forms:
        assert f"{full}: " in _verify_says(["verify", *form, "--shallow"], capsys), form
    monkeypatch.setenv("SA2VA_SHARDS_OUT", root)
    assert f"{full}: " in _verify_says(["verify", "cli", "--shallow"], capsys)
    partial = site["partial"]
    assert f"{partial}: " in _verify_says(["verify", f"cli@{partial.name}", "--shallow"], capsys)
    for form in (str(site["dataset"]), str(full), "cli", full.name):
        assert main(["versions", form, "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["diff", f"cli@{partial.name}", "cli", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["to"] == full.name


def test_verify_reports_a_build_folder_without_its_card_as_failed(site, tmp_path, capsys):
    broken = tmp_path / "v1"
    (broken / "shards").mkdir(parents=True)
    assert main(["verify", str(broken)]) == 1
    assert "dataset.json" in capsys.readouterr().out
    assert main(["inspect", str(broken)]) == 2
    assert "incomplete build" in capsys.readouterr().err


def test_version_flag_and_help_for_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("sa2va-shards ")
    parser = _parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in verbs.choices.items():
        for action in sub._actions:
            assert action.help, (name, action.dest)
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    text = capsys.readouterr().out
    for fmt, faults in _fault_names().items():
        assert fmt in text and all(f in text for f in faults)
    assert set(_fault_names()) == set(READERS)


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_before_or_after_the_verb_logs_each_shard(site, tmp_path, caplog, capsys, where):
    cfg = _write_config(tmp_path / "c.yaml", site["raw"], tmp_path / "out")
    argv = ["build", str(cfg), "--no-progress"]
    argv = ["-v", *argv] if where == "before" else [*argv, "-v"]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    text = caplog.text
    assert "runner: serial (auto" in text and re.search(r"cli-000000.tar: read \d+, written", text)
    assert "inputs indexed" in text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["build", str(cfg), "--no-progress"]) == 0
    assert "inputs indexed" not in caplog.text


def test_limit_builds_a_partial_version_that_never_becomes_latest(site, tmp_path, capsys):
    cfg = parse_config(yaml.safe_load(site["cfg"].read_text()))
    full = run_build(cfg, runner="serial", progress=False)  # reused: built by the fixture
    partial = run_build(cfg, runner="serial", progress=False, limit=3)
    assert partial.version.endswith("-first3") and partial.version != full.version
    card = read_card(partial.build_dir)
    assert card["partial"] is True and card["limit"] == 3 and card["inputs_available"] == 10
    assert card["counts"]["read"] == 3 and read_card(full.build_dir)["partial"] is False
    assert read_latest(site["dataset"]) == full.version
    assert run_build(cfg, runner="serial", progress=False, limit=99).version == full.version
    assert main(["versions", str(site["dataset"])]) == 0
    assert "(partial: first 3)" in capsys.readouterr().out


def test_a_partial_build_alone_is_not_latest(site, tmp_path, capsys):
    cfg = parse_config({"dataset": "solo", "reader": {"format": "coco", "root": str(site["raw"])},
                        "out": str(tmp_path)})
    result = run_build(cfg, runner="serial", progress=False, limit=2)
    assert read_latest(tmp_path / "solo") is None
    assert main(["verify", str(tmp_path / "solo")]) == 2
    assert "no `latest`" in capsys.readouterr().err and result.version in str(result.build_dir)


def _plans(sizes: list[int]) -> list[ShardPlan]:
    item = ItemRef(source_id="x")
    return [ShardPlan(index=i, name=f"s{i}", items=(item,) * n) for i, n in enumerate(sizes)]


def test_auto_runner_is_serial_for_small_builds_and_ray_for_clusters_and_big_ones():
    small, big = _plans([256, 200]), _plans([256] * 3)

    def picked(*args):
        return _pick_runner(*args).name

    assert picked("auto", None, small) == "serial"
    assert picked("auto", None, _plans([AUTO_SERIAL_MAX_INPUTS + 1])) == "serial"
    assert picked("auto", None, big) == "ray"
    assert picked("auto", "auto", small) == "ray"
    assert picked("serial", None, big) == "serial"
    mine = SerialRunner(name="mine")  # a Runner object is used as given
    assert _pick_runner(mine, "auto", big) is mine
    with pytest.raises(ConfigError):
        _pick_runner("fast", None, small)


def test_progress_bar_is_labelled_and_the_json_log_follows_every_shard(site, tmp_path, capsys):
    log = tmp_path / "events" / "build.jsonl"
    cfg = parse_config({"dataset": "labelled", "reader": {"format": "coco",
                                                          "root": str(site["raw"])},
                        "shards": {"samples_per_shard": 4}, "out": str(tmp_path)})
    result = run_build(cfg, runner="auto", log_json=log)
    err = capsys.readouterr().err
    assert "labelled: " in err and "sample/s" in err and "rejected 1 (10.0%)" in err
    assert result.runner == "serial"
    run_build(cfg, runner="serial", progress=False, log_json=log)  # reused: one more line
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", *["shard"] * result.counts["shards"], "end",
                                            "end"]
    shards = [e for e in events if e["event"] == "shard"]
    assert sum(e["read"] for e in shards) == 10 and sum(e["rejected"] for e in shards) == 1
    assert shards[-1]["done_samples"] == shards[-1]["total_samples"] == 10
    assert shards[-1]["eta_s"] == 0 and shards[-1]["reject_rate"] == 0.1
    assert all({"samples_per_s", "elapsed_s", "time", "version"} <= set(e) for e in shards)
    assert events[-2]["status"] == "built" and events[-1]["status"] == "reused"
    assert events[-2]["counts"]["written"] == 9


def test_an_aborted_build_ends_its_json_log(site, tmp_path):
    log = tmp_path / "b.jsonl"
    cfg = parse_config({"dataset": "ab", "reader": {"format": "coco", "root": str(site["raw"]),
                                                    "options": {"images": "wrong"}},
                        "shards": {"samples_per_shard": 10, "max_consecutive_failures": 3},
                        "out": str(tmp_path)})
    with pytest.raises(Exception, match="consecutive"):
        run_build(cfg, runner="serial", progress=False, log_json=log)
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["event"] == "end" and last["status"] == "aborted" and "consecutive" in last["error"]


def test_console_script_prints_its_version():
    exe = Path(sys.executable).parent / "sa2va-shards"
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("sa2va-shards ")
