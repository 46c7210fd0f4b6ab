"""Fixtures of the end-to-end tests: an S3-API server on localhost (moto), reached through
the real s3fs client."""

from __future__ import annotations

import os
import socket

import fsspec
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def store():
    """moto's server on a free port, its endpoint and test credentials in the environment
    (where s3fs and any subprocess, Ray workers included, find them); bucket `bucket`. One
    per session: moto keeps its buckets in the process, whatever server serves them."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsspec.config.conf["s3"] = {"client_kwargs": {"endpoint_url": endpoint}}
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("bucket")
    yield fs
    fsspec.config.conf.pop("s3", None)
    for k, v in old.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    server.stop()
