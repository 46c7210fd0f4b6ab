"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`), a
build submitted through `--address`, and the cluster recipe files checked as far as possible
without a Docker engine."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tomllib
import yaml

from sa2va_shards.build.run import run_build
from sa2va_shards.manifest import file_sha256
from tests.helpers import make_config

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], tmp: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` takes its node down with it
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _wait_for_nodes(address: str, n: int, timeout: float = 90) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([RAY, "status", f"--address={address}"], capture_output=True,
                             text=True, env=env)
        active = out.stdout.split("Pending:")[0]
        if out.returncode == 0 and active.count("node_") >= n:
            return
        time.sleep(2)
    raise TimeoutError(f"Ray cluster at {address} did not reach {n} nodes: {out.stdout[-500:]}")


@pytest.fixture()
def two_nodes(tmp_path):
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # Ray's socket paths must stay under 107 bytes: a short temp dir, not pytest's
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    head = _start(["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                   f"--temp-dir={temp_dir}"], tmp_path, "head")
    worker = None
    try:
        _wait_for_nodes(address, 1)
        worker = _start([f"--address={address}", "--num-cpus=1"], tmp_path, "worker")
        _wait_for_nodes(address, 2)
        yield address
    finally:
        for proc in (worker, head):
            if proc is not None:
                _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
def test_build_through_address_on_a_two_node_cluster_matches_a_local_build(synth, tmp_path,
                                                                           two_nodes):
    raw = synth("coco", n_items=8, seed=21)
    cfg = make_config(raw, tmp_path / "local", shards={"samples_per_shard": 2})
    local = run_build(cfg, runner="serial", progress=False)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-m", "sa2va_shards.cli", "build", str(cfg_path),
                          "--out", str(tmp_path / "cluster"), "--address", two_nodes],
                         capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "read 8 = written 8 + rejected 0" in out.stdout
    remote_dir = tmp_path / "cluster" / cfg.dataset / local.version
    for tar in (local.build_dir / "shards").glob("*.tar"):
        assert file_sha256(remote_dir / "shards" / tar.name) == file_sha256(tar)


def test_dockerfile_installs_the_package_dependencies_from_pyproject():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["optional-dependencies"]["ray"]  # cluster nodes build: the Ray extra
    assert re.search(r"pip install [^\n]*\s\"\.\[ray\]\"\s*$", dockerfile, re.M), \
        "installs the package with its Ray extra"
    ray_pin = re.search(r"rayproject/ray:(\d+\.\d+\.\d+)", dockerfile).group(1)
    ray_dep = next(d for d in deps if d.startswith("ray"))
    assert tuple(map(int, ray_pin.split("."))) >= tuple(map(int, re.findall(r"\d+", ray_dep)[:2]))
    for line in dockerfile.splitlines():  # no dependency installed a second time by hand
        if "pip install" in line:
            listed = set(re.findall(r"\b([a-z][a-z0-9_-]+)[=<>]", line)) - {"torch"}
            assert not listed, f"{listed} duplicated outside pyproject.toml"


def test_compose_file_parses_and_workers_join_the_head():
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    head, worker = compose["services"]["head"], compose["services"]["worker"]
    assert "--head" in head["command"] and "--port=6379" in head["command"]
    assert "--address=head:6379" in worker["command"]
    assert head["volumes"] == worker["volumes"]  # every node sees the same /data
