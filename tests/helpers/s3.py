"""An S3-API store for tests: moto's server on localhost, reached through the real s3fs."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import fsspec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(bucket: str = "bucket", **extra_env: str) -> Iterator[Any]:
    """moto's server on a free port with `bucket`; its endpoint and test credentials in the
    environment (where s3fs finds them) and fsspec's config, with `extra_env`, all restored
    after. Yields an s3fs filesystem of its own (no instance cache)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, **extra_env}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsspec.config.conf["s3"] = {"client_kwargs": {"endpoint_url": endpoint}}
    try:
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.makedirs(bucket, exist_ok=True)  # moto keeps buckets per process: maybe made before
        yield fs
    finally:
        fsspec.config.conf.pop("s3", None)
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        server.stop()
