"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest

from tests.helpers.s3 import moto_s3


@pytest.fixture(scope="session")
def store():
    """An S3-API server on localhost (moto), reached through the real s3fs, with bucket
    `bucket`; its endpoint and test credentials in the environment, where s3fs and any
    subprocess (Ray workers included) find them. One per session: moto keeps its buckets in
    the process, whatever server serves them."""
    with moto_s3() as fs:
        yield fs
